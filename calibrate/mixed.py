"""Mixed precision: which weight GEMMs of a BERT graph form which part of the encoder, and how to keep a part
in float.

MiniLM's LayerNorm outputs carry outlier channels and its GELU outputs a long tail, so INT8 on every GEMM
loses too much (benchmarks/int8_accuracy.py); smoothing (calibrate/smooth.py) recovers most of it, and leaving
the GEMMs after GELU (ffn2) in float the rest.
* TensorRT 11 (explicit): those GEMMs get no Q/DQ (``float_gemms`` -> insert_qdq ``skip_nodes``).
* TensorRT 10 (implicit): a layer runs in float when a tensor it reads or writes has no range, so
  ``float_gemm_drops`` names the canonical ranges to leave out of the cache: the GEMM's input when only
  float GEMMs read it and it is a GELU output (ffn2), otherwise the GEMM's output and its bias add (ffn1,
  head). Never a range an INT8 plugin reads: the QKV and attention-output GEMMs are refused, since
  their inputs and outputs are the INT8 plugins' own.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx

from bertrt.calibrate.tensors import GraphIndex, select_tensors, unscaled, weight_gemms
from bertrt.errors import BertrtError
from bertrt.plugins.nodes import QKV_TO_CONTEXT

GEMM_GROUPS = ("qkv", "attn_out", "ffn1", "ffn2", "head")
IMPLICIT_FLOAT_GROUPS = ("ffn1", "ffn2", "head")  # the groups TensorRT 10 can keep in float without the plugins
# Ops looked through when following a GEMM's input back (layout only) or its output forward (and elementwise).
_LAYOUT = frozenset({"Reshape", "Transpose", "Cast", "QuantizeLinear", "DequantizeLinear", "Squeeze", "Unsqueeze",
                     "Flatten"})
# Split and Concat: a QA head's logits split into start and end, and `convert onnx` joins them again (logits).
_FORWARD = _LAYOUT | {"Add", "Mul", "Div", "Split", "Concat"}
_GELU = frozenset({"Gelu", "FastGelu", "Erf", "Tanh"})
_DEPTH = 8


def gemm_groups(model: onnx.ModelProto) -> dict[str, str]:
    """Weight GEMM node name -> its part of the encoder (GEMM_GROUPS), from the graph's structure, for a
    canonical or a fused graph: what its input comes from (a GELU: ffn2; the attention context: attn_out) or
    where its output goes (a GELU: ffn1; attention: qkv; a graph output: head)."""
    index = GraphIndex(model)
    gelu_outputs = {t for t, role in select_tensors(model).items() if role == "gelu"}

    def back(t, depth=0):
        node = index.producer.get(t)
        if node is None or depth > _DEPTH:
            return None
        return back(node.input[0], depth + 1) if node.op_type in _LAYOUT else node.op_type

    def ahead(t, depth=0):
        found = {"output"} if t in index.outputs else set()
        for c in index.consumers[t]:
            if c.op_type in _FORWARD and depth < _DEPTH:
                for out in c.output:
                    found |= ahead(out, depth + 1)
            else:
                found.add(c.op_type)
        return found

    groups = {}
    for node, act in weight_gemms(index):
        act = unscaled(index, act) or act  # smoothed: the group is that of what the smoothing scales
        src = None if act in gelu_outputs else back(act)
        dst = ahead(node.output[0])
        if act in gelu_outputs or src in _GELU:
            groups[node.name] = "ffn2"
        elif src in (QKV_TO_CONTEXT, "MatMul"):  # the context: the plugin, or softmax(QK^T) V
            groups[node.name] = "attn_out"
        elif dst & _GELU:  # before qkv: a decomposed GELU's output reaches the next GEMM
            groups[node.name] = "ffn1"
        elif dst & {QKV_TO_CONTEXT, "Softmax", "MatMul"}:
            groups[node.name] = "qkv"
        elif "output" in dst:
            groups[node.name] = "head"
    return groups


def _check(groups: Iterable[str], allowed=GEMM_GROUPS) -> set[str]:
    groups = set(groups)
    unknown = groups - set(GEMM_GROUPS)
    if unknown:
        raise BertrtError(f"unknown GEMM group(s) {', '.join(sorted(unknown))}; choose from {', '.join(GEMM_GROUPS)}")
    refused = groups - set(allowed)
    if refused:
        raise BertrtError(f"GEMM group(s) {', '.join(sorted(refused))} cannot be left in float by dropping ranges: "
                          f"their inputs and outputs are INT8 plugins' tensors; choose from {', '.join(allowed)}")
    return groups


def float_gemms(model: onnx.ModelProto, groups: Iterable[str]) -> list[str]:
    """Names of the weight GEMMs of ``model`` in the given groups (for insert_qdq ``skip_nodes``)."""
    groups = _check(groups)
    return sorted(name for name, g in gemm_groups(model).items() if g in groups)


def float_gemm_drops(model: onnx.ModelProto, groups: Iterable[str]) -> set[str]:
    """Tensors of ``model`` (canonical) whose ranges to leave out so TensorRT 10 runs the groups' GEMMs in
    float (see the module text)."""
    groups = _check(groups, IMPLICIT_FLOAT_GROUPS)
    index = GraphIndex(model)
    chosen = {name for name, g in gemm_groups(model).items() if g in groups}
    gelu_outputs = {t for t, role in select_tensors(model).items() if role == "gelu"}
    drops = set()
    for node, act in weight_gemms(index):
        if node.name not in chosen:
            continue
        if act in gelu_outputs and all(c.name in chosen for c in index.consumers[act]):
            drops.add(act)
            continue
        out = node.output[0]
        drops.add(out)
        for c in index.consumers[out]:  # the bias add, which TensorRT fuses into the GEMM
            if c.op_type == "Add" and any(index.is_const(i) for i in c.input):
                drops.add(c.output[0])
    return drops
