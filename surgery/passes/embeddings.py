"""embeddings: word + segment + position lookups and their LayerNorm -> EmbLayerNorm.

Word: Gather on a [V, E] table by input_ids. Segment: Gather by segment_ids, or tf2onnx's
OneHot + MatMul. Position: a constant slice of the table (tf2onnx with a fixed length), a Gather of the
table by positions, or a Slice of it. The plugin's output 1 (the mask index) replaces the mask index
the attention pass computed from input_mask.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from bertrt.contract import CANONICAL_INPUTS, MASK_IDX
from bertrt.plugins import reference as ref
from bertrt.plugins.nodes import EMB_LAYER_NORM, make_plugin_node
from bertrt.plugins.specs import get_spec
from bertrt.surgery import adapters
from bertrt.surgery.framework import Pass, register
from bertrt.surgery.graph_utils import const_value, graph_input, producer, rank, replace_uses, trace_back
from bertrt.surgery.region import RegionError, evaluate, max_rel_err

TOLERANCE = 1e-4


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


@register
class EmbeddingsPass(Pass):
    name = "embeddings"
    description = "Word/segment/position lookups + LayerNorm -> EmbLayerNorm (mask -> maskIdx)."

    def apply(self, graph: gs.Graph, ctx, report) -> None:
        ids, seg, mask = (graph_input(graph, n) for n in CANONICAL_INPUTS)
        if ids is None or seg is None or mask is None:
            report.miss("graph", "inputs input_ids, segment_ids and input_mask are needed (run `bertrt convert`)")
            return
        version = ctx.plugin_version("emb_layernorm")
        lns = [n for n in graph.nodes if n.op == "LayerNormalization"]  # topological order
        for i, ln in enumerate(lns):
            leaves = []
            _leaves(ln.inputs[0], leaves)
            kinds = [_classify(leaf, ids, seg) for leaf in leaves]
            where = f"LayerNormalization {ln.name}"
            if not any(k == "word" for k, _ in kinds):
                if i == 0:  # the first LayerNorm of a BERT is the embeddings'
                    reasons = [r for k, r in kinds if k is None] or ["no word embedding (a Gather of a table by "
                                                                     "input_ids) among its summands"]
                    report.miss(where, reasons[0])
                continue
            bad = [r for k, r in kinds if k is None]
            if bad:
                report.miss(where, bad[0])
                continue
            tables = {}
            for k, table in kinds:
                if k in tables:
                    report.miss(where, f"two {k} lookups feed it")
                    break
                tables[k] = table.astype(np.float32)
            else:
                if set(tables) != {"word", "segment", "position"}:
                    missing = {"word", "segment", "position"} - set(tables)
                    report.miss(where, f"no {' or '.join(sorted(missing))} embedding found among its summands")
                    continue
                self._fuse(graph, ctx, report, ln, tables, ids, seg, mask, version, where)

    def _fuse(self, graph, ctx, report, ln, tables, ids, seg, mask, version, where):
        gamma, beta = const_value(ln.inputs[1]), const_value(ln.inputs[2]) if len(ln.inputs) > 2 else None
        E = tables["word"].shape[1]
        y = ln.outputs[0]
        r = rank(y)
        if gamma is None or r not in (2, 3):
            report.miss(where, "its scale is not constant or its output rank is not 2 or 3")
            return
        beta = np.zeros(E, np.float32) if beta is None else beta
        S = ids.shape[1] if isinstance(ids.shape[1], int) else min(16, tables["position"].shape[0])
        if tables["position"].shape[0] < S:
            report.miss(where, f"the position table has {tables['position'].shape[0]} rows, fewer than the "
                               f"sequence length {S}")
            return
        # Prove it: the original nodes against the plugin's reference on random inputs.
        rng = np.random.default_rng(1)
        B = 2
        ids_v = rng.integers(0, tables["word"].shape[0], (B, S)).astype(_np_dtype(ids))
        seg_v = rng.integers(0, tables["segment"].shape[0], (B, S)).astype(_np_dtype(seg))
        mask_v = (np.arange(S)[None] < np.array([[S], [max(1, S // 2)]])).astype(_np_dtype(mask))
        try:
            (got,) = evaluate(graph, [y], [(ids, ids_v), (seg, seg_v), (mask, mask_v)])
        except RegionError as e:
            report.miss(where, f"cannot evaluate the embedding nodes: {e}")
            return
        want, _ = ref.emb_ln_fixed(ids_v.T.astype(np.int64), seg_v.T.astype(np.int64), mask_v.T,
                                   tables["word"], tables["segment"], tables["position"], gamma.reshape(E),
                                   beta.reshape(E))
        want = want.reshape(S, B, E).transpose(1, 0, 2).reshape(got.shape)
        err = max_rel_err(got, want)
        if err > TOLERANCE:
            report.miss(where, f"the embedding nodes differ from EmbLayerNorm by {err:.2g} (relative) on random ids")
            return

        prefix = adapters.fresh(graph, "emb_layernorm")
        sb = [adapters.node(graph, "Transpose", f"{prefix}/{t.name}_SB", [_as_int32(graph, t, prefix)],
                             attrs={"perm": [1, 0]}, dtype=np.int32) for t in (ids, seg, mask)]
        out = gs.Variable(f"{prefix}/embeddings", dtype=np.float32)
        mask_idx = gs.Variable(f"{prefix}/mask_idx", dtype=np.int32)
        graph.nodes.append(make_plugin_node(
            get_spec(EMB_LAYER_NORM, version), sb, [out, mask_idx], name=prefix,
            fields={"bert_embeddings_layernorm_beta": beta.reshape(E).astype(np.float32),
                    "bert_embeddings_layernorm_gamma": gamma.reshape(E).astype(np.float32),
                    "bert_embeddings_word_embeddings": tables["word"],
                    "bert_embeddings_token_type_embeddings": tables["segment"],
                    "bert_embeddings_position_embeddings": tables["position"],
                    "output_fp16": 0, "mha_type_id": 0}))
        emb_sb = adapters.from_5d(graph, out, E, prefix)
        model_y = adapters.from_sb(graph, emb_sb, r, E)
        replace_uses(graph, y, model_y)
        ctx.alias([out, emb_sb, model_y], [y])
        placeholder = graph.tensors().get(MASK_IDX)
        if placeholder is not None:
            replace_uses(graph, placeholder, mask_idx)
        ctx.hidden_size = E
        report.rewrites += 1


def _np_dtype(t: gs.Tensor):
    return np.dtype(t.dtype) if t.dtype is not None else np.int32


def _as_int32(graph, t, prefix):
    if t.dtype is None or np.dtype(t.dtype) == np.int32:
        return t
    return adapters.node(graph, "Cast", f"{prefix}/{t.name}_int32", [t], attrs={"to": onnx.TensorProto.INT32}, dtype=np.int32)
