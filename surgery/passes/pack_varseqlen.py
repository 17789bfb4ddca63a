"""pack-varseqlen: a fused fixed-length graph -> the var-seqlen contract (packed tokens and cu_seqlens).

The fixed graph pads every sequence to S. TensorRT's var-seqlen plugins instead take the real tokens of
the whole batch back to back: ``input_ids`` / ``segment_ids`` [T], ``cu_seqlens`` [B + 1] (where each
sequence starts) and ``max_seqlen`` [max_len] (only its shape is read). EmbLayerNorm becomes 2/4 (positions
restart per sequence; output 1 is a 0-d dummy), QKVToContext 2/5 with ``var_seqlen=1`` (attention within
each sequence only; the dummy wired as its mask), SkipLayerNorm 2/6 (no ``ld``). The ops between plugins
and after the encoder (the QA head's MatMul, and the Split/Squeeze/Unsqueeze/Concat of its two logits) act
per token, so [S, B, C] tensors become [T, C]: the reshapes around plugins drop the batch axis, the
transposes between batch-major and sequence-major vanish (a packed token list has no such order), and ops on
the trailing axes keep their (negative) axes.
The var-seqlen plugins have no FP32 mode, so this pass sets FP16 itself.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from bertrt.errors import BertrtError
from bertrt.contract import CANONICAL_INPUTS
from bertrt.plugins.nodes import EMB_LAYER_NORM, QKV_TO_CONTEXT, SKIP_LAYER_NORM, TYPE_FP16
from bertrt.plugins.specs import MAX_PACKED_HEAD_SIZE as MAX_HEAD_SIZE
from bertrt.plugins.specs import MAX_SEQLEN, spec_of
from bertrt.surgery.framework import Pass, register
from bertrt.surgery.graph_utils import ancestors, const_value, graph_input, producer, replace_uses
from bertrt.surgery.passes.layout import BINARY, QDQ, UNARY

TOTAL = "total_tokens"
# Ops that act on each token alone when their axes are the trailing (hidden or logits) ones: on a packed
# [T, C, ...] tensor they work as on [S, B, C, ...]. The layout pass writes those axes negative.
AXIS_OPS = {"Split", "Concat", "Squeeze", "Unsqueeze"}
PER_TOKEN = UNARY | BINARY | QDQ | AXIS_OPS | {"MatMul", "Reshape", "Transpose", "LayerNormalization"}


def _version(node: gs.Node) -> str:
    return str(node.attrs.get("plugin_version", ""))


def head_size_problem(node: gs.Node) -> str | None:
    """Why a QKVToContext node cannot run var-seqlen, or None."""
    E, N = int(node.attrs["hidden_size"]), int(node.attrs["num_heads"])
    H = E // N
    if H > MAX_HEAD_SIZE:
        return (f"{node.name}: head size {H} (hidden {E} / {N} heads) is above {MAX_HEAD_SIZE}, the largest the "
                "var-seqlen QKVToContext takes")
    return None


def max_length(emb: gs.Node) -> int:
    """The longest sequence the packed graph computes: EmbLN's position rows, capped at MAX_SEQLEN."""
    E = np.asarray(emb.attrs["bert_embeddings_layernorm_beta"].values).size
    P = np.asarray(emb.attrs["bert_embeddings_position_embeddings"].values).size // E
    return min(P, MAX_SEQLEN)


