"""attention: self-attention -> one QKV GEMM with the per-head [N, 3, H] weight + QKVToContext.

Anchored on each Softmax. From it the pass walks to the score MatMul (through the mask Add or Where
and the scale Mul/Div), to the Q, K and V projections (through head-split Reshape/Transpose and any
scale applied to Q or K), and forward from the probabilities to the context (Transpose + Reshape).
A projection is ``x @ W + b`` on [B, S, E] or, as keras2onnx writes it, on x flattened to [B*S, E] and
reshaped back before the bias. Any overall score scale other than 1/sqrt(H) is folded into the Q weights.
Each candidate is run against the plugin's numpy reference on random inputs before it is rewritten.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from bertrt.contract import MASK_IDX, MASK_LEN
from bertrt.plugins import reference as ref
from bertrt.plugins.nodes import QKV_TO_CONTEXT, make_plugin_node
from bertrt.plugins.specs import get_spec
from bertrt.surgery import adapters
from bertrt.surgery.framework import FusionPass, Match, NoMatch, register
from bertrt.surgery.graph_utils import (
    const_value, depends_on, graph_input, is_const, last_dim, producer, rank, scalar, trace_back,
)
from bertrt.surgery.passes.dequantize import carry_scales
from bertrt.surgery.region import evaluate, max_rel_err



@dataclass
class Projection:
    x: gs.Tensor
    w: np.ndarray   # [E_in, E_out], x @ w
    b: np.ndarray   # [E_out]
    scale: float    # any constant scale applied to this side after the projection
    out: gs.Tensor  # x @ w + b as the graph computes it
    carriers: list  # out and its head-split reshapes/transposes: the same values, other shapes
    weight: gs.Tensor | None = None  # the weight tensor w was read from


@dataclass
class Candidate:
    softmax: gs.Node
    q: Projection
    k: Projection
    v: Projection
    score_scale: float
    heads: int
    ctx: gs.Tensor
    has_mask: bool
    x_rank: int = 3     # the ranks of the hidden states in and of the context out (2: [B*S, E])
    ctx_rank: int = 3

    def with_weights(self, ws: list) -> "Candidate":
        """The same candidate with other Q, K, V weights (fused_qkv on it moves data with the weight columns)."""
        return replace(self, **{t: replace(getattr(self, t), w=w) for t, w in zip("qkv", ws)})


def _projection(t: gs.Tensor, what: str) -> Projection:
    """Walk back from a head-split Q/K/V tensor to x @ W + b."""
    scale = 1.0
    carriers = []
    for _ in range(12):
        p = producer(t)
        if p is None:
            raise NoMatch(f"{what} is not computed from a projection")
        if p.op in ("Transpose", "Reshape", "Cast"):
            carriers.append((t, scale))
            t = p.inputs[0]
        elif p.op in ("Mul", "Div") and (s := scalar(p.inputs[1]) or scalar(p.inputs[0])) is not None:
            live = p.inputs[0] if not is_const(p.inputs[0]) else p.inputs[1]
            scale *= s if p.op == "Mul" else 1.0 / s
            t = live
        elif p.op == "Add":
            bias = const_value(p.inputs[1]) if is_const(p.inputs[1]) else const_value(p.inputs[0])
            mm = p.inputs[0] if not is_const(p.inputs[0]) else p.inputs[1]
            mp = producer(mm)
            if mp is not None and mp.op == "Reshape" and _keeps_last_axis(mp):  # keras2onnx: 2-D MatMul, reshaped back
                mp = producer(mp.inputs[0])
            if bias is None or mp is None or mp.op != "MatMul":
                raise NoMatch(f"{what}: Add {p.name} is not a projection bias")
            w = _weight(mp.inputs[1])
            if w is None:
                raise NoMatch(f"{what}: MatMul {mp.name} has no constant 2-D weight")
            return Projection(_unflattened(mp.inputs[0]), w, bias.reshape(-1).astype(np.float32), scale,
                              p.outputs[0], [p.outputs[0]] + _unscaled(carriers, scale), mp.inputs[1])
        elif p.op == "MatMul":
            w = _weight(p.inputs[1])
            if w is None:
                raise NoMatch(f"{what}: MatMul {p.name} has no constant 2-D weight")
            return Projection(_unflattened(p.inputs[0]), w, np.zeros(w.shape[1], np.float32), scale, p.outputs[0],
                              [p.outputs[0]] + _unscaled(carriers, scale), p.inputs[1])
        else:
            raise NoMatch(f"{what} comes from {p.op} {p.name}, not a projection")
    raise NoMatch(f"{what}: too many reshapes before the projection")


def _keeps_last_axis(reshape: gs.Node) -> bool:
    """A Reshape between [B, S, C] and [B*S, C]: its target's last entry is the input's last dim (constant, or
    the last input of the Concat that computes it)."""
    C = last_dim(reshape.inputs[0])
    shape = const_value(reshape.inputs[1])
    if shape is None and (c := producer(trace_back(reshape.inputs[1], ("Cast",)))) is not None and c.op == "Concat":
        shape = const_value(c.inputs[-1])
    if shape is None or shape.ndim != 1 or not 1 <= len(shape) <= 3:
        return False
    return C is None or int(shape[-1]) == C


def _unflattened(x: gs.Tensor) -> gs.Tensor:
    """The [B, S, E] hidden states a projection input was flattened from (keras2onnx flattens them to
    [B*S, E] before each MatMul), or x itself."""
    p = producer(x)
    if p is not None and p.op == "Reshape" and _keeps_last_axis(p) and len(x.outputs) == 1:
        return p.inputs[0]
    return x


def _unscaled(carriers: list, total: float) -> list:
    """The reshaped copies of the projection output that no scale was applied to on the way back to it
    (walking back, the scale found so far equals the total once every Mul/Div is behind)."""
    return [t for t, scale_so_far in carriers if scale_so_far == total]


def _weight(t: gs.Tensor) -> np.ndarray | None:
    v = const_value(t)
    if v is None and (p := producer(t)) is not None and p.op == "DequantizeLinear":
        return None  # Q/DQ weights are taken by the INT8 passes
    return v.astype(np.float32) if v is not None and v.ndim == 2 else None


def _heads_from_reshape(t: gs.Tensor, E: int) -> int | None:
    """N from the head-split Reshape on the way from Q to its projection: its last dim is the head size H
    (whether it writes [B, S, N, H] or, with one head, [B, 1, S, H])."""
    for _ in range(6):
        p = producer(t)
        if p is None:
            return None
        if p.op == "Reshape":
            shape = const_value(p.inputs[1])
            if shape is None and (c := producer(trace_back(p.inputs[1], ("Cast",)))) is not None and c.op == "Concat":
                last = const_value(c.inputs[-1])
                shape = None if last is None else last.reshape(-1)
            if shape is not None and len(shape) and shape[-1] > 0 and E % int(shape[-1]) == 0:
                return E // int(shape[-1])
            out = p.outputs[0]
            if out.shape and isinstance(out.shape[-1], (int, np.integer)) and out.shape[-1] > 0 and E % out.shape[-1] == 0:
                return E // int(out.shape[-1])
        t = p.inputs[0]
    return None


def _scores_matmul(t: gs.Tensor, mask_input: gs.Tensor):
    """Walk back from the Softmax input to the Q·Kᵀ MatMul: (matmul, scale, has_mask)."""
    scale, has_mask = 1.0, False
    for _ in range(10):
        p = producer(t)
        if p is None:
            raise NoMatch("the softmax input is not computed from a MatMul")
        if p.op == "MatMul" and not is_const(p.inputs[0]) and not is_const(p.inputs[1]):
            return p, scale, has_mask
        if p.op in ("Mul", "Div") and (s := scalar(p.inputs[1]) if is_const(p.inputs[1]) else scalar(p.inputs[0])) is not None:
            scale *= s if p.op == "Mul" else 1.0 / s
            t = p.inputs[0] if not is_const(p.inputs[0]) else p.inputs[1]
        elif p.op == "Add":
            a, b = p.inputs
            a_mask = depends_on(a, mask_input) and not _has_score_matmul(a)
            b_mask = depends_on(b, mask_input) and not _has_score_matmul(b)
            if a_mask == b_mask:
                raise NoMatch(f"Add {p.name} before the softmax is not score + mask")
            has_mask = True
            t = b if a_mask else a
        elif p.op == "Where":
            cond, a, b = p.inputs
            if not depends_on(cond, mask_input):
                raise NoMatch(f"Where {p.name} before the softmax does not select by input_mask")
            has_mask = True
            t = a if not is_const(a) and _has_score_matmul(a) else b
        elif p.op == "Cast":
            t = p.inputs[0]
        else:
            raise NoMatch(f"{p.op} {p.name} between the scores and the softmax is not a scale or a mask")
    raise NoMatch("too many ops between the scores and the softmax")


def _has_score_matmul(t: gs.Tensor, depth: int = 6) -> bool:
    for _ in range(depth):
        p = producer(t)
        if p is None:
            return False
        if p.op == "MatMul" and not is_const(p.inputs[1]):
            return True
        live = [i for i in p.inputs if not is_const(i)]
        if not live:
            return False
        t = live[0]
    return False


def _context(softmax: gs.Node):
    """Forward from the probabilities: (P·V MatMul, context tensor in model layout)."""
    t = softmax.outputs[0]
    for _ in range(4):  # SDPA exports guard the probabilities with Where(IsNaN(p), 0, p)
        users = t.outputs
        if len(users) == 1 and users[0].op == "MatMul" and users[0].inputs[0] is t:
            break
        where = [u for u in users if u.op == "Where"]
        if where:
            t = where[0].outputs[0]
        else:
            raise NoMatch("the probabilities do not feed a single MatMul with V")
    pv = t.outputs[0]
    out = pv.outputs[0]
    for _ in range(4):  # heads merged back: Transpose + Reshape (some exports reshape twice)
        merged = rank(out) in (2, 3)
        # Before the merge a Shape user computes the merge's own target; after it, a Shape user (keras2onnx's
        # next dense layer reshaping back) needs this tensor itself, so the context ends here.
        users = [u for u in out.outputs if u.op != "Shape" or merged]
        if len(users) != 1 or users[0].op not in ("Transpose", "Reshape"):
            break
        out = users[0].outputs[0]
    return pv, out


def find(graph: gs.Graph, softmax: gs.Node, mask_input: gs.Tensor) -> Candidate:
    axis = softmax.attrs.get("axis", -1)
    if axis not in (-1, 3):
        raise NoMatch(f"softmax axis is {axis}, expected -1")
    mm, score_scale, has_mask = _scores_matmul(softmax.inputs[0], mask_input)
    q = _projection(mm.inputs[0], "Q")
    k = _projection(mm.inputs[1], "K")
    pv, ctx = _context(softmax)
    v = _projection(pv.inputs[1], "V")
    if not (q.x is k.x is v.x):
        raise NoMatch("Q, K and V are projections of different tensors")
    E = q.w.shape[0]
    if not (q.w.shape == k.w.shape == v.w.shape == (E, E)):
        raise NoMatch(f"Q/K/V weights are not all [{E}, {E}]")
    heads = _heads_from_reshape(mm.inputs[0], E)
    if heads is None:
        raise NoMatch("cannot tell the number of heads from the head-split Reshape")
    if last_dim(ctx) not in (None, E):
        raise NoMatch(f"the context's last dim is {last_dim(ctx)}, expected {E}")
    return Candidate(softmax, q, k, v, score_scale, heads, ctx, has_mask)


def fused_qkv(c: Candidate) -> tuple[np.ndarray, np.ndarray]:
    """[E, 3E] weight and [3E] bias with output channel n*3H + t*H + h (t = q, k, v)."""
    E, N = c.q.w.shape[0], c.heads
    H = E // N
    # Fold every scale into Q so that the plugin's own 1/sqrt(H) is the only one left.
    fold = c.q.scale * c.k.scale * c.score_scale * math.sqrt(H)
    ws = np.stack([c.q.w * fold, c.k.w, c.v.w * c.v.scale])                               # [3, E, E]
    bs = np.stack([c.q.b * fold, c.k.b, c.v.b * c.v.scale])                               # [3, E]
    w = ws.reshape(3, E, N, H).transpose(1, 2, 0, 3).reshape(E, 3 * E)
    b = bs.reshape(3, N, H).transpose(1, 0, 2).reshape(3 * E)
    return np.ascontiguousarray(w, np.float32), np.ascontiguousarray(b, np.float32)


def _mask_tensor(graph: gs.Graph, mask: gs.Tensor, one_d: bool) -> gs.Tensor:
    """The mask index the plugin reads, made from input_mask (a contiguous prefix: the count of ones)."""
    name = MASK_LEN if one_d else MASK_IDX
    have = graph.tensors().get(name)
    if have is not None:
        return have
    m = mask
    if mask.dtype is None or np.dtype(mask.dtype) != np.int32:
        m = adapters.node(graph, "Cast", f"{name}/cast", [mask], attrs={"to": onnx.TensorProto.INT32}, dtype=np.int32)
    axes = gs.Constant(f"{name}/axes", np.array([1], np.int64))
    out = gs.Variable(name, dtype=np.int32, shape=["batch"] if one_d else ["batch", 1])
    graph.nodes.append(gs.Node(op="ReduceSum", name=f"{name}/ReduceSum", attrs={"keepdims": 0 if one_d else 1},
                               inputs=[m, axes], outputs=[out]))
    return out


def mask_route(ctx, head_size: int) -> str:
    """'idx' for QKV 1/4 fed by EmbLayerNorm's maskIdx, 'len' for QKV 2/5 (var_seqlen=0) with a [B] mask.

    In FP16 and INT8, EmbLayerNorm packs the mask for the fused kernels, which exist only for head size 64;
    with another head size QKV 1/4 would read the packed mask as a mask index, so 2/5 is used instead.
    """
    fixed = get_spec(QKV_TO_CONTEXT, ctx.plugin_version("qkv_to_context"))
    return "idx" if ctx.precision == "fp32" or head_size in fixed.fused_head_sizes else "len"


@register
class AttentionPass(FusionPass):
    name = "attention"
    description = "Self-attention -> QKV GEMM with the per-head [N,3,H] weight + QKVToContext."
    what = "attention nodes"
    reference = "QKVToContext"

    def candidates(self, graph, ctx, report):
        self._mask, self._ids = graph_input(graph, "input_mask"), graph_input(graph, "input_ids")
        if self._mask is None or self._ids is None:
            report.miss("graph", "inputs input_ids and input_mask are needed (run `bertrt convert`)")
            return []
        softmaxes = [n for n in graph.nodes if n.op == "Softmax"]
        ctx.layers_expected = len(softmaxes)
        return [(f"layer {i} (Softmax {sm.name})", sm) for i, sm in enumerate(softmaxes)]

    def match(self, graph, ctx, softmax) -> Match:
        c = find(graph, softmax, self._mask)
        c.x_rank = adapters.model_rank(graph, c.q.x, ctx)
        c.ctx_rank = adapters.model_rank(graph, c.ctx, ctx)
        return Match([c.q.x], [c.ctx], c)

    def verify(self, graph, ctx, m: Match) -> float:
        c: Candidate = m.data
        ids, mask_input = self._ids, self._mask
        E, N = c.q.w.shape[0], c.heads
        B, S = ctx.proof_shape()
        rng = np.random.default_rng(2)
        x = rng.standard_normal((B, S, E)).astype(np.float32)
        lengths = proof_lengths(B, S)
        mask = (np.arange(S)[None] < lengths[:, None]).astype(_dtype(mask_input))
        feeds = [(c.q.x, x.reshape(B * S, E) if c.x_rank == 2 else x), (mask_input, mask),
                 (ids, np.zeros((B, S), _dtype(ids)))]
        seg = graph_input(graph, "segment_ids")
        if seg is not None:
            feeds.append((seg, np.zeros((B, S), _dtype(seg))))
        (got,) = evaluate(graph, [c.ctx], feeds)
        w, b = fused_qkv(c)
        x_sb = np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(S * B, E)  # 2-D: BLAS, not numpy's slow loop
        qkv = (x_sb @ w + b).reshape(S, B, 3 * E, 1, 1)
        want = ref.qkv_fixed(qkv, N, lengths.astype(np.int32).reshape(B, 1) if c.has_mask else None)
        want = want.reshape(S, B, E).transpose(1, 0, 2)
        return max_rel_err(got, want.reshape(got.shape)) if got.size == want.size else float("inf")

    def rewrite(self, graph, ctx, m: Match) -> list:
        c: Candidate = m.data
        (x,) = m.inputs
        E, N = c.q.w.shape[0], c.heads
        H = E // N
        w, b = fused_qkv(c)
        prefix = adapters.fresh(graph, "attention")
        x_sb = adapters.to_sb(graph, x, c.x_rank, E)
        weight = gs.Constant(f"{prefix}/qkv_weight", w)
        # A QAT model's per-channel weight scales move with their columns.
        carry_scales(ctx, weight, [c.q.weight, c.k.weight, c.v.weight], lambda ws: fused_qkv(c.with_weights(ws))[0])
        mm = adapters.node(graph, "MatMul", f"{prefix}/qkv_MatMul", [x_sb, weight])
        qkv = adapters.node(graph, "Add", f"{prefix}/qkv_Add", [mm, gs.Constant(f"{prefix}/qkv_bias", b)])
        qkv5 = adapters.to_5d(graph, qkv, 3 * E, prefix)
        route = mask_route(ctx, H)
        fields = {"type_id": 0, "hidden_size": E, "num_heads": N, "has_mask": int(c.has_mask)}
        inputs = [qkv5]
        if c.has_mask:
            inputs.append(_mask_tensor(graph, self._mask, one_d=route == "len"))
        if route == "len":
            fields["var_seqlen"] = 0
        out = gs.Variable(f"{prefix}/context", dtype=np.float32)
        graph.nodes.append(make_plugin_node(get_spec(QKV_TO_CONTEXT, self._version(ctx, H)), inputs, [out], fields,
                                            name=prefix))
        ctx.softmax_of[prefix] = c.softmax.outputs[0].name
        ctx.alias([x_sb], [x])
        ctx.alias([mm, qkv, qkv5], c.q.carriers + c.k.carriers + c.v.carriers)
        return [adapters.plugin_output(graph, ctx, out, E, prefix, c.ctx, c.ctx_rank)]

    def finish(self, graph, ctx, report, matches) -> None:
        if matches:
            c = matches[0].data
            ctx.num_heads = c.heads
            H = c.q.w.shape[0] // c.heads
            report.notes.append(f"{c.heads} heads of {H}; QKV plugin version {self._version(ctx, H)}")

    def _version(self, ctx, head_size):
        v = ctx.plugin_version("qkv_to_context")
        if mask_route(ctx, head_size) == "len":
            v = ctx.plugin_version("qkv_to_context", varseqlen=True)
        return v


def proof_lengths(B: int, S: int) -> np.ndarray:
    """Sequence lengths for a proof: full and half in turn; one sequence alone is three quarters long, so
    that its mask is exercised too."""
    if B == 1:
        return np.array([max(1, (3 * S) // 4)])
    return np.array([S if i % 2 == 0 else max(1, S // 2) for i in range(B)])


def _dtype(t: gs.Tensor):
    return np.dtype(t.dtype) if t.dtype is not None else np.int32
