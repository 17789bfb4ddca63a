"""Small helpers over onnx-graphsurgeon graphs: producers, constants, tracing, naming, replacing."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

# Ops that only move or retype token ids / masks without changing their values.
PASS_THROUGH = ("Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity")


def producer(t: gs.Tensor) -> gs.Node | None:
    return t.inputs[0] if t is not None and len(t.inputs) == 1 else None


def const_value(t: gs.Tensor) -> np.ndarray | None:
    """The value of a constant tensor (an initializer or a Constant node's output), else None."""
    if isinstance(t, gs.Constant):
        return np.asarray(t.values)
    p = producer(t)
    if p is not None and p.op == "Constant" and "value" in p.attrs:
        v = p.attrs["value"]
        return np.asarray(v.values if isinstance(v, gs.Constant) else v)
    return None


def scalar(t: gs.Tensor) -> float | None:
    v = const_value(t)
    if v is None or v.size != 1:
        return None
    return float(v.reshape(()))


def is_const(t: gs.Tensor) -> bool:
    return const_value(t) is not None


def trace_back(t: gs.Tensor, ops=PASS_THROUGH) -> gs.Tensor:
    """Follow t back through value-preserving reshapes and casts to where it comes from."""
    seen = 0
    while (p := producer(t)) is not None and p.op in ops and seen < 16:
        t = p.inputs[0]
        seen += 1
    return t


def graph_input(graph: gs.Graph, name: str) -> gs.Variable | None:
    return next((t for t in graph.inputs if t.name == name), None)


ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where"}
SAME_RANK = {"LayerNormalization", "Cast", "Erf", "Tanh", "Relu", "Gelu", "Sqrt", "Reciprocal", "Neg", "Softmax",
             "Transpose", "QuantizeLinear", "DequantizeLinear", "Identity"}


def rank(t: gs.Tensor, depth: int = 8) -> int | None:
    """The tensor's rank: from its inferred shape, else worked out from its producer (shape inference
    gives up on Reshapes whose target is computed, as tf2onnx writes them with a dynamic sequence)."""
    if t.shape is not None:
        return len(t.shape)
    if isinstance(t, gs.Constant):
        return len(t.values.shape)
    p = producer(t)
    if p is None or depth == 0:
        return None
    if p.op == "Reshape":
        target = p.inputs[1]
        v = const_value(target)
        if v is not None:
            return int(v.size)
        return int(target.shape[0]) if target.shape and isinstance(target.shape[0], (int, np.integer)) else None
    if p.op in SAME_RANK:
        return rank(p.inputs[0], depth - 1)
    if p.op in ELEMENTWISE or p.op == "MatMul":
        ranks = [rank(i, depth - 1) for i in p.inputs if i.name]
        return None if any(r is None for r in ranks) else max(ranks)
    if p.op == "Gather":
        a, b = rank(p.inputs[0], depth - 1), rank(p.inputs[1], depth - 1)
        return None if a is None or b is None else a + b - 1
    return None


def last_dim(t: gs.Tensor) -> int | None:
    if t.shape and isinstance(t.shape[-1], (int, np.integer)) and t.shape[-1] > 0:
        return int(t.shape[-1])
    return None


def ancestors(outputs: list[gs.Tensor], stop: list | None = None) -> list[gs.Node]:
    """Nodes that outputs depend on, stopping at tensors in ``stop`` (by identity), in topological order."""
    stop_ids = {id(t) for t in (stop or ())}
    seen: dict[int, gs.Node] = {}
    order: list[gs.Node] = []
    visiting = set()
    # iterative post-order DFS so deep graphs do not hit Python's recursion limit
    work = [(producer(t), False) for t in outputs if id(t) not in stop_ids and producer(t) is not None]
    while work:
        node, expanded = work.pop()
        if node is None or id(node) in seen:
            continue
        if expanded:
            seen[id(node)] = node
            order.append(node)
            continue
        if id(node) in visiting:
            continue
        visiting.add(id(node))
        work.append((node, True))
        for inp in node.inputs:
            if id(inp) in stop_ids:
                continue
            p = producer(inp)
            if p is not None and id(p) not in seen:
                work.append((p, False))
    return order


def depends_on(t: gs.Tensor, source: gs.Tensor, limit: int = 10_000) -> bool:
    """Whether t is computed from source."""
    if t is source:
        return True
    stack, seen = [t], set()
    while stack and len(seen) < limit:
        cur = stack.pop()
        if cur is source:
            return True
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        p = producer(cur)
        if p is not None:
            stack.extend(p.inputs)
    return False


SHAPE_OPS = ("Shape", "Size")  # their outputs carry a tensor's shape, none of its values


def value_path(inputs: list[gs.Tensor], outputs: list[gs.Tensor]) -> list[gs.Node]:
    """The nodes that compute ``outputs`` from the values of ``inputs``, in topological order: the
    ancestors of outputs (up to inputs) that read one of inputs or another such node's output. Nodes that
    only read shapes (Shape, and what computes Reshape targets from it) and side inputs (masks) are not on it."""
    carried = {id(t) for t in inputs}
    path = []
    for n in ancestors(outputs, stop=inputs):
        if n.op not in SHAPE_OPS and any(id(t) in carried for t in n.inputs):
            path.append(n)
            carried.update(id(o) for o in n.outputs)
    return path


def removal_problem(graph: gs.Graph, inputs: list[gs.Tensor], nodes: list[gs.Node],
                    outputs: list[gs.Tensor]) -> str | None:
    """Why ``nodes`` (between ``inputs`` and ``outputs``) would not all go once every use of ``outputs``
    moves to a fused tensor, or None.

    A node goes when nothing needs its outputs any more (onnxscript's check_nodes_are_removable, with the
    nodes that would go along, such as the Shape of a projection feeding its own head-split Reshape,
    counted as gone). One that stays means the original compute keeps running beside the fusion."""
    upstream = ancestors(outputs, stop=inputs)
    replaced = {id(t) for t in outputs}
    graph_outputs = {id(t) for t in graph.outputs}
    gone: set[int] = set()
    for n in reversed(upstream):  # consumers before their producers
        needed = any(id(o) not in replaced and (id(o) in graph_outputs or any(id(c) not in gone for c in o.outputs))
                     for o in n.outputs)
        if not needed:
            gone.add(id(n))
    on_path = {id(n) for n in nodes}
    # A node that stays is needed by a graph output or a consumer that stays; following the consumers on the
    # path that stay ends at one whose consumer is off the path: that is the use to name.
    for n in nodes:
        if id(n) in gone:
            continue
        for o in n.outputs:
            if id(o) in replaced:
                continue
            if id(o) in graph_outputs:
                return f"{o.name} (from {n.op} {n.name}) is a graph output too: fusing would leave the original nodes running"
            user = next((c for c in o.outputs if id(c) not in on_path and id(c) not in gone), None)
            if user is not None:
                return (f"{o.name} (from {n.op} {n.name}) is used elsewhere too, by {user.op} {user.name}: fusing "
                        f"would leave the original nodes running")
    return None


def unique_name(graph: gs.Graph, base: str, tensor: bool = False) -> str:
    """``base``, or ``base_1``, ``base_2``, ... : a name no other node (or, with ``tensor``, no other tensor) of
    the graph has. ONNX Runtime refuses two nodes of one name, and sources may have unnamed or clashing nodes."""
    key = "_bertrt_taken_tensors" if tensor else "_bertrt_taken"
    taken = graph.__dict__.get(key)
    if taken is None:
        taken = set(graph.tensors()) if tensor else {n.name for n in graph.nodes}
        graph.__dict__[key] = taken
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def replace_uses(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> bool:
    """Point every consumer of old (and the graph outputs) at new. A graph output keeps its name: new
    takes it. Returns False, changing nothing, where new cannot take it (a graph input, a constant or
    another output)."""
    at = [i for i, t in enumerate(graph.outputs) if t is old]
    if at and (isinstance(new, gs.Constant) or any(new is t for t in graph.inputs)
               or any(new is t for t in graph.outputs)):
        return False
    for consumer in list(old.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = new
    for i in at:
        name = old.name
        old.name = f"{name}.replaced"
        new.name = name
        new.dtype = new.dtype or old.dtype
        new.shape = new.shape if new.shape is not None else old.shape
        graph.outputs[i] = new
    return True