@register
class PackVarSeqlenPass(Pass):
    name = "pack-varseqlen"
    description = "Fixed-length plugins -> var-seqlen ones on packed tokens [T] with cu_seqlens (FP16)."

    def apply(self, graph: gs.Graph, ctx, report) -> None:
        embs = [n for n in graph.nodes if n.op == EMB_LAYER_NORM]
        qkvs = [n for n in graph.nodes if n.op == QKV_TO_CONTEXT]
        skips = [n for n in graph.nodes if n.op == SKIP_LAYER_NORM]
        if len(embs) != 1:
            report.miss("graph", f"{len(embs)} EmbLayerNorm nodes, expected 1 (run the fusion passes first)")
            return
        emb = embs[0]
        # The limits are errors, raised before anything changes.
        for q in qkvs:
            if (why := head_size_problem(q)) is not None:
                raise BertrtError(why)
        if ctx.seq is not None and ctx.seq > MAX_SEQLEN:
            raise BertrtError(f"the model's sequence length is fixed at {ctx.seq}; var-seqlen EmbLayerNorm computes "
                              f"positions below {MAX_SEQLEN} only")
        problem = self._check(graph, emb, qkvs, skips)
        if problem is not None:
            report.miss(*problem)
            return
        was_fp16 = all(n.attrs.get("type_id") == TYPE_FP16 for n in qkvs + skips) and emb.attrs.get("output_fp16") == 1
        self._rewrite(graph, ctx, emb, qkvs, skips)
        if ctx.target.get("strongly_typed") and np.dtype(emb.outputs[0].dtype) == np.float32:
            from bertrt.surgery.passes.precision import PrecisionPass

            PrecisionPass()._float16_graph(graph)
        ctx.precision = "fp16"
        report.rewrites = 1 + len(qkvs) + len(skips)
        versions = {k: ctx.plugin_version(k, varseqlen=True) for k in ("emb_layernorm", "qkv_to_context",
                                                                         "skip_layernorm")}
        report.notes.append(f"packed inputs [T] + cu_seqlens + max_seqlen; EmbLayerNorm v{versions['emb_layernorm']}, "
                            f"QKVToContext v{versions['qkv_to_context']} x{len(qkvs)}, "
                            f"SkipLayerNorm v{versions['skip_layernorm']} x{len(skips)}")
        if not was_fp16:
            report.notes.append("set FP16: the var-seqlen plugins have no FP32 mode")
        report.notes.append(f"sequences of at most {max_length(emb)} tokens")

    # -------------------------------------------------------------- check (nothing changes here)

    def _check(self, graph, emb, qkvs, skips) -> tuple[str, str] | None:
        for n in [emb] + qkvs + skips:
            if spec_of(n) is None or not spec_of(n).takes_padded:
                return n.name, f"{n.op} v{_version(n)} is not a fixed-length plugin (already packed?)"
            if n.op == QKV_TO_CONTEXT and n.attrs.get("var_seqlen", 0) != 0:
                return n.name, "QKVToContext already has var_seqlen=1"
        inputs = [graph_input(graph, n) for n in CANONICAL_INPUTS]
        if any(t is None for t in inputs) or len(graph.inputs) != 3:
            return "graph", "inputs must be exactly input_ids, segment_ids, input_mask (the canonical contract)"
        region = _region(emb)
        in_region = {id(n) for n in region} | {id(emb)}
        for n in qkvs + skips:
            if id(n) not in in_region:
                return n.name, "this plugin is not computed from EmbLayerNorm's output"
        # What feeds EmbLayerNorm and the attention masks goes away; it must feed nothing else.
        mask_slots = [q.inputs[1] for q in qkvs if len(q.inputs) > 1 and producer(q.inputs[1]) is not emb]
        dead = ancestors(list(emb.inputs) + mask_slots, stop=inputs)
        dead_ids = {id(n) for n in dead} | {id(emb)} | {id(q) for q in qkvs}
        for t in inputs + [o for n in dead for o in n.outputs] + [emb.outputs[1]] * (len(emb.outputs) > 1):
            if any(t is o for o in graph.outputs):
                return t.name, "a graph output is computed from the padded inputs"
            for c in t.outputs:
                if id(c) not in dead_ids:
                    return c.name, f"{c.op} reads {t.name}, which the packed graph no longer has"
        for n in region:
            if n.op in (QKV_TO_CONTEXT, SKIP_LAYER_NORM):
                continue
            why = _per_token_problem(n, in_region)
            if why is not None:
                return n.name, why
        return None

    # -------------------------------------------------------------- rewrite

    def _rewrite(self, graph, ctx, emb, qkvs, skips) -> None:
        old = [graph_input(graph, n) for n in CANONICAL_INPUTS]
        for t in old:
            t.name = f"{t.name}.padded"
        ids, seg = (gs.Variable(n, dtype=np.int32, shape=[TOTAL]) for n in ("input_ids", "segment_ids"))
        cu = gs.Variable("cu_seqlens", dtype=np.int32, shape=["batch_plus_1"])
        max_seqlen = gs.Variable("max_seqlen", dtype=np.int32, shape=["max_seqlen"])
        graph.inputs = [ids, seg, cu, max_seqlen]
        region = _region(emb)

        dummy = gs.Variable(f"{emb.name}/unused", dtype=np.int32, shape=[])
        emb.attrs["plugin_version"] = ctx.plugin_version("emb_layernorm", varseqlen=True)
        emb.attrs["output_fp16"] = 1
        for k in ("mha_type_id", "full_mask"):
            emb.attrs.pop(k, None)
        emb.inputs.clear()
        emb.inputs.extend([ids, seg, cu, max_seqlen])
        out0 = emb.outputs[0]
        out0.shape = [TOTAL, int(np.asarray(emb.attrs["bert_embeddings_layernorm_beta"].values).size), 1, 1]
        emb.outputs.clear()
        emb.outputs.extend([out0, dummy])
        for q in qkvs:
            q.attrs["plugin_version"] = ctx.plugin_version("qkv_to_context", varseqlen=True)
            q.attrs.update(type_id=TYPE_FP16, has_mask=1, var_seqlen=1)
            qkv = q.inputs[0]
            q.inputs.clear()
            q.inputs.extend([qkv, dummy, cu, max_seqlen])
        for s in skips:
            s.attrs["plugin_version"] = ctx.plugin_version("skip_layernorm", varseqlen=True)
            s.attrs["type_id"] = TYPE_FP16
            s.attrs.pop("ld", None)

        for n in region:
            if n.op == "Reshape":
                shape = const_value(n.inputs[1])
                n.inputs[1] = gs.Constant(f"{n.name}/packed_shape", np.ascontiguousarray(shape[1:]))
            elif n.op == "Transpose":
                perm = list(n.attrs["perm"])
                if perm[2:] == list(range(2, len(perm))):  # only batch and sequence swap: nothing left to do
                    replace_uses(graph, n.outputs[0], n.inputs[0])
                else:  # trailing axes permuted: [T, ...] keeps that permutation
                    n.attrs["perm"] = [0] + [p - 1 for p in perm[2:]]
            elif n.op in BINARY:
                for i, t in enumerate(n.inputs):
                    v = const_value(t)
                    if v is not None and v.ndim > 1:  # [1, 1, C] would broadcast [T, C] back to rank 3
                        flat = np.ascontiguousarray(v.reshape(v.shape[-1:]))
                        n.inputs[i] = gs.Constant(f"{n.name}/packed_const{i}", flat)
        for t in {id(t): t for n in region for t in n.outputs}.values():
            # [S, B, C...] -> [T, C...]; a shape of lower rank was never batch- and sequence-shaped here
            t.shape = [TOTAL] + list(t.shape[2:]) if t.shape is not None and len(t.shape) >= 3 else None
        for t in graph.outputs:
            t.shape = [TOTAL] + list(t.shape[2:]) if t.shape is not None and len(t.shape) >= 3 else t.shape
        graph.cleanup()


