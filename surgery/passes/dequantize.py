"""dequantize: take a QAT (Q/DQ) graph's quantization out of the float path so the fusions see plain BERT.

The forms exporters write, all taken:
  * a fake-quantized weight (PyTorch fake-quant export, pytorch-quantization, ModelOpt):
    ``W float -> QuantizeLinear -> DequantizeLinear [-> Transpose] -> MatMul``;
  * an int8 weight (onnxruntime's quantize_static): ``W int8 -> DequantizeLinear [-> Transpose] -> MatMul``;
  * an activation (every GEMM input, and in some exports the attention's q, k, v and probabilities and both
    inputs of the residual adds): ``x -> QuantizeLinear -> DequantizeLinear``.
Scales and zero points may be initializers or Constant nodes, per tensor or per channel on any axis.

A weight becomes the constant float weight the model computes with (its values on the int8 grid, what
ONNX Runtime computes from the Q/DQ nodes), any Transpose after it folded in, so the fusions see a constant
2-D weight. Its scale per output channel is kept in ``ctx.weight_scales`` under the constant's name: the
fusions carry it to the weights they build (`carry_scales`), and on TensorRT 11 the qat_weights pass puts
the weights back on their own grid. An activation pair is bypassed and its per-tensor scale kept in
``ctx.qat_scales`` (QKVToContext's dq_probs comes from the one on the softmax output); `bertrt calibrate
qat` reads the activation scales from the model itself. A model without Q/DQ passes through untouched.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_graphsurgeon as gs

from bertrt.calibrate.qdq import weight_axis
from bertrt.calibrate.tensors import GEMM_OPS
from bertrt.surgery.framework import Pass, register
from bertrt.surgery.graph_utils import const_value, producer, replace_uses


def _const(t: gs.Tensor) -> np.ndarray | None:
    """A constant's value, also through Identity copies (exporters share equal scales that way)."""
    for _ in range(4):
        v = const_value(t)
        p = producer(t)
        if v is not None or p is None or p.op != "Identity":
            return v
        t = p.inputs[0]
    return None


