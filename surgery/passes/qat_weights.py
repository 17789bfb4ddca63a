"""qat_weights: INT8 on a strongly typed target puts a QAT model's weights back on their own int8 grid.

The dequantize pass made each Q/DQ weight the float values it stands for (the fusions need constant
weights) and kept its scale per output channel; the fusions carried the scales to the weights they built.
TensorRT 11 takes INT8 only from Q/DQ nodes, so here each such GEMM weight becomes its int8 values and a
DequantizeLinear with the model's own scales (in the graph's float type). `bertrt calibrate qdq` keeps it
and adds the activations' Q/DQ: the engine computes with the weights the model was trained with, not with
a grid re-derived from max |w|. TensorRT 10 (implicit INT8) derives weight scales itself: nothing to do.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from bertrt.calibrate.qdq import QMAX, dequantize_weight
from bertrt.calibrate.tensors import GEMM_OPS
from bertrt.surgery.framework import Pass, register
from bertrt.surgery.passes.dequantize import output_channel_axis

# A weight is on its grid when w / scale is within this of an integer. Stored as float16 (relative error
# 2^-11 at most, times |q| <= 127) it is within 0.07; anything off the grid is much further.
GRID_TOLERANCE = 0.25
# DequantizeLinear with a float16 scale (the type of a strongly typed FP16 graph) is opset 19.
FLOAT16_DQ_OPSET = 19


@register
class QatWeightsPass(Pass):
    name = "qat_weights"
    description = ("INT8 on strongly typed targets: a QAT model's GEMM weights back on their int8 grid "
                   "(DequantizeLinear with the model's own per-channel scales).")

    def apply(self, graph: gs.Graph, ctx, report) -> None:
        if ctx.precision != "int8" or not ctx.target.get("strongly_typed") or not ctx.weight_scales:
            report.notes.append("nothing to do (only INT8 on a strongly typed target, for a Q/DQ model)")
            return
        done: dict[str, gs.Variable] = {}
        for node in [n for n in graph.nodes if n.op in GEMM_OPS and len(n.inputs) > 1]:
            weight = node.inputs[1]
            if not isinstance(weight, gs.Constant) or weight.name not in ctx.weight_scales:
                continue
            if weight.name not in done:
                axis = output_channel_axis(node, weight)
                grid = _on_grid(weight.values, ctx.weight_scales[weight.name], axis, graph.opset)
                if isinstance(grid, str):
                    report.miss(f"{node.op} {node.name}", grid)
                    continue
                q, scale = grid
                done[weight.name] = dequantize_weight(graph, weight.name, q, scale, axis)
            node.inputs[1] = done[weight.name]
            report.rewrites += 1
        report.notes.append(f"{len(done)} weights on their QAT int8 grid (read by {report.rewrites} GEMMs)")


def _on_grid(w: np.ndarray, scale: np.ndarray, axis: int, opset: int):
    """(int8 values, scale in w's float type) of a weight on the grid ``scale`` (along ``axis``), or why not."""
    ftype = np.asarray(w).dtype
    if ftype == np.float16 and opset < FLOAT16_DQ_OPSET:
        return f"a float16 DequantizeLinear needs opset {FLOAT16_DQ_OPSET}; the graph has {opset}"
    if w.ndim != 2 or scale.size != w.shape[axis]:
        return f"the weight {list(w.shape)} does not have {scale.size} output channels on axis {axis}"
    shape = [1, 1]
    shape[axis] = -1
    ratio = w.astype(np.float64) / scale.astype(np.float64).reshape(shape)
    q = np.rint(ratio)
    off = float(np.max(np.abs(ratio - q))) if q.size else 0.0
    if off > GRID_TOLERANCE or q.max() > QMAX or q.min() < -QMAX - 1:
        return f"the weight is not on its int8 grid (w / scale is {off:.2f} from an integer, or beyond -128..127)"
    return q.astype(np.int8), scale.astype(ftype)
