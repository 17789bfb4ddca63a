"""Ranges of a quantization-aware (Q/DQ) model from its own scales: amax = scale x 127.

Every QuantizeLinear on an activation (its input is not a constant) gives the range of the tensor it
quantizes, so a QAT graph's ranges file and TensorRT calibration cache need no recalibration: every GEMM
input, and where the model quantizes them the attention's q, k, v and probabilities and the residual-add
inputs. A tensor several QuantizeLinear nodes read (PyTorch's Q, K and V inputs) keeps the largest, as its fused
GEMM must (``unify_scales`` makes the QAT model itself compute so, to measure what that costs). TensorRT's
ranges are symmetric; a non-zero zero point (asymmetric quantization, e.g. onnxruntime's uint8/int8
activations) is reported, since scale x 127 then covers a range shifted from the one the graph uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from bertrt.calibrate.qdq import QMAX
from bertrt.errors import BertrtError


@dataclass
class QatRanges:
    amax: dict[str, float]  # quantized activation tensor -> scale x 127
    notes: list[str] = field(default_factory=list)


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers, Constant nodes, and Identity copies of them (PyTorch shares equal scales that way)."""
    values = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:  # in graph order, so a copy comes after what it copies
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    values[node.output[0]] = a.t
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def has_qdq(model: onnx.ModelProto) -> bool:
    """Whether a graph computes INT8 through Q/DQ nodes (a QAT export, a TensorRT 11 Q/DQ graph)."""
    return any(n.op_type == "DequantizeLinear" for n in model.graph.node)


def several_scales(model: onnx.ModelProto) -> dict[str, list[float]]:
    """Activations several QuantizeLinear nodes quantize with different per-tensor scales (PyTorch quantizes the
    input of Q, K and V once per Linear) -> those scales, in graph order."""
    consts = _constants(model)
    scales: dict[str, list[float]] = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in consts and node.input[1] in consts:
            scale = numpy_helper.to_array(consts[node.input[1]])
            if scale.size == 1:
                scales.setdefault(node.input[0], []).append(float(scale.reshape(())))
    return {t: s for t, s in scales.items() if len(set(s)) > 1}


def unify_scales(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, float]]:
    """A copy of a Q/DQ model in which each activation that QuantizeLinear nodes quantize with different scales
    (``several_scales``) is quantized with the largest by all of them (and their DequantizeLinear): the model as
    its fused graph computes it, where one GEMM reads Q, K and V's input and one range, the largest, is kept
    (``qat_ranges``). Returns the copy and tensor -> the scale now used."""
    unified = {t: max(s) for t, s in several_scales(model).items()}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if not unified:
        return out, unified
    consts = _constants(out)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in out.graph.node:
        for t in node.input:
            readers.setdefault(t, []).append(node)
    made: dict[str, str] = {}
    replaced: set[str] = set()
    for node in list(out.graph.node):
        tensor = node.input[0]
        if node.op_type != "QuantizeLinear" or tensor not in unified:
            continue
        old = consts[node.input[1]]
        if float(numpy_helper.to_array(old).reshape(())) == unified[tensor]:
            continue
        if tensor not in made:  # one initializer per tensor, in the dtype and shape of the scale it replaces
            made[tensor] = f"{tensor}/unified_scale"
            value = np.full(tuple(old.dims), unified[tensor], _np_dtype(old))
            out.graph.initializer.append(numpy_helper.from_array(value, made[tensor]))
        scale_name, node.input[1] = node.input[1], made[tensor]
        replaced.add(scale_name)
        for dq in readers.get(node.output[0], []):
            if dq.op_type == "DequantizeLinear" and dq.input[1] == scale_name:
                dq.input[1] = made[tensor]
    _drop_unread(out, replaced)
    return out, unified


