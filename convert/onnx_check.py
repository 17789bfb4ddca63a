"""What ``convert onnx`` checks before it believes a model: the source is valid ONNX, the result runs.

An exporter can write a model that onnx.checker accepts and nothing can run (a Concat of tensors of
different ranks, a shape computed from a stale constant). So the converted model is run once on ONNX
Runtime, on a small valid batch, before it is written, and its output must have the contract's shape.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from bertrt.contract import INPUT_MASK
from bertrt.errors import BertrtError
from bertrt.ort_check import PROBE_SEQ, quiet_options
from bertrt.ort_check import ort_message as _ort_message
from bertrt.sanitize import SHAPE_VALUE_ELEMENTS


def check_source(model: onnx.ModelProto, src: Path) -> None:
    """onnx.checker on the source: an op its opset does not have, a node reading a tensor nothing makes.

    The checker runs on a copy without the large weights (typed inputs stand for them; no check reads a
    weight's values). An output declared without a shape, which the checker refuses and ONNX Runtime runs,
    is let through: intake infers every output shape again anyway."""
    g = model.graph
    declared = {i.name for i in g.input}
    big = [t for t in g.initializer if math.prod(t.dims) > SHAPE_VALUE_ELEMENTS]
    big_names = {t.name for t in big}
    outputs = [onnx.ValueInfoProto.FromString(o.SerializeToString()) for o in g.output]
    for o in outputs:
        if o.type.HasField("tensor_type") and not o.type.tensor_type.HasField("shape"):
            o.type.tensor_type.shape.SetInParent()
    light = helper.make_model(
        helper.make_graph(g.node, g.name, list(g.input) + [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                                            for t in big if t.name not in declared],
                          outputs, [t for t in g.initializer if t.name not in big_names], value_info=g.value_info,
                          sparse_initializer=g.sparse_initializer),
        opset_imports=model.opset_import, ir_version=model.ir_version, functions=model.functions)
    try:
        onnx.checker.check_model(light)
    except (onnx.checker.ValidationError, ValueError) as e:
        raise BertrtError(f"not a valid ONNX model: {_first_line(e)}", src)
    for t in big:  # what the checker would have said of them: their bytes must fit their type and shape
        size = _item_size(t.data_type)
        if t.HasField("raw_data") and size and len(t.raw_data) != math.prod(t.dims) * size:
            raise BertrtError(f"not a valid ONNX model: initializer {t.name} holds {len(t.raw_data)} bytes, its type "
                              f"{onnx.TensorProto.DataType.Name(t.data_type)} and shape {list(t.dims)} need "
                              f"{math.prod(t.dims) * size}", src)


def _item_size(data_type: int) -> int | None:
    """Bytes per element in raw_data, or None for types not stored one whole byte-sized item each (strings,
    4-bit types) or unknown here."""
    if data_type in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING, onnx.TensorProto.INT4,
                     onnx.TensorProto.UINT4, onnx.TensorProto.FLOAT4E2M1):
        return None
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None


def check_inference_mode(model: onnx.ModelProto, src: Path) -> None:
    """A model exported in training mode drops values at random (Dropout with training_mode set): refuse it."""
    g = model.graph
    consts = {t.name: t for t in g.initializer}
    consts.update({n.output[0]: a.t for n in g.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"})
    training = [n for n in g.node if n.op_type == "Dropout" and len(n.input) > 2 and n.input[2] in consts
                and bool(np.asarray(onnx.numpy_helper.to_array(consts[n.input[2]])).any())]
    if training:
        raise BertrtError(f"exported in training mode: {len(training)} Dropout node(s) drop values at random "
                          f"({training[0].name or training[0].output[0]}); export the model after model.eval()", src)


def probe_shape(model: onnx.ModelProto, seq: int | None = None) -> tuple[int, int]:
    """(batch, seq) to run a canonical model at: its own fixed dims, else 2 and ``seq`` or PROBE_SEQ."""
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in model.graph.input[0].type.tensor_type.shape.dim]
    return dims[0] or 2, dims[1] or seq or PROBE_SEQ


def run_once(model: onnx.ModelProto, src: Path, seq: int | None = None, path: Path | None = None) -> None:
    """Run the canonical model once on ONNX Runtime (from ``path`` if it is saved there, for models too
    large for one protobuf) and check its output's shape; a model that cannot run is refused."""
    import onnxruntime as ort

    B, S = probe_shape(model, seq)
    feeds = {i.name: (np.ones if i.name == INPUT_MASK else np.zeros)((B, S), np.int32) for i in model.graph.input}
    options = quiet_options(optimize=False)
    try:
        session = ort.InferenceSession(os.fspath(path) if path is not None else model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        (out,) = session.run(None, feeds)
    except Exception as e:  # ONNX Runtime raises its own Fail/InvalidGraph/RuntimeException types
        raise BertrtError(f"ONNX Runtime cannot run the converted model at [batch {B}, seq {S}]: "
                          f"{_ort_message(e)}", src)
    output = model.graph.output[0]
    last = output.type.tensor_type.shape.dim[2]
    want = (B, S, last.dim_value if last.HasField("dim_value") else out.shape[-1] if out.ndim == 3 else None)
    if out.shape != want:
        raise BertrtError(f"the converted model computes {output.name} of shape {list(out.shape)} at [batch {B}, "
                          f"seq {S}], expected {list(want)}", src)


def source_output_shapes(model: onnx.ModelProto, src: Path) -> dict[str, tuple]:
    """Run the source once (zeros for ids and segments, ones for the mask) and return each output's shape:
    for the outputs shape inference could not follow (a Reshape to a computed shape, as tf2onnx writes it)."""
    import onnxruntime as ort

    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for i in model.graph.input:
        if i.name in inits:
            continue
        tt = i.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        shape = [dims[0] or 2, dims[1] or PROBE_SEQ] + [d or 1 for d in dims[2:]] if len(dims) >= 2 else dims
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        fill = np.ones if "mask" in i.name.lower() else np.zeros
        feeds[i.name] = fill(shape, dtype)
    options = quiet_options(optimize=False)
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        values = session.run(None, feeds)
    except Exception as e:  # ONNX Runtime's own error types
        raise BertrtError(f"ONNX Runtime cannot run the model to find its output shapes: {_ort_message(e)}", src)
    return {o.name: v.shape for o, v in zip(session.get_outputs(), values)}




def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
