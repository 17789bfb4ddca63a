"""skip_layernorm: residual Add + LayerNormalization -> SkipLayerNorm.

The bias of the dense layer feeding the residual (an Add of a constant [E] to a MatMul output, used
nowhere else) moves into the plugin's ``bias`` field, as the former demo did.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from bertrt.plugins.nodes import SKIP_LAYER_NORM, make_plugin_node
from bertrt.plugins.specs import get_spec
from bertrt.surgery import adapters
from bertrt.surgery.framework import Pass, register
from bertrt.surgery.graph_utils import const_value, is_const, last_dim, producer, rank, replace_uses


def _split_bias(t: gs.Tensor, E: int):
    """(input without bias, bias) if t = MatMul(...) + bias[E] and the Add feeds nothing else."""
    p = producer(t)
    if p is None or p.op != "Add" or len(t.outputs) != 1:
        return t, None
    for i in (0, 1):
        bias, other = const_value(p.inputs[i]), p.inputs[1 - i]
        mp = producer(other)
        if bias is not None and bias.size == E and mp is not None and mp.op == "MatMul":
            return other, bias.reshape(E).astype(np.float32)
    return t, None


@register
class SkipLayerNormPass(Pass):
    name = "skip_layernorm"
    description = "Residual Add + LayerNormalization -> SkipLayerNorm (dense bias folded into the plugin)."

    def apply(self, graph: gs.Graph, ctx, report) -> None:
        version = ctx.plugin_version("skip_layernorm")
        fold_bias = ctx.target.get("skip_layernorm_bias", True)
        for ln in [n for n in graph.nodes if n.op == "LayerNormalization"]:
            add = producer(ln.inputs[0])
            where = f"LayerNormalization {ln.name}"
            if add is None or add.op != "Add" or is_const(add.inputs[0]) or is_const(add.inputs[1]):
                report.miss(where, "its input is not the sum of two computed tensors (no residual Add)")
                continue
            if len(add.outputs[0].outputs) != 1:
                report.miss(where, f"the residual sum {add.outputs[0].name} is used elsewhere too")
                continue
            a, b = add.inputs
            y = ln.outputs[0]
            E = last_dim(y) or last_dim(a) or last_dim(b)
            r = rank(y)
            axis = ln.attrs.get("axis", -1)
            gamma = const_value(ln.inputs[1])
            beta = const_value(ln.inputs[2]) if len(ln.inputs) > 2 else np.zeros(E or 0, np.float32)
            if E is None or r not in (2, 3) or rank(a) != r or rank(b) != r:
                report.miss(where, "the residual inputs' ranks or hidden size are unknown or differ")
                continue
            if axis not in (-1, r - 1):
                report.miss(where, f"it normalises axis {axis}, not the hidden axis")
                continue
            if gamma is None or beta is None:
                report.miss(where, "its scale or bias is not constant")
                continue
            summed = (a, b)
            bias = None
            if fold_bias:
                a, bias = _split_bias(a, E)
                if bias is None:
                    b, bias = _split_bias(b, E)
            prefix = adapters.fresh(graph, "skip_layernorm")
            ins = []
            for i, (t, t0) in enumerate(zip((a, b), summed)):
                t_sb = adapters.to_sb(graph, t, r, E)
                ins.append(adapters.to_5d(graph, t_sb, E, f"{prefix}/in{i}"))
                # A bias folded in: a QAT model's scale on the biased sum goes to the GEMM output (NVIDIA's QAT BERT).
                ctx.alias([t_sb, ins[-1]], [t, t0] if t is not t0 and t0.name in ctx.qat_scales else [t])
            fields = {"type_id": 0}  # ld, where the version has it, is implied by beta's length
            fields["beta"] = beta.reshape(E).astype(np.float32)
            fields["gamma"] = gamma.reshape(E).astype(np.float32)
            if bias is not None:
                fields["bias"] = bias
            out = gs.Variable(f"{prefix}/out", dtype=np.float32)
            graph.nodes.append(make_plugin_node(get_spec(SKIP_LAYER_NORM, version), ins, [out], fields, name=prefix))
            out_sb = adapters.from_5d(graph, out, E, prefix)
            out_model = adapters.from_sb(graph, out_sb, r, E)
            replace_uses(graph, y, out_model)
            ctx.alias([out, out_sb, out_model], [y])
            report.rewrites += 1
