"""precision: express FP16 (and INT8) the way the target wants it.

trt10 targets (weakly typed): the plugins' own fields (``type_id`` = 1, EmbLayerNorm ``output_fp16`` and
``mha_type_id``); TensorRT's FP16 builder flag does the rest, and the graph's tensors stay float32.
trt11 (strongly typed): the graph itself must carry FP16: float16 weights and activations, plugins with
FP16 I/O, and a Cast back to float32 before the outputs. Nothing to do at FP32.

INT8 on trt10 targets is implicit: everything is FP16 as above, and the plugins whose INT8 kernels fit the
model (the spec table's INT8 limits: head size and fixed sequence for QKVToContext, hidden size for
SkipLayerNorm) run with ``type_id`` = 2, reading their scales from the ranges `bertrt calibrate` writes. On trt11 INT8
is explicit: this pass gives the FP16 graph, and `bertrt calibrate qdq` puts Q/DQ on its GEMMs.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from bertrt.plugins.nodes import EMB_LAYER_NORM, QKV_TO_CONTEXT, SKIP_LAYER_NORM, TYPE_FP16, TYPE_INT8
from bertrt.plugins.specs import spec_of
from bertrt.surgery.framework import Pass, register
from bertrt.surgery.graph_utils import replace_uses

PLUGINS = (EMB_LAYER_NORM, QKV_TO_CONTEXT, SKIP_LAYER_NORM)


@register
class PrecisionPass(Pass):
    name = "precision"
    description = "FP16 as the target expresses it: plugin type fields (trt10) or float16 in the graph (trt11)."

    def apply(self, graph: gs.Graph, ctx, report) -> None:
        if ctx.precision == "fp32":
            report.notes.append("fp32: nothing to do")
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
        if ctx.precision == "int8" and not ctx.target.get("strongly_typed"):
            self._int8_plugins(graph, ctx, report)
        if ctx.target.get("strongly_typed"):
            if ctx.precision == "int8":
                report.notes.append("INT8 on a strongly typed target is explicit: quantize this FP16 graph's GEMMs "
                                    "with `bertrt calibrate qdq`")
            n = self._float16_graph(graph)
            report.notes.append(f"strongly typed: {n} constants and the activations made float16, Cast to float32 "
                                "before the outputs")

    def _int8_plugins(self, graph: gs.Graph, ctx, report) -> None:
        qkv_int8 = skip_int8 = 0
        why_not = {QKV_TO_CONTEXT: Counter(), SKIP_LAYER_NORM: Counter()}  # what kept nodes in FP16, counted
        for node in graph.nodes:
            probs = ctx.qat_scales.get(ctx.softmax_of.get(node.name, ""))
            if node.op == QKV_TO_CONTEXT and probs:
                node.attrs["dq_probs"] = probs  # the QAT graph's scale on the attention probabilities
            if node.op == QKV_TO_CONTEXT:
                H = node.attrs["hidden_size"] // node.attrs["num_heads"]
                fused_mask = node.attrs.get("var_seqlen", 0) == 0 and len(node.inputs) > 1 and any(
                    p.op == EMB_LAYER_NORM for p in node.inputs[1].inputs)
                problem = spec_of(node).int8_problem(head_size=H, seq=ctx.seq or 0, values=node.attrs)
                if problem is None and not fused_mask:
                    problem = "INT8 is set only on a fixed-length node whose mask comes from EmbLayerNorm"
                if problem is not None:
                    why_not[QKV_TO_CONTEXT][problem] += 1
                else:
                    node.attrs["type_id"] = TYPE_INT8
                    for p in node.inputs[1].inputs:
                        p.attrs["mha_type_id"] = TYPE_INT8
                    qkv_int8 += 1
            elif node.op == SKIP_LAYER_NORM and node.attrs.get("beta") is not None:
                E = np.asarray(node.attrs["beta"].values).size
                problem = spec_of(node).int8_problem(hidden=E)
                if problem is None:
                    node.attrs["type_id"] = TYPE_INT8
                    skip_int8 += 1
                else:
                    why_not[SKIP_LAYER_NORM][problem] += 1
        n_qkv = sum(n.op == QKV_TO_CONTEXT for n in graph.nodes)
        n_skip = sum(n.op == SKIP_LAYER_NORM for n in graph.nodes)
        report.notes.append(f"INT8: QKVToContext {qkv_int8}/{n_qkv}, SkipLayerNorm {skip_int8}/{n_skip} "
                            "(the rest FP16); GEMMs take INT8 from the ranges")
        for op, name in ((QKV_TO_CONTEXT, "QKVToContext"), (SKIP_LAYER_NORM, "SkipLayerNorm")):
            for problem, n in sorted(why_not[op].items()):  # the plugin's own reason, not a generic list
                report.notes.append(f"{name} FP16 x{n}: {problem}")

    def _float16_graph(self, graph: gs.Graph) -> int:
        # The outputs stay float32: each float32 output is computed in float16 and Cast back at the very end.
        for out in list(graph.outputs):
            if out.dtype is not None and np.dtype(out.dtype) == np.float32 and out.inputs:
                name = out.name
                wide = gs.Variable(name, dtype=np.float32, shape=out.shape)
                replace_uses(graph, out, wide)
                out.name = f"{name}/fp16"
                graph.nodes.append(gs.Node(op="Cast", name=f"{name}/Cast", attrs={"to": onnx.TensorProto.FLOAT},
                                           inputs=[out], outputs=[wide]))
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
        return converted


def _is_output(graph: gs.Graph, t: gs.Tensor) -> bool:
    return any(t is o for o in graph.outputs)
