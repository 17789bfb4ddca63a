"""Writing onnx-graphsurgeon graphs without a second copy of their weights.

``gs.export_onnx`` copies every weight into a new ModelProto, and serializing that copies them again:
three copies of a BERT-Large at the moment of writing. Here the graph is exported with weightless
stand-ins for its large constants, and the file is written by streaming one weight at a time into the
protobuf wire format (or into ``<name>.data`` when the model is past protobuf's 2 GB limit).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from bertrt.onnx_io import EXTERNAL_DATA_THRESHOLD

STREAM_BYTES = 1024  # constants at least this large are streamed, not exported


def detach_weights(graph: gs.Graph, free_source: bool, min_bytes: int = STREAM_BYTES) -> None:
    """Load lazily imported constants into numpy; with ``free_source``, free the protobuf copies they were
    read from (the model the graph came from then loses its large tensors' data)."""
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) and isinstance(t._values, LazyValues) and t._values.nbytes >= min_bytes:
            proto = t._values.tensor
            t.values = t._values.load()
            for f in () if not free_source else ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
                proto.ClearField(f)


def export_weightless(graph: gs.Graph, finish=None) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """(model whose large initializers are data-less stubs, name -> array for them)."""
    big = []
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) and isinstance(t._values, np.ndarray) and t._values.nbytes >= STREAM_BYTES:
            arr = t._values
            stub = onnx.TensorProto(name=t.name, data_type=helper.np_dtype_to_tensor_dtype(arr.dtype))
            stub.dims.extend(arr.shape)
            big.append((t, arr))
            t._values = LazyValues(stub)
    try:
        model = gs.export_onnx(graph, do_type_check=False)
    finally:
        for t, arr in big:
            t._values = arr
    if finish is not None:
        finish(model)
    names = {i.name for i in model.graph.initializer}
    return model, {t.name: arr for t, arr in big if t.name in names}


def full_model(graph: gs.Graph, finish=None) -> onnx.ModelProto:
    """An ordinary in-memory ModelProto (weights copied in): for small models and tests."""
    model, weights = export_weightless(graph, finish)
    for init in model.graph.initializer:
        if init.name in weights:
            init.CopyFrom(numpy_helper.from_array(weights[init.name], init.name))
    return model


def save_graph(graph: gs.Graph, path, finish=None, external_data: bool | None = None) -> Path:
    """Export and write atomically, streaming the large weights."""
    model, weights = export_weightless(graph, finish)
    return write_streaming(model, weights, path, external_data)


def write_streaming(model: onnx.ModelProto, weights: dict[str, np.ndarray], path, external_data=None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    g = model.graph
    stubs = [t for t in g.initializer if t.name in weights]
    others = [t for t in g.initializer if t.name not in weights]
    total = sum(weights[t.name].nbytes for t in stubs)
    if external_data is None:
        external_data = total + model.ByteSize() >= EXTERNAL_DATA_THRESHOLD
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        tmp = tmpdir / path.name
        if external_data:
            data_name = f"{path.name}.data"
            with open(tmpdir / data_name, "wb") as f:
                for t in stubs:
                    arr = np.ascontiguousarray(weights[t.name])
                    offset = f.tell()
                    f.write(memoryview(arr).cast("B"))
                    t.data_location = onnx.TensorProto.EXTERNAL
                    for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(arr.nbytes))):
                        e = t.external_data.add()
                        e.key, e.value = k, v
            with open(tmp, "wb") as f:
                f.write(model.SerializeToString())
            os.replace(tmpdir / data_name, path.parent / data_name)
        else:
            _write_single_file(model, stubs, others, weights, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


def _write_single_file(model, stubs, others, weights, tmp) -> None:
    # A repeated field may appear anywhere in a message and a message's fields in any order, so the
    # weights can follow the rest of the GraphProto, and the GraphProto the rest of the ModelProto.
    g = model.graph
    del g.initializer[:]
    g.initializer.extend(others)
    graph_head = g.SerializeToString()
    sizes = [_tensor_proto(weights[t.name], t.name).ByteSize() for t in stubs]
    graph_len = len(graph_head) + sum(1 + len(_varint(n)) + n for n in sizes)
    head = onnx.ModelProto()
    head.CopyFrom(model)
    head.ClearField("graph")
    with open(tmp, "wb") as f:
        f.write(head.SerializeToString())
        f.write(bytes([(7 << 3) | 2]) + _varint(graph_len))  # ModelProto.graph
        f.write(graph_head)
        for t, n in zip(stubs, sizes):
            data = _tensor_proto(weights[t.name], t.name).SerializeToString()
            assert len(data) == n
            f.write(bytes([(5 << 3) | 2]) + _varint(n))  # GraphProto.initializer
            f.write(data)


def _tensor_proto(arr: np.ndarray, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)
