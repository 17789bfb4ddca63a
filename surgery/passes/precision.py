"""precision: express FP16 the way the target wants it.

trt10 targets (weakly typed): the plugins' own fields (``type_id`` = 1, EmbLayerNorm ``output_fp16`` and
``mha_type_id``); TensorRT's FP16 builder flag does the rest, and the graph's tensors stay float32.
trt11 (strongly typed): the graph itself must carry FP16: float16 weights and activations, plugins with
FP16 I/O, and a Cast back to float32 before the outputs. Nothing to do at FP32. (INT8 has its own pass.)
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from bertrt.plugins.nodes import EMB_LAYER_NORM, QKV_TO_CONTEXT, SKIP_LAYER_NORM, TYPE_FP16
from bertrt.surgery.framework import Pass, register

PLUGINS = (EMB_LAYER_NORM, QKV_TO_CONTEXT, SKIP_LAYER_NORM)


@register
class PrecisionPass(Pass):
    name = "precision"
    description = "FP16 as the target expresses it: plugin type fields (trt10) or float16 in the graph (trt11)."

    def apply(self, graph: gs.Graph, ctx, report) -> None:
        if ctx.precision == "fp32":
            report.notes.append("fp32: nothing to do")
            return
        if ctx.precision != "fp16":
            report.notes.append(f"{ctx.precision}: left to the INT8 pass")
            return
        for node in graph.nodes:
            if node.op == QKV_TO_CONTEXT or node.op == SKIP_LAYER_NORM:
                node.attrs["type_id"] = TYPE_FP16
                report.rewrites += 1
            elif node.op == EMB_LAYER_NORM:
                node.attrs["output_fp16"] = 1
                # The mask format follows the QKV that reads EmbLayerNorm's mask output (if any does).
                reads_mask = any(c.op == QKV_TO_CONTEXT for c in node.outputs[1].outputs) if len(node.outputs) > 1 else False
                node.attrs["mha_type_id"] = TYPE_FP16 if reads_mask else 0
                report.rewrites += 1
        if ctx.target.get("strongly_typed"):
            n = self._float16_graph(graph)
            report.notes.append(f"strongly typed: {n} constants and the activations made float16, Cast to float32 "
                                "before the outputs")

    def _float16_graph(self, graph: gs.Graph) -> int:
        converted = 0
        plugin_attr_ids = set()
        for node in graph.nodes:
            if node.op in PLUGINS:
                plugin_attr_ids.update(id(v) for v in node.attrs.values() if isinstance(v, gs.Constant))
        for t in graph.tensors().values():
            if isinstance(t, gs.Constant):
                if id(t) in plugin_attr_ids or np.asarray(t.values).dtype != np.float32:
                    continue
                t.values = np.asarray(t.values).astype(np.float16)
                converted += 1
            elif t.dtype is not None and np.dtype(t.dtype) == np.float32 and not _is_output(graph, t):
                t.dtype = np.float16
        for node in graph.nodes:
            if node.op == "Cast" and node.attrs.get("to") == onnx.TensorProto.FLOAT and not _is_output(graph, node.outputs[0]):
                node.attrs["to"] = onnx.TensorProto.FLOAT16
        for i, out in enumerate(list(graph.outputs)):
            if out.dtype is not None and np.dtype(out.dtype) == np.float32 and out.inputs:
                half = gs.Variable(f"{out.name}/fp16", dtype=np.float16, shape=out.shape)
                producer = out.inputs[0]
                producer.outputs[[o is out for o in producer.outputs].index(True)] = half
                graph.nodes.append(gs.Node(op="Cast", name=f"{out.name}/Cast", attrs={"to": onnx.TensorProto.FLOAT},
                                           inputs=[half], outputs=[out]))
        return converted



def _is_output(graph: gs.Graph, t: gs.Tensor) -> bool:
    return any(t is o for o in graph.outputs)
