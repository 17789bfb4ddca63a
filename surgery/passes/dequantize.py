"""dequantize: take a QAT (Q/DQ) graph's quantization out of the float path so the fusions see plain BERT.

Each QuantizeLinear -> DequantizeLinear pair on an activation is bypassed, and each DequantizeLinear of a
constant int8 weight becomes the float weight it stands for. The scales are not lost: they stay in the
original model, and `bertrt calibrate qat ORIGINAL --name-map MAP` turns them into the fused graph's INT8
ranges (TensorRT 10), or `bertrt calibrate qdq FUSED --ranges R` puts them back as Q/DQ on the fused graph's
GEMMs (TensorRT 11). A model without Q/DQ passes through untouched.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from bertrt.surgery.framework import Pass, register
from bertrt.surgery.graph_utils import const_value, producer, replace_uses


def dequantized(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int) -> np.ndarray:
    q = q.astype(np.float32)
    zp = np.zeros_like(scale, np.float32) if zero_point is None else zero_point.astype(np.float32)
    if scale.size > 1:  # per axis
        shape = [1] * q.ndim
        shape[axis] = scale.size
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return ((q - zp) * scale).astype(np.float32)


@register
class DequantizePass(Pass):
    name = "dequantize"
    description = "QAT graphs: bypass activation Q/DQ pairs, dequantize int8 weights (scales read later by calibrate qat)."

    def apply(self, graph: gs.Graph, ctx, report) -> None:
        weights = pairs = short = 0
        for dq in [n for n in graph.nodes if n.op == "DequantizeLinear"]:
            src = dq.inputs[0]
            p = producer(src)
            out = dq.outputs[0]
            if p is not None and p.op == "QuantizeLinear":
                scale = const_value(p.inputs[1])
                if scale is not None and scale.size == 1:
                    ctx.qat_scales[p.inputs[0].name] = float(scale.reshape(()))
                replace_uses(graph, out, p.inputs[0])
                pairs += 1
                continue
            q = const_value(src)
            scale = const_value(dq.inputs[1])
            zp = const_value(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2].name else None
            if q is None or scale is None:
                report.miss(f"DequantizeLinear {dq.name}", "its input is neither a QuantizeLinear nor a constant")
                continue
            axis = dq.attrs.get("axis", 1)
            axis = axis if axis >= 0 else axis + q.ndim
            w = gs.Constant(f"{dq.name}/float", dequantized(q, scale, zp, axis))
            replace_uses(graph, out, w)
            weights += 1
            short += _channels_short_of_full_range(q, scale, axis)
        report.rewrites = pairs + weights
        if report.rewrites:
            report.notes.append(f"{pairs} activation Q/DQ pairs bypassed, {weights} weights dequantized")
        if short:
            # `calibrate qdq` derives a weight channel's scale from its largest value (max |w| / 127): the same
            # int8 weights exactly when every channel reaches +-127, a finer grid than the QAT one otherwise.
            report.notes.append(f"{short} weight channels do not reach +-127: Q/DQ put back for TensorRT 11 "
                                "quantizes them on a finer grid than the QAT one")


def _channels_short_of_full_range(q: np.ndarray, scale: np.ndarray, axis: int) -> int:
    """How many channels of an int8 weight (per-tensor: one) have no value at +-127."""
    if q.dtype != np.int8 or q.ndim == 0:
        return 0
    mags = np.abs(q.astype(np.int32))
    if np.asarray(scale).size == 1:
        return int(mags.max() < 127)
    reduce = tuple(i for i in range(q.ndim) if i != axis)
    return int(np.sum(mags.max(axis=reduce) < 127))
