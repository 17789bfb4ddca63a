"""layout: cancel the fusion passes' layout adapters, leaving transposes only at the graph's edges.

Each fused plugin sits between a to_sb adapter ([B,S,E] or [B*S,E] -> [S,B,E]) and a from_sb adapter
(back). Between two plugins there are only ops that act on the hidden axis alone (the dense GEMMs,
their biases, GELU, casts, Q/DQ): they work on [S,B,E] just as on [B,S,E]. This pass follows each
from_sb output through such ops, makes sequence-major twins of them, and connects the twins straight to
the next plugin's input, dropping the to_sb adapter there. A graph output reached this way (the QA head's
logits) gets a single Transpose back to [B,S,...] at the very end.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from bertrt.surgery.adapters import FROM_SB, TO_SB
from bertrt.surgery.framework import Pass, register
from bertrt.surgery.graph_utils import const_value, producer, rank, replace_uses, trace_back

UNARY = {"Gelu", "Erf", "Tanh", "Relu", "Sigmoid", "Sqrt", "Cast", "Neg", "Abs", "Identity", "Clip", "Softplus"}
BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"}
QDQ = {"QuantizeLinear", "DequantizeLinear"}


def _hidden_only(v: np.ndarray) -> bool:
    """A constant that broadcasts along the hidden axis only (a scalar, [C], or [1,..,1,C])."""
    return v.ndim <= 1 or all(d == 1 for d in v.shape[:-1])


def _from_sb_heads(graph):
    """(sb tensor, model tensor) for every from_sb adapter."""
    out = []
    for n in graph.nodes:
        if n.name.startswith(FROM_SB) and n.op == "Transpose":
            model = n.outputs[0]
            users = model.outputs
            if len(users) == 1 and users[0].op == "Reshape" and users[0].name.startswith(FROM_SB):
                out.append((n.inputs[0], model))  # the [B,S,E] form is also equivalent
                model = users[0].outputs[0]
            out.append((n.inputs[0], model))
    return out


def _to_sb_output(node: gs.Node) -> gs.Tensor | None:
    """The [S,B,E] output of the to_sb adapter that starts at node, or None."""
    if not node.name.startswith(TO_SB):
        return None
    if node.op == "Transpose":
        return node.outputs[0]
    if node.op == "Reshape" and len(node.outputs[0].outputs) == 1:
        t = node.outputs[0].outputs[0]
        if t.op == "Transpose" and t.name.startswith(TO_SB):
            return t.outputs[0]
    return None


def _merges_leading_dims(node: gs.Node, C: int | None) -> bool:
    """A Reshape between [B,S,C] and [B*S,C] (the hidden axis stays last and whole)."""
    shape = const_value(node.inputs[1])
    if shape is None:
        p = producer(trace_back(node.inputs[1], ("Cast",)))
        if p is not None and p.op == "Concat":
            last = const_value(p.inputs[-1])
            return last is not None and last.size == 1 and C is not None and int(last.reshape(())) == C
        return False
    out_rank = rank(node.outputs[0])
    return len(shape) in (2, 3) and out_rank in (None, 2, 3) and C is not None and int(shape[-1]) == C


@register
class LayoutPass(Pass):
    name = "layout"
    description = "Cancel layout adapters between plugins: sequence-major inside, transposes only at the edges."

    def apply(self, graph: gs.Graph, ctx, report) -> None:
        sb: dict[int, tuple[gs.Tensor, gs.Tensor]] = {}   # id(model tensor) -> (model tensor, sb tensor)
        work = []
        for s, m in _from_sb_heads(graph):
            sb[id(m)] = (m, s)
            work.append(m)
        twins = 0
        cancelled = 0
        while work:
            m = work.pop(0)
            s = sb[id(m)][1]
            for c in list(m.outputs):
                y = _to_sb_output(c)
                if y is not None:
                    replace_uses(graph, y, s)
                    cancelled += 1
                    continue
                pairs = self._twin(graph, c, sb)
                for old_out, new_out in pairs or ():
                    if id(old_out) not in sb:
                        sb[id(old_out)] = (old_out, new_out)
                        work.append(old_out)
                twins += bool(pairs)
        # Graph outputs that now have a sequence-major twin: one transpose at the very end.
        for i, o in enumerate(list(graph.outputs)):
            if id(o) in sb and rank(o) == 3:
                s = sb[id(o)][1]
                t = gs.Variable(f"{o.name}/from_sb", dtype=o.dtype, shape=o.shape)
                graph.nodes.append(gs.Node(op="Transpose", name=f"output_{i}/Transpose", attrs={"perm": [1, 0, 2]},
                                           inputs=[s], outputs=[t]))
                replace_uses(graph, o, t)
        graph.cleanup()
        left = [n.name for n in graph.nodes if n.name.startswith((TO_SB, FROM_SB)) and n.op == "Transpose"]
        report.rewrites = cancelled
        report.notes.append(f"{cancelled} adapter pairs cancelled, {twins} ops moved to sequence-major")
        for name in left:
            report.miss(name, "a layout adapter is left: a consumer of this tensor needs the batch-major layout")

    def _twin(self, graph: gs.Graph, node: gs.Node, sb) -> list | None:
        """[(node output, its sequence-major twin)] for a node that can work sequence-major, else None."""
        def mapped(t):
            return sb[id(t)][1] if id(t) in sb else None

        op = node.op
        if op == "Reshape" and mapped(node.inputs[0]) is not None:
            C = _last(node.inputs[0], sb)
            if _merges_leading_dims(node, C):  # [B,S,C] <-> [B*S,C]: nothing to do sequence-major
                return [(node.outputs[0], mapped(node.inputs[0]))]
            return None
        if op == "MatMul":
            w = const_value(node.inputs[1])
            wq = node.inputs[1].inputs[0] if node.inputs[1].inputs else None
            weight_ok = (w is not None and w.ndim == 2) or (wq is not None and wq.op == "DequantizeLinear")
            if mapped(node.inputs[0]) is None or not weight_ok:
                return None
            inputs = [mapped(node.inputs[0]), node.inputs[1]]
        elif op in UNARY:
            if mapped(node.inputs[0]) is None:
                return None
            inputs = [mapped(node.inputs[0])] + node.inputs[1:]
        elif op in BINARY:
            inputs = []
            for t in node.inputs:
                if mapped(t) is not None:
                    inputs.append(mapped(t))
                elif (v := const_value(t)) is not None and _hidden_only(v):
                    inputs.append(t)
                else:
                    return None
        elif op in QDQ:
            axis = node.attrs.get("axis", 1)
            scale = const_value(node.inputs[1])
            r = rank(node.inputs[0])
            per_tensor = scale is not None and scale.size == 1
            if mapped(node.inputs[0]) is None or not (per_tensor or (r is not None and axis in (-1, r - 1))):
                return None
            inputs = [mapped(node.inputs[0])] + node.inputs[1:]
        else:
            return None
        attrs = dict(node.attrs)
        if op in QDQ and "axis" in attrs:
            attrs["axis"] = -1
        outs = [gs.Variable(f"{o.name}/sb", dtype=o.dtype) for o in node.outputs]
        twin = gs.Node(op=op, name=f"{node.name}/sb", attrs=attrs, inputs=inputs, outputs=outs, domain=node.domain)
        graph.nodes.append(twin)
        return list(zip(node.outputs, outs))


def _last(t, sb):
    from bertrt.surgery.graph_utils import last_dim

    return last_dim(t) or last_dim(sb[id(t)][1])