def _per_axis(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A scale or zero point shaped to broadcast along ``axis`` of a rank-``ndim`` tensor."""
    if v.size == 1:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis] = v.size
    return v.reshape(shape)


def _qparams(node: gs.Node, ndim: int):
    """(scale, zero point, axis) of a QuantizeLinear/DequantizeLinear, shaped for a rank-``ndim`` input;
    None if they are not constants or the node quantizes in blocks."""
    scale = _const(node.inputs[1])
    has_zp = len(node.inputs) > 2 and node.inputs[2].name
    zp = _const(node.inputs[2]) if has_zp else None
    if scale is None or (has_zp and zp is None) or node.attrs.get("block_size", 0):
        return None
    axis = node.attrs.get("axis", 1)
    axis = axis + ndim if axis < 0 else axis
    if scale.size > 1 and not 0 <= axis < ndim:
        return None
    return scale, zp, axis


def dequantized(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int) -> np.ndarray:
    """DequantizeLinear: (q - zero_point) * scale, in float32 (per axis when the scale has several values)."""
    s = _per_axis(np.asarray(scale, np.float32), q.ndim, axis)
    zp = 0 if zero_point is None else _per_axis(zero_point.astype(np.float32), q.ndim, axis)
    return ((q.astype(np.float32) - zp) * s).astype(np.float32)


def quantized(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int) -> np.ndarray:
    """QuantizeLinear: saturate(round_half_even(x / scale) + zero_point) in the zero point's integer type
    (uint8 without one, as ONNX says)."""
    dtype = np.dtype(np.uint8) if zero_point is None else zero_point.dtype
    s = _per_axis(np.asarray(scale, np.float32), x.ndim, axis)
    zp = 0 if zero_point is None else _per_axis(zero_point.astype(np.float64), x.ndim, axis)
    q = np.rint(x.astype(np.float32) / s).astype(np.float64) + zp
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


@dataclasses.dataclass
class _Weight:
    """A weight as its DequantizeLinear gives it: int8 values, their scale, zero point and channel axis."""
    q: np.ndarray
    scale: np.ndarray
    zp: np.ndarray | None
    axis: int


def _weight(dq: gs.Node) -> _Weight | str:
    """The quantized weight behind ``dq`` (a constant int8 tensor, or a constant float one through a
    QuantizeLinear), or why it is not one."""
    src = dq.inputs[0]
    q = _const(src)
    if q is None:
        p = producer(src)
        w = _const(p.inputs[0]) if p is not None and p.op == "QuantizeLinear" else None
        if w is None:
            return "its input is neither a QuantizeLinear nor a constant"
        qp = _qparams(p, w.ndim)
        if qp is None:
            return f"QuantizeLinear {p.name} has no constant per-tensor or per-axis scale and zero point"
        q = quantized(w, *qp)
    dp = _qparams(dq, q.ndim)
    if dp is None:
        return "its scale or zero point is not a constant (or it quantizes in blocks)"
    return _Weight(q, *dp)


def output_channel_axis(consumer: gs.Node, t: gs.Constant) -> int | None:
    """The output-channel axis of a 2-D weight ``t`` read by a GEMM as its second input, else None."""
    if consumer.op not in GEMM_OPS or len(consumer.inputs) < 2 or consumer.inputs[1] is not t:
        return None
    return weight_axis(consumer, t.values)


def _record_scale(ctx, const: gs.Constant, scale: np.ndarray, axis: int | None, zero: bool) -> bool:
    """Keep the per-output-channel scale of ``const`` for INT8: only for a symmetric grid (zero point 0),
    per tensor or along the axis every GEMM reading it computes its output channels on."""
    w = const.values
    axes = {output_channel_axis(c, const) for c in const.outputs}
    if not zero or w.ndim != 2 or len(axes) != 1 or None in axes:
        return False
    (out_axis,) = axes
    if scale.size == 1:
        ctx.weight_scales[const.name] = np.full(w.shape[out_axis], scale.reshape(()), np.float32)
    elif axis == out_axis:
        ctx.weight_scales[const.name] = np.asarray(scale, np.float32).reshape(-1)
    else:
        return False
    return True


def carry_scales(ctx, weight: gs.Constant, parts: list[gs.Tensor], fuse) -> None:
    """Keep the per-output-channel scales of a weight a fusion built from the GEMM weights ``parts``.

    ``fuse(matrices)`` builds a weight from one matrix per part as the fusion built ``weight`` from the real
    ones. Given each part's scales as a diagonal matrix, every output column it makes holds a single value:
    the scale of the column that moved there, times any factor the fusion applied to it. Nothing is kept
    unless every part has its scales.
    """
    scales = [ctx.weight_scales.get(p.name) if p is not None else None for p in parts]
    if all(s is not None for s in scales):
        ctx.weight_scales[weight.name] = np.abs(fuse([np.diag(s) for s in scales])).max(axis=0).astype(np.float32)


@register
class DequantizePass(Pass):
    name = "dequantize"
    description = ("QAT graphs: bypass activation Q/DQ pairs, turn Q/DQ weights into their float values on the "
                   "int8 grid (per-channel scales kept for INT8).")

    def apply(self, graph: gs.Graph, ctx, report) -> None:
        weights = pairs = short = folded = unkept = 0
        scales: dict[str, set[float]] = {}
        for dq in [n for n in graph.nodes if n.op == "DequantizeLinear"]:
            src, out = dq.inputs[0], dq.outputs[0]
            p = producer(src)
            if p is not None and p.op == "QuantizeLinear" and _const(p.inputs[0]) is None:
                scale = _const(p.inputs[1])
                if scale is not None and scale.size == 1:
                    ctx.qat_scales[p.inputs[0].name] = float(scale.reshape(()))
                    scales.setdefault(p.inputs[0].name, set()).add(float(scale.reshape(())))
                replace_uses(graph, out, p.inputs[0])
                pairs += 1
                continue
            w = _weight(dq)
            if isinstance(w, str):
                report.miss(f"DequantizeLinear {dq.name}", w)
                continue
            const = gs.Constant(f"{dq.name}/float", dequantized(w.q, w.scale, w.zp, w.axis))
            replace_uses(graph, out, const)
            weights += 1
            short += _channels_short_of_full_range(w.q, w.scale, w.axis)
            zero = w.zp is None or not np.any(w.zp)
            # A Transpose of the weight (PyTorch's W [out, in] -> [in, out]) folds into it; the channel axis moves.
            for t in [c for c in const.outputs if c.op == "Transpose"]:
                perm = list(t.attrs.get("perm", range(w.q.ndim)[::-1]))
                moved = gs.Constant(f"{t.name}/float", np.ascontiguousarray(const.values.transpose(perm)))
                replace_uses(graph, t.outputs[0], moved)
                t.inputs.clear()
                folded += 1
                unkept += not _record_scale(ctx, moved, w.scale, perm.index(w.axis), zero)
            if const.outputs:
                unkept += not _record_scale(ctx, const, w.scale, w.axis, zero)
        report.rewrites = pairs + weights
        if report.rewrites:
            report.notes.append(f"{pairs} activation Q/DQ pairs bypassed, {weights} weights dequantized"
                                + (f" ({folded} Transposes folded into them)" if folded else ""))
        several = sorted(t for t, found in scales.items() if len(found) > 1)
        if several:
            # One GEMM reads them once fused (PyTorch quantizes the Q, K and V input once per Linear), with one
            # range: `calibrate qat` keeps the largest; benchmarks/squad_accuracy.py qat-unified-ort measures it.
            apart = max(max(scales[t]) / min(scales[t]) - 1 for t in several)
            report.notes.append(f"{len(several)} activations are quantized with several scales, up to {apart:.1%} "
                                f"apart (e.g. {several[0]}): a GEMM fused from their readers has one range, the "
                                "largest (calibrate qat)")
        if unkept:
            report.notes.append(f"{unkept} weights' scales not kept (zero point not 0, not per output channel, or "
                                "not read by a GEMM): INT8 derives theirs from max |w| / 127")
        if short:
            # TensorRT 10 (implicit INT8) derives a weight channel's scale from its largest value (max |w| / 127):
            # the same grid when every channel reaches +-127, a finer one otherwise.
            report.notes.append(f"{short} weight channels do not reach +-127: TensorRT 10 quantizes them on a finer "
                                "grid than the QAT one (TensorRT 11 gets the QAT scales)")


def _channels_short_of_full_range(q: np.ndarray, scale: np.ndarray, axis: int) -> int:
    """How many channels of an int8 weight (per-tensor: one) have no value at +-127."""
    if q.dtype != np.int8 or q.ndim == 0:
        return 0
    mags = np.abs(q.astype(np.int32))
    if np.asarray(scale).size == 1:
        return int(mags.max() < 127)
    reduce = tuple(i for i in range(q.ndim) if i != axis)
    return int(np.sum(mags.max(axis=reduce) < 127))
