"""What a graph holds: plugin nodes by name and version, encoder ops left unfused, validator problems."""

from __future__ import annotations

from collections import Counter

import onnx

from bertrt.plugins.nodes import PLUGIN_NAMES
from bertrt.surgery.pipeline import UNFUSED_OPS, summarize


def inspect(model: onnx.ModelProto) -> str:
    counts, leftover, problems = summarize(model)
    ops = Counter(n.op_type for n in model.graph.node)
    lines = [f"graph: {len(model.graph.node)} nodes, opset "
             + ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)]
    lines.append("inputs:  " + ", ".join(f"{i.name} {_shape(i)}" for i in model.graph.input))
    lines.append("outputs: " + ", ".join(f"{o.name} {_shape(o)}" for o in model.graph.output))
    if counts:
        lines.append("plugin nodes:")
        for n in model.graph.node:
            if n.op_type in PLUGIN_NAMES:
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute
                         if a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.STRING)}
                fields = ", ".join(f"{k}={v.decode() if isinstance(v, bytes) else v}" for k, v in sorted(attrs.items())
                                   if k not in ("plugin_namespace",))
                lines.append(f"  {n.name}: {n.op_type} ({fields})")
    else:
        lines.append("plugin nodes: none")
    lines.append("unfused encoder ops: " + (", ".join(f"{k} x{v}" for k, v in leftover.items()) or "none"))
    lines.append("other ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(ops.items())
                                             if k not in PLUGIN_NAMES and k not in UNFUSED_OPS))
    lines.append("validator: " + ("no problems" if not problems else f"{len(problems)} problem(s)"))
    lines += [f"  {p}" for p in problems]
    return "\n".join(lines)


def _shape(v) -> str:
    t = v.type.tensor_type
    dims = [d.dim_param or str(d.dim_value) for d in t.shape.dim]
    return f"{onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}[{', '.join(dims)}]"
