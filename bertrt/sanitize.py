"""The clean-up every graph gets before matching: fold constants, infer shapes, drop Identity/Dropout.

Exporters leave constant sub-graphs (shape arithmetic, sqrt(head_size), Identity copies of shared
weights) and inference-time no-ops (Dropout) between the ops the fusion passes look for. Folding
and removing them makes one pattern fit every exporter. Quantization nodes are the exception:
QuantizeLinear/DequantizeLinear on constant weights would fold into plain float weights and lose
the scales a Q/DQ model carries, so they are never folded. (onnx-graphsurgeon 0.6.1 already skips
them; the explicit exclusion keeps that true whatever its version does.)
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from polygraphy.backend.onnx import infer_shapes

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def sanitize(model: onnx.ModelProto, stats: dict | None = None) -> onnx.ModelProto:
    """Return a cleaned copy: Identity/Dropout removed, constants folded (Q/DQ kept), shapes inferred, sorted.

    If ``stats`` is given it is filled with what changed: ``{"Identity": n, "Dropout": n,
    "nodes_before": n, "nodes_after": n}``.
    """
    graph = gs.import_onnx(_infer(model))
    graph.toposort()
    removed = remove_noops(graph)
    graph.fold_constants(should_exclude_node=lambda node: node.op in QDQ_OPS)
    graph.cleanup().toposort()
    # Folding can make shapes known that were not (e.g. a Reshape whose shape was computed).
    graph = gs.import_onnx(_infer(_export(graph, model)))
    graph.cleanup().toposort()
    result = _export(graph, model)
    if stats is not None:
        stats.update(removed, nodes_before=len(model.graph.node), nodes_after=len(result.graph.node))
    return result


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
    src, dst = node.inputs[0], node.outputs[0]
    if dst in graph.outputs:
        # The graph output's name must stay: the producer of src writes dst directly instead.
        if src in graph.inputs or src in graph.outputs or isinstance(src, gs.Constant) or len(src.inputs) != 1:
            return False
        producer = src.inputs[0]
        for consumer in list(src.outputs):
            if consumer is not node:
                _replace(consumer.inputs, src, dst)
        node.inputs.clear()
        node.outputs.clear()
        _replace(producer.outputs, src, dst)
        return True
    for consumer in list(dst.outputs):
        _replace(consumer.inputs, dst, src)
    node.inputs.clear()
    node.outputs.clear()
    return True


def _replace(tensors: list, old: gs.Tensor, new: gs.Tensor) -> None:
    for i, tensor in enumerate(tensors):
        if tensor is old:
            tensors[i] = new


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    # Polygraphy's loader goes through a file for models past protobuf's 2 GB limit.
    return infer_shapes(model, allow_onnxruntime=False)


def _export(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    out = gs.export_onnx(graph)  # keeps ir_version, producer and opsets; not the model's metadata
    out.metadata_props.extend(like.metadata_props)
    return out