def _region(emb: gs.Node) -> list[gs.Node]:
    """Every node computed from EmbLayerNorm's output 0, in discovery order."""
    seen, order, work = set(), [], [emb.outputs[0]]
    while work:
        t = work.pop(0)
        for c in t.outputs:
            if id(c) not in seen:
                seen.add(id(c))
                order.append(c)
                work.extend(c.outputs)
    return order


def _axes(n: gs.Node) -> list[int] | None:
    """The axes an AXIS_OPS node works on (an attribute, or a constant input from opset 13 on), or None."""
    if n.op in ("Split", "Concat"):
        return [int(n.attrs.get("axis", 0))]
    if "axes" in n.attrs:
        return [int(a) for a in n.attrs["axes"]]
    v = const_value(n.inputs[1]) if len(n.inputs) > 1 else None
    return None if v is None else [int(a) for a in v.reshape(-1)]


def _per_token_problem(n: gs.Node, in_region: set) -> str | None:
    """Why a node between plugins cannot work on packed [T, C] tensors as it did on [S, B, C], or None."""
    if n.op not in PER_TOKEN:
        return f"{n.op} is not a per-token op; the packed graph cannot keep it"
    for i, t in enumerate(n.inputs):
        p = producer(t)
        if not t.name or (p is not None and id(p) in in_region):  # an optional input left out, or computed here
            continue
        if const_value(t) is None and (p is None or p.op != "DequantizeLinear" or const_value(p.inputs[0]) is None):
            return f"input {i} ({t.name}) is neither a constant nor computed from the embeddings"
    if n.op == "Reshape":
        shape = const_value(n.inputs[1])
        if shape is None or shape.ndim != 1 or len(shape) < 3 or shape[0] != 0 or shape[1] != 0 or (shape[2:] <= 0).any():
            shown = None if shape is None else shape.tolist()
            return f"reshape to {shown}: only [0, 0, C, ...] (batch and sequence kept) packs"
    elif n.op == "Transpose":
        perm = list(n.attrs.get("perm", []))
        if perm[:2] not in ([1, 0], [0, 1]) or sorted(perm[2:]) != list(range(2, len(perm))):
            return f"transpose {perm} mixes the batch and sequence axes with the others"
    elif n.op == "LayerNormalization" and n.attrs.get("axis", -1) != -1:
        return f"LayerNormalization over axis {n.attrs['axis']}: only the last (hidden) axis is per token"
    elif n.op in AXIS_OPS:
        axes = _axes(n)
        if axes is None or any(a >= 0 for a in axes):
            return (f"{n.op} on axes {axes}: only the trailing (hidden or logits) axes, counted from the end, "
                    "are per token")
    elif n.op == "MatMul":
        if id(producer(n.inputs[0])) not in in_region:
            return "the embeddings flow into the MatMul's weight side"
        w = const_value(n.inputs[1])
        if w is not None and w.ndim != 2:
            return f"MatMul weight of rank {w.ndim}, expected 2"
    elif n.op in QDQ:
        axis = n.attrs.get("axis", 1)
        scale = const_value(n.inputs[1])
        if scale is not None and scale.size != 1 and axis != -1:
            return f"per-channel Q/DQ on axis {axis}; only the last axis (-1) packs"
    elif n.op in BINARY:
        for t in n.inputs:
            v = const_value(t)
            if v is not None and v.ndim > 1 and any(d != 1 for d in v.shape[:-1]):
                return f"constant {t.name} of shape {list(v.shape)} is not per channel"
    return None
