"""Bring an older export up to the canonical opset, and repair what that leaves in the way of the fusions.

Most BERT exports in the wild are opset 10-14 (PyTorch 1.x, keras2onnx, tf2onnx 1.x, transformers.onnx).
The fusions need opset 17 (LayerNormalization), so ``upgrade`` runs ``onnx.version_converter`` on them.
The converter keeps an opset-11 ``Softmax(axis=3)`` exact by wrapping it: ``Reshape(Softmax(Flatten(x, 3),
-1), Shape(x))`` (before opset 13 Softmax normalised over every axis from ``axis`` on). When ``axis`` is the
last axis that is just ``Softmax(x, -1)``, and ``unwrap_softmax`` writes it so (the attention pass looks for
a plain Softmax). The converter names none of the nodes it adds, and PyTorch 1.3 named none at all:
``name_nodes`` gives every node a unique name, which ONNX Runtime needs.
"""

from __future__ import annotations

import math
from collections import Counter

import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from bertrt.errors import BertrtError
from bertrt.sanitize import SHAPE_VALUE_ELEMENTS

OPSET = 17  # the canonical model's opset: the first with LayerNormalization
DEFAULT_DOMAINS = ("", "ai.onnx")


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0)


def upgrade(model: onnx.ModelProto, src, target: int = OPSET) -> tuple[onnx.ModelProto, int]:
    """(model at opset ``target`` or above, the opset it had). Models at ``target`` or above come back as they are.

    The converter copies the model into C++ and back; the large weights are not needed for that (no
    adapter reads a weight), so they stay out of it as typed inputs, and are put back afterwards.
    """
    before = default_opset(model)
    if before >= target:
        return model, before
    g = model.graph
    big = [t for t in g.initializer if math.prod(t.dims) > SHAPE_VALUE_ELEMENTS]
    big_names = {t.name for t in big}
    light_graph = helper.make_graph(
        g.node, g.name, list(g.input) + [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                         for t in big if t.name not in {i.name for i in g.input}],
        g.output, [t for t in g.initializer if t.name not in big_names], value_info=g.value_info)
    light = helper.make_model(light_graph, opset_imports=model.opset_import, ir_version=model.ir_version,
                              producer_name=model.producer_name, producer_version=model.producer_version)
    light.metadata_props.extend(model.metadata_props)
    try:
        converted = onnx.version_converter.convert_version(light, target)
    except Exception as e:  # the converter raises RuntimeError/ValueError/its own types, all with one message
        raise BertrtError(f"onnx.version_converter cannot take opset {before} to {target}: {_first_line(e)}", src)
    cg = converted.graph
    declared_inputs = {i.name for i in g.input}
    kept = [i for i in cg.input if i.name not in big_names or i.name in declared_inputs]
    del cg.input[:]
    cg.input.extend(kept)
    cg.initializer.extend(big)
    return converted, before


def unwrap_softmax(graph: gs.Graph) -> int:
    """Replace each ``Reshape(Softmax(Flatten(x, axis=r-1)), Shape(x))`` on a rank-r x by ``Softmax(x, -1)``.

    Returns how many were replaced. A Flatten on another axis (a true multi-axis softmax) is left alone.
    """
    n = 0
    for sm in [n for n in graph.nodes if n.op == "Softmax"]:
        flat = _producer(sm.inputs[0])
        if flat is None or flat.op != "Flatten" or len(sm.outputs[0].outputs) != 1:
            continue
        reshape = sm.outputs[0].outputs[0]
        x = flat.inputs[0]
        rank = None if x.shape is None else len(x.shape)
        axis = flat.attrs.get("axis", 1)
        if reshape.op != "Reshape" or reshape.inputs[0] is not sm.outputs[0] or rank is None:
            continue
        shape_of = _producer(reshape.inputs[1])
        if shape_of is None or shape_of.op != "Shape" or shape_of.inputs[0] is not x or shape_of.attrs:
            continue
        if (axis if axis >= 0 else axis + rank) != rank - 1 or sm.attrs.get("axis", -1) not in (-1, 1):
            continue
        y = reshape.outputs[0]
        reshape.outputs.clear()
        graph.nodes.append(gs.Node("Softmax", name=sm.name or None, attrs={"axis": -1}, inputs=[x], outputs=[y]))
        sm.name = ""  # the unwrapped Softmax keeps the original's name; the wrapper goes in cleanup
        n += 1
    if n:
        graph.cleanup()
    return n


def name_nodes(model: onnx.ModelProto) -> int:
    """Give every unnamed node (and every node whose name another took first) a unique name; returns how many.

    New names are ``<op>_<k>``, numbered in graph order, so the same model always gets the same names.
    """
    taken = Counter(n.name for n in model.graph.node if n.name)
    seen, counts, renamed = set(), Counter(), 0
    for node in model.graph.node:
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        while True:
            counts[node.op_type] += 1
            name = f"{node.op_type}_{counts[node.op_type]}"
            if name not in taken and name not in seen:
                break
        node.name = name
        seen.add(name)
        renamed += 1
    return renamed


def _producer(t: gs.Tensor):
    return t.inputs[0] if len(t.inputs) == 1 else None


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
