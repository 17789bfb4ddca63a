"""Explicit INT8 (TensorRT 11): QuantizeLinear/DequantizeLinear on the inputs of the weight GEMMs.

Each MatMul/Gemm with a constant weight gets
  * its activation through Q -> DQ, per-tensor symmetric: scale = amax / 127, zero point 0 (int8);
  * its weight stored as int8 with a per-output-channel DequantizeLinear, symmetric: scale = max|w| / 127.
A fused QAT model has its weights on their own grid already (int8 + DequantizeLinear with the model's scales,
from surgery's qat_weights pass): those are kept as they are, and its GEMMs with a float weight (the QA head)
stay in float, as the QAT model had them.
Everything else (LayerNorm, GELU, Softmax, the embedding gathers, the attention batched GEMMs, plugin
nodes) stays in float, which is what TensorRT 11 fuses with the BERT plugins running in FP16.
The ranges are keyed by the given graph's own tensor names, so this works on the canonical model and on a
fused graph alike. In a float16 (strongly typed) graph the scales and the dequantized tensors are float16, as
QuantizeLinear/DequantizeLinear (opset 19 on) require them to be of the activation's type.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from bertrt.calibrate.tensors import GEMM_OPS, GraphIndex, weight_gemms
from bertrt.errors import BertrtError

QMAX = 127


@dataclass
class QdqReport:
    quantized: list[str] = field(default_factory=list)  # GEMM node names
    skipped: dict[str, str] = field(default_factory=dict)  # GEMM node name -> why
    activations: dict[str, float] = field(default_factory=dict)  # activation tensor -> scale


class MissingRanges(BertrtError):
    """The ranges lack tensors the graph quantizes: a problem of the ranges file (the caller names it)."""


def symmetric_scale(amax: np.ndarray | float) -> np.ndarray:
    """amax / 127 in float32; a zero range gets scale 1 (the tensor is all zeros, any scale represents it)."""
    amax = np.asarray(amax, dtype=np.float64)
    return np.where(amax > 0, amax / QMAX, 1.0).astype(np.float32)


def quantize_weight(w: np.ndarray, axis: int, scale_dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weight, per-channel scale in ``scale_dtype``) with channels along ``axis``; values in [-127, 127].

    The weight is rounded with the scale as the graph stores it (float16 in a float16 graph): TensorRT
    dequantizes with that one, so rounding with the float32 scale would put each value off its grid by up to
    the float16 rounding of the scale."""
    w = np.asarray(w, dtype=np.float32)
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    scale = symmetric_scale(np.max(np.abs(w), axis=reduce)).astype(scale_dtype)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.astype(np.float32).reshape(shape)), -QMAX, QMAX).astype(np.int8)
    return q, scale


def weight_axis(node: gs.Node, w: np.ndarray) -> int | None:
    """The output-channel axis of a 2-D weight: MatMul B [K, N] -> 1; Gemm B with transB [N, K] -> 0."""
    if w.ndim != 2:
        return None
    if node.op == "Gemm":
        return 0 if node.attrs.get("transB", 0) else 1
    return 1


