"""Which tensors of a BERT graph get an INT8 range, and what part each plays.

TensorRT needs ranges where it may run in INT8: around every GEMM, at the attention's QKV projections,
softmax and context, at the residual adds, the LayerNorm outputs and the GELU output. The roles are found
from the graph's structure, not from names, so the same rules work for every exporter's BERT.
"""

from __future__ import annotations

from collections import defaultdict

import onnx

GEMM_OPS = ("MatMul", "Gemm")
# Ops a decomposed LayerNorm is made of (tf2onnx, PyTorch and Keras decompositions).
_LN_OPS = frozenset({"Sub", "Mul", "Div", "Pow", "ReduceMean", "GlobalAveragePool", "Add", "Sqrt", "Reciprocal",
                     "Cast"})
_MEAN_OPS = ("ReduceMean", "GlobalAveragePool")
_ELEMENTWISE = frozenset({"Add", "Mul", "Div"})
# Roles in the order a tensor keeps the first one it gets (GELU before GEMM input, for the clamp).
ROLES = ("gelu", "softmax", "layernorm", "residual", "gemm_bias", "gemm_input", "gemm_output")


class GraphIndex:
    """Producers, consumers and constants of an ONNX graph (main graph only)."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.nodes = list(g.node)
        self.constants = {i.name for i in g.initializer}
        self.constants |= {n.output[0] for n in g.node if n.op_type == "Constant"}
        self.outputs = {o.name for o in g.output}
        self.producer = {}
        self.consumers = defaultdict(list)
        for node in g.node:
            for t in node.output:
                self.producer[t] = node
            for t in node.input:
                if t:
                    self.consumers[t].append(node)

    def is_const(self, name: str) -> bool:
        return name in self.constants

    def producer_op(self, name: str) -> str | None:
        node = self.producer.get(name)
        return node.op_type if node is not None else None


def weight_gemms(index: GraphIndex) -> list[tuple[onnx.NodeProto, str]]:
    """GEMMs with a constant weight and an activation input: (node, activation tensor name).

    A GEMM whose activation is a one-hot vector (tf2onnx's token-type embedding lookup) is an embedding
    gather in disguise and is left out.
    """
    out = []
    for node in index.nodes:
        if node.op_type not in GEMM_OPS or len(node.input) < 2:
            continue
        a, b = node.input[0], node.input[1]
        if index.is_const(a) or not index.is_const(b):
            continue
        if index.producer_op(a) == "OneHot":
            continue
        out.append((node, a))
    return out


def is_gemm_prescale(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """A Mul by a constant per-channel vector read only by weight GEMMs: the smoothing `bertrt calibrate smooth`
    puts before them. It belongs to the GEMMs, not to the LayerNorm or GELU before it."""
    if node.op_type != "Mul" or len(node.input) != 2 or sum(index.is_const(t) for t in node.input) != 1:
        return False
    readers = index.consumers[node.output[0]]
    return bool(readers) and node.output[0] not in index.outputs and all(
        c.op_type in GEMM_OPS and len(c.input) > 1 and c.input[0] == node.output[0] and index.is_const(c.input[1])
        for c in readers)


def unscaled(index: GraphIndex, tensor: str) -> str | None:
    """The tensor a smoothing Mul (is_gemm_prescale) scaled into ``tensor``, or None if none made it."""
    node = index.producer.get(tensor)
    if node is None or not is_gemm_prescale(index, node):
        return None
    return next(t for t in node.input if not index.is_const(t))


def _gemm_tensors(index: GraphIndex, roles: dict[str, str]) -> None:
    for node in index.nodes:
        if node.op_type not in GEMM_OPS:
            continue
        acts = [t for t in node.input[:2] if t and not index.is_const(t)]
        if not acts or any(index.producer_op(t) == "OneHot" for t in acts):
            continue
        for t in acts:
            roles.setdefault(t, "gemm_input")
            before = unscaled(index, t)
            if before is not None:  # smoothed: the tensor the smoothing scales keeps its range
                roles.setdefault(before, "gemm_input")
        out = node.output[0]
        roles.setdefault(out, "gemm_output")
        # The bias add after a weight GEMM (the QKV projections and dense outputs in tf2onnx graphs).
        if index.is_const(node.input[1]):
            for consumer in index.consumers[out]:
                if consumer.op_type == "Add" and any(index.is_const(t) for t in consumer.input):
                    roles.setdefault(consumer.output[0], "gemm_bias")


def _layernorms(index: GraphIndex) -> list[tuple[str, str]]:
    """(input, output) of each LayerNorm: the op, or a decomposition recognised as the elementwise region
    computed from one tensor that starts with a mean of it and has exactly one tensor leaving it."""
    found = []
    inside: set[str] = set()
    for node in index.nodes:
        if node.op_type == "LayerNormalization":
            found.append((node.input[0], node.output[0]))
            continue
        if node.op_type not in _MEAN_OPS or node.input[0] in inside:
            continue
        x = node.input[0]
        region_nodes, region_tensors = _region(index, x)
        if not any(n.op_type in _MEAN_OPS for n in region_nodes.values()):
            continue
        leaving = [t for t in region_tensors
                   if t in index.outputs or any(id(c) not in region_nodes for c in index.consumers[t])]
        if len(leaving) == 1:
            found.append((x, leaving[0]))
            inside |= region_tensors
    return found


def _region(index: GraphIndex, x: str) -> tuple[dict, set[str]]:
    """Nodes of LayerNorm ops whose non-constant inputs are all x or computed inside the region."""
    tensors = {x}
    nodes: dict = {}
    changed = True
    while changed:  # a node joins once all its inputs have (the LN's final Add waits for both branches)
        changed = False
        for t in list(tensors):
            for c in index.consumers[t]:
                if id(c) in nodes or c.op_type not in _LN_OPS or is_gemm_prescale(index, c):
                    continue
                if all(not i or i in tensors or index.is_const(i) for i in c.input):
                    nodes[id(c)] = c
                    tensors.update(c.output)
                    changed = True
    tensors.discard(x)
    return nodes, tensors


def _gelu_outputs(index: GraphIndex) -> list[str]:
    """GELU outputs: the Gelu op, or the elementwise chain after an Erf/Tanh up to the next non-elementwise op."""
    out = []
    for node in index.nodes:
        if node.op_type in ("Gelu", "FastGelu"):
            out.append(node.output[0])
        elif node.op_type in ("Erf", "Tanh"):
            t = node.output[0]
            while (len(index.consumers[t]) == 1 and index.consumers[t][0].op_type in _ELEMENTWISE
                   and not is_gemm_prescale(index, index.consumers[t][0])):
                t = index.consumers[t][0].output[0]
            if t != node.output[0]:
                out.append(t)
    return out


def select_tensors(model: onnx.ModelProto) -> dict[str, str]:
    """Tensor name -> role for every tensor that gets an INT8 range (see ROLES), in graph order."""
    index = GraphIndex(model)
    found: dict[str, str] = {}
    for t in _gelu_outputs(index):
        found.setdefault(t, "gelu")
    for node in index.nodes:
        if node.op_type == "Softmax":
            found.setdefault(node.output[0], "softmax")
    for x, y in _layernorms(index):
        found.setdefault(y, "layernorm")
        producer = index.producer.get(x)
        if producer is not None and producer.op_type == "Add" and not any(index.is_const(t) for t in producer.input):
            found.setdefault(x, "residual")
    _gemm_tensors(index, found)
    order = {}
    for node in index.nodes:
        for t in node.output:
            order.setdefault(t, len(order))
    return dict(sorted(found.items(), key=lambda kv: order.get(kv[0], -1)))
