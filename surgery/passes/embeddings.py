"""embeddings: word + segment + position lookups and their LayerNorm -> EmbLayerNorm.

Word: Gather on a [V, E] table by input_ids. Segment: Gather by segment_ids, or tf2onnx's
OneHot + MatMul. Position: a constant slice of the table (tf2onnx with a fixed length), a Gather of the
table by positions, or a Slice of it. The plugin's output 1 (the mask index) replaces the mask index
the attention pass computed from input_mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from bertrt.contract import CANONICAL_INPUTS, MASK_IDX
from bertrt.plugins import reference as ref
from bertrt.plugins.nodes import EMB_LAYER_NORM, make_plugin_node
from bertrt.plugins.specs import get_spec
from bertrt.surgery import adapters
from bertrt.surgery.framework import FusionPass, Match, NoMatch, register
from bertrt.surgery.graph_utils import const_value, graph_input, producer, replace_uses, trace_back
from bertrt.surgery.passes.attention import proof_lengths
from bertrt.surgery.region import evaluate, max_rel_err



def _leaves(t: gs.Tensor, out: list) -> None:
    p = producer(t)
    if p is not None and p.op == "Add":
        _leaves(p.inputs[0], out)
        _leaves(p.inputs[1], out)
    else:
        out.append(t)


def _classify(leaf: gs.Tensor, ids: gs.Tensor, seg: gs.Tensor):
    """('word'|'segment'|'position', table) for one summand of the embedding, or (None, reason)."""
    t = trace_back(leaf, ("Reshape", "Unsqueeze", "Squeeze", "Cast"))
    v = const_value(t)
    if v is not None:  # a position table already sliced to the sequence length
        return "position", v.reshape(-1, v.shape[-1])
    p = producer(t)
    if p is None:
        return None, f"summand {leaf.name} is a graph input"
    if p.op == "Gather" and (table := const_value(p.inputs[0])) is not None and table.ndim == 2:
        src = trace_back(p.inputs[1])
        if src is ids:
            return "word", table
        if src is seg:
            return "segment", table
        return "position", table  # gathered by positions (a constant or a range)
    if p.op == "MatMul" and (table := const_value(p.inputs[1])) is not None:
        oh = producer(p.inputs[0])
        if oh is not None and oh.op == "OneHot" and trace_back(oh.inputs[0]) is seg:
            values = const_value(oh.inputs[2])
            if values is None or list(values.reshape(-1)) != [0, 1]:
                return None, f"OneHot {oh.name} has values other than (0, 1)"
            return "segment", table
    if p.op == "Slice" and (table := const_value(p.inputs[0])) is not None and table.ndim == 2:
        return "position", table
    return None, f"summand {leaf.name} ({p.op} {p.name}) is no word, segment or position lookup"


@dataclass
class Embeddings:
    ln: gs.Node
    tables: dict   # word, segment, position -> float32 [rows, E]
    gamma: np.ndarray
    beta: np.ndarray
    rank: int      # of the LayerNorm's output: 3 ([B, S, E]) or 2 ([B*S, E])


@register
class EmbeddingsPass(FusionPass):
    name = "embeddings"
    description = "Word/segment/position lookups + LayerNorm -> EmbLayerNorm (mask -> maskIdx)."
    what = "embedding nodes"
    reference = "EmbLayerNorm"

    def candidates(self, graph, ctx, report):
        self._inputs = [graph_input(graph, n) for n in CANONICAL_INPUTS]
        if any(t is None for t in self._inputs):
            report.miss("graph", "inputs input_ids, segment_ids and input_mask are needed (run `bertrt convert`)")
            return []
        lns = [n for n in graph.nodes if n.op == "LayerNormalization"]  # topological order
        self._first = lns[0] if lns else None
        return [(f"LayerNormalization {ln.name}", ln) for ln in lns]

    def match(self, graph, ctx, ln) -> Match | None:
        ids, seg, _ = self._inputs
        leaves = []
        _leaves(ln.inputs[0], leaves)
        kinds = [_classify(leaf, ids, seg) for leaf in leaves]
        if not any(k == "word" for k, _ in kinds):
            if ln is not self._first:  # only the first LayerNorm of a BERT is the embeddings'
                return None
            reasons = [r for k, r in kinds if k is None]
            raise NoMatch(reasons[0] if reasons else "no word embedding (a Gather of a table by input_ids) among "
                                                     "its summands")
        bad = [r for k, r in kinds if k is None]
        if bad:
            raise NoMatch(bad[0])
        tables = {}
        for k, table in kinds:
            if k in tables:
                raise NoMatch(f"two {k} lookups feed it")
            tables[k] = table.astype(np.float32)
        missing = {"word", "segment", "position"} - set(tables)
        if missing:
            raise NoMatch(f"no {' or '.join(sorted(missing))} embedding found among its summands")
        gamma, beta = const_value(ln.inputs[1]), const_value(ln.inputs[2]) if len(ln.inputs) > 2 else None
        E = tables["word"].shape[1]
        if gamma is None:
            raise NoMatch("its scale is not constant")
        beta = np.zeros(E, np.float32) if beta is None else beta
        _, S = ctx.proof_shape(seq=min(16, tables["position"].shape[0]))
        if tables["position"].shape[0] < S:
            raise NoMatch(f"the position table has {tables['position'].shape[0]} rows, fewer than the sequence "
                          f"length {S}")
        y = ln.outputs[0]
        data = Embeddings(ln, tables, gamma.reshape(E).astype(np.float32), beta.reshape(E).astype(np.float32),
                          adapters.model_rank(graph, y, ctx))
        return Match([ids, seg], [y], data)

    def verify(self, graph, ctx, m: Match) -> float:
        ids, seg, mask = self._inputs
        e: Embeddings = m.data
        t = e.tables
        rng = np.random.default_rng(1)
        B, S = ctx.proof_shape(seq=min(16, t["position"].shape[0]))
        ids_v = rng.integers(0, t["word"].shape[0], (B, S)).astype(_np_dtype(ids))
        seg_v = rng.integers(0, t["segment"].shape[0], (B, S)).astype(_np_dtype(seg))
        mask_v = (np.arange(S)[None] < proof_lengths(B, S)[:, None]).astype(_np_dtype(mask))
        (got,) = evaluate(graph, m.outputs, [(ids, ids_v), (seg, seg_v), (mask, mask_v)])
        want, _ = ref.emb_ln_fixed(ids_v.T.astype(np.int64), seg_v.T.astype(np.int64), mask_v.T, t["word"],
                                   t["segment"], t["position"], e.gamma, e.beta)
        want = want.reshape(S, B, -1).transpose(1, 0, 2)
        return max_rel_err(got, want.reshape(got.shape)) if got.size == want.size else float("inf")

    def rewrite(self, graph, ctx, m: Match) -> list:
        e: Embeddings = m.data
        E = e.tables["word"].shape[1]
        prefix = adapters.fresh(graph, "emb_layernorm")
        sb = [adapters.node(graph, "Transpose", f"{prefix}/{t.name}_SB", [_as_int32(graph, t, prefix)],
                             attrs={"perm": [1, 0]}, dtype=np.int32) for t in self._inputs]
        out = gs.Variable(f"{prefix}/embeddings", dtype=np.float32)
        mask_idx = gs.Variable(f"{prefix}/mask_idx", dtype=np.int32)
        graph.nodes.append(make_plugin_node(
            get_spec(EMB_LAYER_NORM, ctx.plugin_version("emb_layernorm")), sb, [out, mask_idx], name=prefix,
            fields={"bert_embeddings_layernorm_beta": e.beta,
                    "bert_embeddings_layernorm_gamma": e.gamma,
                    "bert_embeddings_word_embeddings": e.tables["word"],
                    "bert_embeddings_token_type_embeddings": e.tables["segment"],
                    "bert_embeddings_position_embeddings": e.tables["position"],
                    "output_fp16": 0, "mha_type_id": 0}))
        model_y = adapters.plugin_output(graph, ctx, out, E, prefix, m.outputs[0], e.rank)
        placeholder = graph.tensors().get(MASK_IDX)
        if placeholder is not None:
            replace_uses(graph, placeholder, mask_idx)
        ctx.hidden_size = E
        return [model_y]


def _np_dtype(t: gs.Tensor):
    return np.dtype(t.dtype) if t.dtype is not None else np.int32


def _as_int32(graph, t, prefix):
    if t.dtype is None or np.dtype(t.dtype) == np.int32:
        return t
    return adapters.node(graph, "Cast", f"{prefix}/{t.name}_int32", [t], attrs={"to": onnx.TensorProto.INT32}, dtype=np.int32)