def _drop_unread(model: onnx.ModelProto, names: set[str]) -> None:
    """Remove the initializers, Constant and Identity nodes among ``names`` that nothing reads any more."""
    while True:
        read = {t for n in model.graph.node for t in n.input} | {o.name for o in model.graph.output}
        dead = {t for t in names if t not in read}
        nodes = [n for n in model.graph.node if n.op_type in ("Constant", "Identity") and n.output[0] in dead]
        inits = [i for i in model.graph.initializer if i.name in dead]
        if not nodes and not inits:
            return
        for n in nodes:
            model.graph.node.remove(n)
            names |= set(n.input)  # what the Identity copied may now be unread too
        for i in inits:
            model.graph.initializer.remove(i)
        names -= dead


def _np_dtype(tensor: onnx.TensorProto) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))


def qat_ranges(model: onnx.ModelProto, path="<model>") -> QatRanges:
    """amax of each activation quantized by a QuantizeLinear, keyed by the tensor the QuantizeLinear reads."""
    consts = _constants(model)
    amax: dict[str, float] = {}
    notes = []
    asymmetric = 0
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in consts:
            continue  # a constant input is a weight, not an activation
        tensor, scale_name = node.input[0], node.input[1]
        if scale_name not in consts:
            raise BertrtError(f"QuantizeLinear {node.name or tensor}: its scale {scale_name} is not a constant", path)
        scale = numpy_helper.to_array(consts[scale_name])
        if scale.size != 1:
            notes.append(f"{tensor}: per-channel activation scale ({scale.size} values) left out")
            continue
        if len(node.input) > 2 and node.input[2] in consts:
            if np.any(numpy_helper.to_array(consts[node.input[2]]) != 0):
                asymmetric += 1
        # float64 product of a float32 scale and 127 is exact (24 + 7 bits < 53).
        value = float(np.float64(scale.reshape(())) * QMAX)
        amax[tensor] = max(value, amax.get(tensor, 0.0))
    if not amax:
        raise BertrtError("no QuantizeLinear on an activation: not a Q/DQ (QAT) model", path)
    several = several_scales(model)
    if several:
        apart = max(max(s) / min(s) - 1 for s in several.values())
        notes.append(f"{len(several)} tensors are quantized with several scales, up to {apart:.1%} apart (as PyTorch "
                     f"quantizes the input of Q, K and V, one GEMM once fused): the largest is kept, e.g. "
                     f"{min(several)}; benchmarks/squad_accuracy.py row qat-unified-ort measures what that costs")
    if asymmetric:
        notes.append(f"{asymmetric} of {len(amax)} activations have a non-zero zero point (asymmetric); "
                     f"the symmetric ranges scale x 127 differ from them by the zero-point shift")
    return QatRanges(amax=amax, notes=notes)


def quantized_gemm_outputs(model: onnx.ModelProto) -> set[str]:
    """The outputs of the GEMMs a Q/DQ model quantizes (both inputs through a DequantizeLinear, a Transpose of
    the weight allowed): each MatMul/Gemm output and the bias Add after it. A model that quantizes only GEMM
    inputs has no scale for them, and TensorRT 10 runs a GEMM in INT8 only if its output has a range."""
    consts = _constants(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)

    def dequantized(t: str) -> bool:
        p = producer.get(t)
        while p is not None and p.op_type == "Transpose":
            p = producer.get(p.input[0])
        return p is not None and p.op_type == "DequantizeLinear"

    out = set()
    for n in model.graph.node:
        if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and all(dequantized(t) for t in n.input[:2]):
            out.add(n.output[0])
            out |= {c.output[0] for c in consumers.get(n.output[0], [])
                    if c.op_type == "Add" and any(t in consts for t in c.input)}
    return out


def fill_ranges(model: onnx.ModelProto, own: dict[str, float], measured: dict[str, float],
                name_map=None) -> dict[str, float]:
    """The measured ranges (keyed like ``own``: through ``name_map``) of the outputs of the GEMMs ``model``
    quantizes (``quantized_gemm_outputs``) where its own scales give none: what TensorRT 10 needs to run them
    in INT8. The model's own ranges are never replaced."""
    from bertrt.ranges import apply_name_map

    outputs = apply_name_map(dict.fromkeys(quantized_gemm_outputs(model), 0.0), name_map,
                             drop_unmapped=name_map is not None)
    return {t: v for t, v in measured.items() if t in outputs and t not in own}