def insert_qdq(model: onnx.ModelProto, amax: Mapping[str, float], *, skip_nodes: Iterable[str] = (),
               allow_missing: bool = False) -> tuple[onnx.ModelProto, QdqReport]:
    """A copy of ``model`` with Q/DQ on every weight GEMM (see the module text); ranges keyed by its tensors.

    A GEMM whose activation has no range is an error, or with ``allow_missing`` stays in float (reported).
    """
    skip = set(skip_nodes)
    index = GraphIndex(model)
    qat = qat_weight_gemms(index)
    targets = qat or {node.name: act for node, act in weight_gemms(index)}
    missing = sorted({act for name, act in targets.items() if name not in skip and act not in amax})
    if missing and not allow_missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise MissingRanges(f"no range for {len(missing)} GEMM input tensor(s) of the model: {shown} "
                            f"(ranges computed on another graph? map the names, or allow missing ones)")
    graph = gs.import_onnx(model)
    opset = graph.opset
    if opset < 13:
        raise BertrtError(f"the model's opset {opset} has no per-channel DequantizeLinear; opset 13 or newer needed")
    float_types = (np.float32, np.float16) if opset >= 19 else (np.float32,)
    report = QdqReport()
    dq_of: dict[str, gs.Variable] = {}  # activation -> its dequantized copy, shared by the GEMMs reading it
    wq_of: dict[str, gs.Variable] = {}  # weight -> its dequantized copy

    for node in graph.nodes:
        if qat and node.op in GEMM_OPS and node.name not in qat and isinstance(node.inputs[1], gs.Constant):
            report.skipped[node.name] = "its weight is float in the QAT model"
            continue
        if node.name not in targets:
            continue
        act_name = targets[node.name]
        if node.name in skip:
            report.skipped[node.name] = "skipped on request"
            continue
        if act_name not in amax:
            report.skipped[node.name] = f"no range for its input {act_name}"
            continue
        weight = node.inputs[1]
        if node.name in qat:  # the QAT weight stays on its grid; its activation gets the Q/DQ
            ftype = weight.inputs[0].inputs[1].values.dtype  # the DequantizeLinear's scale type is its output's
            node.inputs[0] = _activation_qdq(graph, node.inputs[0], amax, dq_of, report, ftype)
            report.quantized.append(node.name)
            continue
        w = weight.values if isinstance(weight, gs.Constant) else None
        axis = weight_axis(node, w) if w is not None else None
        if axis is None or w.dtype not in float_types:
            kinds = " or ".join(np.dtype(t).name for t in float_types)
            report.skipped[node.name] = f"weight is not a 2-D {kinds} constant (opset {opset})"
            continue
        ftype = w.dtype  # the GEMM's float type: its activation has the same one
        if weight.name not in wq_of:
            q, scale = quantize_weight(w, axis, ftype)
            wq_of[weight.name] = dequantize_weight(graph, weight.name, q, scale, axis)
        node.inputs[0] = _activation_qdq(graph, node.inputs[0], amax, dq_of, report, ftype)
        node.inputs[1] = wq_of[weight.name]
        report.quantized.append(node.name)

    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    del out.opset_import[:]
    out.opset_import.extend(model.opset_import)
    return out, report


def qat_weight_gemms(index: GraphIndex) -> dict[str, str]:
    """GEMMs whose weight is a DequantizeLinear of a constant int8 tensor (a QAT grid): node -> activation."""
    out = {}
    for node in index.nodes:
        if node.op_type not in GEMM_OPS or len(node.input) < 2 or index.is_const(node.input[0]):
            continue
        dq = index.producer.get(node.input[1])
        if dq is not None and dq.op_type == "DequantizeLinear" and index.is_const(dq.input[0]):
            out[node.name] = node.input[0]
    return out


def _activation_qdq(graph: gs.Graph, act: gs.Variable, amax: Mapping[str, float], dq_of: dict, report: QdqReport,
                    ftype) -> gs.Variable:
    """The dequantized copy of a GEMM input (one per activation, shared by the GEMMs reading it)."""
    if act.name not in dq_of:
        with np.errstate(over="ignore"):
            scale = symmetric_scale(amax[act.name]).astype(ftype)
        if not np.isfinite(scale) or scale <= 0:  # a range float32 holds may be past float16's (65504 * 127)
            raise MissingRanges(f"amax of '{act.name}' is {amax[act.name]}: its scale amax / 127 is not a positive "
                                f"finite {np.dtype(ftype).name}, the graph's type")
        dq_of[act.name] = _qdq(graph, act, scale)
        report.activations[act.name] = float(scale)
    return dq_of[act.name]


def _qdq(graph: gs.Graph, act: gs.Variable, scale: np.ndarray) -> gs.Variable:
    base = act.name
    s = gs.Constant(f"{base}_qdq_scale", np.asarray(scale))
    zp = gs.Constant(f"{base}_qdq_zero_point", np.zeros((), dtype=np.int8))
    q = gs.Variable(f"{base}_quantized", dtype=np.int8, shape=act.shape)
    dq = gs.Variable(f"{base}_dequantized", dtype=s.values.dtype, shape=act.shape)
    graph.nodes.append(gs.Node("QuantizeLinear", f"{base}_QuantizeLinear", inputs=[act, s, zp], outputs=[q]))
    graph.nodes.append(gs.Node("DequantizeLinear", f"{base}_DequantizeLinear", inputs=[q, s, zp], outputs=[dq]))
    return dq


def dequantize_weight(graph: gs.Graph, name: str, q: np.ndarray, scale: np.ndarray, axis: int) -> gs.Variable:
    wq = gs.Constant(f"{name}_int8", q)
    s = gs.Constant(f"{name}_scale", scale)
    zp = gs.Constant(f"{name}_zero_point", np.zeros(scale.shape, dtype=np.int8))
    dq = gs.Variable(f"{name}_dequantized", dtype=scale.dtype, shape=list(q.shape))
    graph.nodes.append(gs.Node("DequantizeLinear", f"{name}_DequantizeLinear", attrs={"axis": axis},
                               inputs=[wq, s, zp], outputs=[dq]))
    return dq
