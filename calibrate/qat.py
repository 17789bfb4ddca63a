"""Ranges of a quantization-aware (Q/DQ) model from its own scales: amax = scale x 127.

Every QuantizeLinear on an activation (its input is not a constant) gives the range of the tensor it
quantizes, so a QAT graph's ranges file and TensorRT calibration cache need no recalibration: every GEMM
input, and where the model quantizes them the attention's q, k, v and probabilities and the residual-add
inputs. A tensor several QuantizeLinear nodes read (PyTorch's Q, K and V inputs) keeps the largest. TensorRT's
ranges are symmetric; a non-zero zero point (asymmetric quantization, e.g. onnxruntime's uint8/int8
activations) is reported, since scale x 127 then covers a range shifted from the one the graph uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from bertrt.errors import BertrtError

QMAX = 127


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


def qat_ranges(model: onnx.ModelProto, path="<model>") -> QatRanges:
    """amax of each activation quantized by a QuantizeLinear, keyed by the tensor the QuantizeLinear reads."""
    consts = _constants(model)
    amax: dict[str, float] = {}
    notes = []
    asymmetric = 0
    several: set[str] = set()
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
        if tensor in amax and amax[tensor] != value:
            several.add(tensor)
        amax[tensor] = max(value, amax.get(tensor, 0.0))
    if not amax:
        raise BertrtError("no QuantizeLinear on an activation: not a Q/DQ (QAT) model", path)
    if several:
        notes.append(f"{len(several)} tensors are quantized with several scales (as PyTorch quantizes the input of "
                     f"Q, K and V, one GEMM once fused): the largest is kept, e.g. {min(several)}")
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
