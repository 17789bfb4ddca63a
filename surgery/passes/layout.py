"""layout: cancel the fusion passes' layout adapters, leaving transposes only at the graph's edges.

Each fused plugin sits between a to_sb adapter ([B,S,E] or [B*S,E] -> [S,B,E]) and a from_sb adapter
(back). Between two plugins there are only ops that act on the hidden axis alone (the dense GEMMs,
their biases, GELU, casts, Q/DQ, a LayerNorm over the hidden axis): they work on [S,B,E] just as on [B,S,E]. This pass follows each
from_sb output through such ops, makes sequence-major twins of them, and connects the twins straight to
the next plugin's input, dropping the to_sb adapter there. A graph output reached this way (the QA head's
logits) gets a single Transpose back to [B,S,...] at the very end.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from bertrt.surgery.adapters import FROM_SB, TO_SB
from bertrt.surgery.framework import Pass, register
from bertrt.surgery.graph_utils import const_value, producer, rank, replace_uses, trace_back, unique_name

UNARY = {"Gelu", "Erf", "Tanh", "Relu", "Sigmoid", "Sqrt", "Cast", "Neg", "Abs", "Identity", "Clip", "Softplus"}
BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"}
QDQ = {"QuantizeLinear", "DequantizeLinear"}


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
        # id(model tensor) -> (model tensor, its sequence-major twin, how many trailing (non B/S) axes it has)
        sb: dict[int, tuple[gs.Tensor, gs.Tensor, int]] = {}
        work = []
        for s, m in _from_sb_heads(graph):
            sb[id(m)] = (m, s, 1)
            work.append(m)
        twins = 0
        cancelled = 0
        twinned: set[int] = set()  # a node with two sequence-major inputs is reached twice; twin it once
        while work:
            m = work.pop(0)
            s = sb[id(m)][1]
            for c in list(m.outputs):
                y = _to_sb_output(c)
                if y is not None:
                    replace_uses(graph, y, s)
                    cancelled += 1
                    continue
                if id(c) in twinned:
                    continue
                pairs = self._twin(graph, c, sb)
                if pairs:
                    twinned.add(id(c))
                for old_out, new_out, trailing in pairs or ():
                    if new_out.name not in ctx.tensor_map:
                        ctx.alias([new_out], [old_out])
                    if id(old_out) not in sb:
                        sb[id(old_out)] = (old_out, new_out, trailing)
                        work.append(old_out)
                twins += bool(pairs)
        # Graph outputs that now have a sequence-major twin: one transpose at the very end.
        for i, o in enumerate(list(graph.outputs)):
            if id(o) in sb and rank(o) == 2 + sb[id(o)][2]:  # batch and sequence axes kept apart
                _, s, trailing = sb[id(o)]
                t = gs.Variable(unique_name(graph, f"{o.name}/from_sb", tensor=True), dtype=o.dtype, shape=o.shape)
                graph.nodes.append(gs.Node(op="Transpose", name=unique_name(graph, f"output_{i}/Transpose"),
                                           attrs={"perm": [1, 0] + list(range(2, 2 + trailing))}, inputs=[s], outputs=[t]))
                replace_uses(graph, o, t)
                ctx.alias([t], [s])
        graph.cleanup()
        left = [n.name for n in graph.nodes if n.name.startswith((TO_SB, FROM_SB)) and n.op == "Transpose"]
        report.rewrites = cancelled
        report.notes.append(f"{cancelled} adapter pairs cancelled, {twins} ops moved to sequence-major")
        for name in left:
            report.miss(name, "a layout adapter is left: a consumer of this tensor needs the batch-major layout")

    def _twin(self, graph: gs.Graph, node: gs.Node, sb) -> list | None:
        """[(node output, its sequence-major twin, trailing axes)] for a node that can work sequence-major."""
        def mapped(t):
            return sb[id(t)][1] if id(t) in sb else None

        first = next((t for t in node.inputs if id(t) in sb), None)
        if first is None:
            return None
        trailing = sb[id(first)][2]
        r = rank(first)
        op = node.op
        out_trailing = trailing
        attrs = dict(node.attrs)
        inputs = list(node.inputs)
        if op == "Reshape":
            if trailing == 1 and _merges_leading_dims(node, _last(first, sb)):
                return [(node.outputs[0], mapped(first), 1)]  # [B,S,C] <-> [B*S,C]: nothing to do
            return None
        if op == "MatMul":
            w = const_value(node.inputs[1])
            wq = producer(node.inputs[1])
            weight_ok = (w is not None and w.ndim == 2) or (wq is not None and wq.op == "DequantizeLinear")
            if node.inputs[0] is not first or trailing != 1 or not weight_ok:
                return None
            inputs[0] = mapped(first)
        elif op == "LayerNormalization":  # over the hidden axis alone (an MLM head's transform): per token
            if node.inputs[0] is not first or trailing != 1 or _neg_axis(attrs.get("axis", -1), r) != -1 or \
                    any(const_value(t) is None for t in node.inputs[1:] if t.name):
                return None
            attrs["axis"] = -1
            inputs[0] = mapped(first)
        elif op in UNARY or op in QDQ:
            if node.inputs[0] is not first:
                return None
            if op in QDQ:
                scale = const_value(node.inputs[1])
                axis = _neg_axis(attrs.get("axis", 1), r)
                if scale is None or (scale.size != 1 and axis != -1):
                    return None
                if "axis" in attrs:
                    attrs["axis"] = -1
            inputs[0] = mapped(first)
        elif op in BINARY or op == "Concat":
            if op == "Concat" and not _trailing_axis(attrs.get("axis"), r, trailing):
                return None
            for i, t in enumerate(node.inputs):
                if id(t) in sb and sb[id(t)][2] == trailing:
                    inputs[i] = mapped(t)
                elif op in BINARY and (v := const_value(t)) is not None and (v.ndim <= trailing or
                                                                              all(d == 1 for d in v.shape[:-trailing])):
                    continue
                else:
                    return None
            if op == "Concat":
                attrs["axis"] = _neg_axis(attrs["axis"], r)
        elif op == "Split":
            if node.inputs[0] is not first or not _trailing_axis(attrs.get("axis", 0), r, trailing):
                return None
            attrs["axis"] = _neg_axis(attrs.get("axis", 0), r)
            inputs[0] = mapped(first)
        elif op in ("Squeeze", "Unsqueeze"):
            axes = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
            if node.inputs[0] is not first or axes is None or axes.size != 1:
                return None
            out_r = r - 1 if op == "Squeeze" else r + 1
            axis = _neg_axis(int(axes.reshape(())), r if op == "Squeeze" else out_r)
            room = trailing if op == "Squeeze" else trailing + 1
            if not -room <= axis <= -1:
                return None
            inputs = [mapped(first), gs.Constant(unique_name(graph, f"{node.name or op}/sb_axes", tensor=True),
                                                 np.array([axis], np.int64))]
            out_trailing = trailing - 1 if op == "Squeeze" else trailing + 1
        else:
            return None
        outs = [gs.Variable(unique_name(graph, f"{o.name}/sb", tensor=True), dtype=o.dtype) for o in node.outputs]
        graph.nodes.append(gs.Node(op=op, name=unique_name(graph, f"{node.name or op}/sb"), attrs=attrs,
                                   inputs=inputs, outputs=outs, domain=node.domain))
        return [(o, n, out_trailing) for o, n in zip(node.outputs, outs)]


def _neg_axis(axis: int, r: int | None) -> int:
    return axis - r if axis >= 0 and r is not None else axis


def _trailing_axis(axis, r, trailing) -> bool:
    """Whether an axis of a batch-major tensor of rank r is one of its trailing (non B/S) axes."""
    if axis is None or (axis >= 0 and r is None):
        return False
    return -trailing <= _neg_axis(axis, r) <= -1


def _last(t, sb):
    from bertrt.surgery.graph_utils import last_dim

    return last_dim(t) or last_dim(sb[id(t)][1])
