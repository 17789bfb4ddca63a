"""The clean-up every graph gets before matching: fold constants, infer shapes, drop Identity/Dropout.

Exporters leave constant sub-graphs (shape arithmetic, sqrt(head_size), Identity copies of shared
weights) and inference-time no-ops (Dropout) between the ops the fusion passes look for. Folding
and removing them makes one pattern fit every exporter. Quantization nodes are the exception:
QuantizeLinear/DequantizeLinear on constant weights would fold into plain float weights and lose
the scales a Q/DQ model carries, so they are never folded. (onnx-graphsurgeon 0.6.1 already skips
them; the explicit exclusion keeps that true whatever its version does.)
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper
from onnx_graphsurgeon.importers.onnx_importer import get_onnx_tensor_dtype, get_onnx_tensor_shape

# graphsurgeon's own warnings (constant folding fallbacks) are noise next to the passes' reports.
gs.logger.G_LOGGER.colors = False
gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
# Initializers up to this many elements keep their values for shape inference (shape-like tensors).
SHAPE_VALUE_ELEMENTS = 4096


def sanitize(model: onnx.ModelProto, stats: dict | None = None) -> onnx.ModelProto:
    """Return a cleaned copy: Identity/Dropout removed, constants folded (Q/DQ kept), shapes inferred, sorted.

    If ``stats`` is given it is filled with what changed: ``{"Identity": n, "Dropout": n,
    "nodes_before": n, "nodes_after": n}``.
    """
    graph = import_with_shapes(model)
    graph.toposort()
    removed = remove_noops(graph)
    graph.fold_constants(should_exclude_node=lambda node: node.op in QDQ_OPS)
    graph.cleanup().toposort()
    result = gs.export_onnx(graph)  # keeps ir_version, producer and opsets; not the model's metadata
    result.metadata_props.extend(model.metadata_props)
    # Folding can make shapes known that were not (e.g. a Reshape whose shape was computed).
    _store_shapes(result, infer_shapes(result))
    if stats is not None:
        stats.update(removed, nodes_before=len(model.graph.node), nodes_after=len(result.graph.node))
    return result


def import_with_shapes(model: onnx.ModelProto) -> gs.Graph:
    """onnx-graphsurgeon's graph of ``model`` with every shape ONNX shape inference can give."""
    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    edges = {t.name for t in graph.inputs}
    for info in infer_shapes(model):
        tensor = tensors.get(info.name)
        if isinstance(tensor, gs.Variable) and info.name not in edges and info.type.HasField("tensor_type"):
            tensor.dtype = get_onnx_tensor_dtype(info)
            tensor.shape = get_onnx_tensor_shape(info)
    return graph


def infer_shapes(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """ONNX shape inference on a copy without the weights; returns value_info and outputs.

    Shapes only need the weights' shapes, and serializing BERT-Large's weights into the shape
    inferencer costs seconds and gigabytes (and fails past protobuf's 2 GB), so large initializers
    go in as typed graph inputs. Small ones stay: they carry Reshape targets, axes and the like.
    """
    g = model.graph
    declared = {i.name for i in g.input}
    small, typed = [], []
    for init in g.initializer:
        if math.prod(init.dims) <= SHAPE_VALUE_ELEMENTS:
            small.append(init)
        elif init.name not in declared:
            typed.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    light_graph = helper.make_graph(g.node, g.name, list(g.input) + typed, g.output, small,
                                    value_info=g.value_info, sparse_initializer=g.sparse_initializer)
    light = helper.make_model(light_graph, opset_imports=model.opset_import, functions=model.functions,
                              ir_version=model.ir_version)
    try:
        inferred = onnx.shape_inference.infer_shapes(light)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        return list(g.value_info) + list(g.output)  # what the exporter declared is still right
    return list(inferred.graph.value_info) + list(inferred.graph.output)


def _store_shapes(model: onnx.ModelProto, infos: list[onnx.ValueInfoProto]) -> None:
    outputs = {o.name: o for o in model.graph.output}
    inner = [i for i in infos if i.name not in outputs]
    del model.graph.value_info[:]
    model.graph.value_info.extend(inner)
    for info in infos:
        out = outputs.get(info.name)
        if out is not None and not out.type.tensor_type.HasField("shape"):
            out.type.CopyFrom(info.type)


def remove_noops(graph: gs.Graph) -> dict[str, int]:
    """Bypass Identity nodes and inference-mode Dropout nodes; returns how many of each went."""
    removed = {"Identity": 0, "Dropout": 0}
    for node in list(graph.nodes):
        if node.op not in removed or not _is_noop(node):
            continue
        if _bypass(graph, node):
            removed[node.op] += 1
    graph.cleanup()
    return removed


def _is_noop(node: gs.Node) -> bool:
    if node.op == "Identity":
        return True
    # Dropout passes its input through unless training_mode is given as a constant True (or unknown).
    if len(node.outputs) > 1 and node.outputs[1].outputs:
        return False  # its mask output is used
    if len(node.inputs) >= 3 and node.inputs[2].name:
        mode = node.inputs[2]
        return isinstance(mode, gs.Constant) and not bool(np.asarray(mode.values).item())
    return True


def _bypass(graph: gs.Graph, node: gs.Node) -> bool:
    from bertrt.surgery.graph_utils import replace_uses

    # A graph output keeps its name (the Identity's input takes it); not possible from a graph input or constant.
    if not replace_uses(graph, node.outputs[0], node.inputs[0]):
        return False
    node.inputs.clear()
    node.outputs.clear()
    return True
