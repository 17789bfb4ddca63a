"""What a graph holds: plugin nodes by name and version, encoder ops left unfused, validator problems."""

from __future__ import annotations

from collections import Counter

import onnx

from bertrt.plugins.nodes import PLUGIN_NAMES
from bertrt.surgery.pipeline import UNFUSED_OPS, summarize


def inspect(model: onnx.ModelProto, strongly_typed: bool | None = None) -> str:
    """The report; ``strongly_typed`` None validates both ways (a trt10 and a trt11 build), else the one given."""
    counts, leftover, problems = summarize(model, strongly_typed=bool(strongly_typed))
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
    typing = "strongly typed" if strongly_typed else "weakly typed"
    lines.append(f"validator ({typing}): " + ("no problems" if not problems else f"{len(problems)} problem(s)"))
    lines += [f"  {p}" for p in problems]
    if strongly_typed is None and counts:
        # The same nodes in a strongly typed network (TensorRT 11), where the tensor types must match the fields.
        strong = [p for p in summarize(model, strongly_typed=True)[2] if p not in problems]
        lines.append("validator (strongly typed, trt11): " + ("no more problems" if not strong
                                                              else f"{len(strong)} more problem(s)"))
        lines += [f"  {p}" for p in strong[:3]] + ([f"  ... {len(strong) - 3} more"] if len(strong) > 3 else [])
    return "\n".join(lines)


def _shape(v) -> str:
    t = v.type.tensor_type
    dims = [d.dim_param or str(d.dim_value) for d in t.shape.dim]
    return f"{onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}[{', '.join(dims)}]"
