"""Writing onnx-graphsurgeon graphs without a second copy of their weights.

``gs.export_onnx`` copies every weight into a new ModelProto, and serializing that copies them again:
three copies of a BERT-Large at the moment of writing. Here the graph is exported with weightless
stand-ins for its large constants, and the file is written by streaming one weight at a time into the
protobuf wire format (or into ``<name>.data`` when the model is past protobuf's 2 GB limit).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError
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


def save_graph(graph: gs.Graph, path, finish=None, external_data: bool | None = None, check=None) -> Path:
    """Export and write atomically, streaming the large weights; ``check(staged_path)`` may refuse the file
    before it takes the destination's name."""
    model, weights = export_weightless(graph, finish)
    return write_streaming(model, weights, path, external_data, check)


def write_streaming(model: onnx.ModelProto, weights: dict[str, np.ndarray], path, external_data=None,
                    check=None) -> Path:
    from bertrt.atomic import staging_dir, writing

    path = Path(path)
    g = model.graph
    stubs = [t for t in g.initializer if t.name in weights]
    others = [t for t in g.initializer if t.name not in weights]
    total = sum(weights[t.name].nbytes for t in stubs)
    if external_data is None:
        external_data = total + model.ByteSize() >= EXTERNAL_DATA_THRESHOLD
    with staging_dir(path) as tmpdir, writing(path):
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
            if check is not None:
                check(tmp)
            os.replace(tmpdir / data_name, path.parent / data_name)
        else:
            _write_single_file(model, stubs, others, weights, tmp)
            if check is not None:
                check(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
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


def read_streaming(path) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """(model whose large initializers are data-less stubs, name -> array for them), reading one weight at a
    time: the file's bytes and a parsed copy of all its weights are never in memory together."""
    import mmap

    path = Path(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        head, graph_rest, stubs, weights = bytearray(), bytearray(), [], {}
        pos, end = 0, len(mm)
        while pos < end:
            start = pos
            field, wire, pos = _tag(mm, pos)
            value_start, pos = _skip(mm, pos, wire)
            if field != 7 or wire != 2:  # everything but ModelProto.graph
                head += mm[start:pos]
                continue
            gpos = value_start
            while gpos < pos:
                gstart = gpos
                gfield, gwire, gpos = _tag(mm, gpos)
                vstart, gpos = _skip(mm, gpos, gwire)
                if gfield == 5 and gwire == 2 and gpos - vstart >= STREAM_BYTES:  # a large initializer
                    tensor = onnx.TensorProto.FromString(mm[vstart:gpos])
                    if tensor.data_location == onnx.TensorProto.EXTERNAL:
                        graph_rest += mm[gstart:gpos]
                        continue
                    weights[tensor.name] = _array(tensor)
                    stub = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type)
                    stub.dims.extend(tensor.dims)
                    stubs.append(stub)
                    del tensor
                else:
                    graph_rest += mm[gstart:gpos]
    model = onnx.ModelProto.FromString(bytes(head))
    model.graph.ParseFromString(bytes(graph_rest))
    model.graph.initializer.extend(stubs)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        _read_external(model, path.parent, weights)
    return model, weights


def _array(tensor: onnx.TensorProto) -> np.ndarray:
    try:
        return numpy_helper.to_array(tensor)
    except (ValueError, TypeError) as e:  # data that does not fit the declared type and shape
        raise ValueError(f"initializer {tensor.name}: its data does not fit its type and shape ({e})") from None


def _read_external(model, folder: Path, weights) -> None:
    from onnx.external_data_helper import ExternalDataInfo

    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = ExternalDataInfo(t)
        dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
        count = int(np.prod(t.dims)) if t.dims else 1
        with open(folder / info.location, "rb") as f:
            f.seek(info.offset or 0)
            weights[t.name] = np.fromfile(f, dtype=dtype, count=count).reshape(tuple(t.dims))
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT


def import_streaming(path) -> gs.Graph:
    """A graphsurgeon graph (with inferred shapes) of the model at path, its weights read one at a time."""
    from bertrt.errors import BertrtError
    from bertrt.onnx_io import check_file, check_names
    from bertrt.sanitize import import_with_shapes

    path = check_file(path)
    try:
        model, weights = read_streaming(path)
    except FileNotFoundError as e:
        raise BertrtError(f"external data file missing: {e.filename}", path)
    except Exception as e:  # protobuf and the wire reader fail in several ways on a damaged file
        raise BertrtError(f"not a readable ONNX model (truncated or another format): {_why(e)}", path) from None
    if not model.graph.node or not model.graph.output:
        raise BertrtError("not a readable ONNX model (no graph nodes or outputs; truncated or another format)", path)
    check_names(model, path)
    graph = import_with_shapes(model)
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) and t.name in weights:
            t.values = weights[t.name]
    return graph


def read_skeleton(path) -> onnx.ModelProto:
    """The model without its tensor data: graph inputs, outputs and value_info, every node with its attributes,
    where initializers and TENSOR attributes keep their name, type and dims but no values. What a command needs
    to plan from a 2 GB graph (plugin fields, dtypes, table sizes), read in milliseconds."""
    import mmap

    from bertrt.errors import BertrtError
    from bertrt.onnx_io import check_file

    path = check_file(path)
    model = onnx.ModelProto()
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            for field, wire, start, end in _all_fields(mm, 0, len(mm)):
                if field == 1 and wire == 0:  # ModelProto.ir_version
                    model.ir_version = _varint_at(mm, start)[0]
                elif field == 7 and wire == 2:  # ModelProto.graph
                    _skeleton_graph(mm, start, end, model.graph)
                elif field == 8 and wire == 2:  # ModelProto.opset_import
                    model.opset_import.add().ParseFromString(mm[start:end])
    except (ValueError, IndexError, DecodeError, UnicodeDecodeError) as e:
        raise BertrtError(f"not a readable ONNX model (truncated or another format): {_why(e)}", path) from None
    if not model.graph.node or not model.graph.output:
        raise BertrtError("not a readable ONNX model (no graph nodes or outputs; truncated or another format)", path)
    return model


def _skeleton_graph(mm, start, end, graph) -> None:
    for field, wire, s, e in _all_fields(mm, start, end):
        if wire != 2:
            continue
        if field == 1:  # node: everything but the data of its tensor attributes
            node = graph.node.add()
            rest = bytearray()
            for f, w, a, b in _all_fields(mm, s, e, with_tag=True):
                if f == 5 and w == 2:  # NodeProto.attribute
                    node.attribute.append(_light_attribute(mm, *_value_span(mm, a, b)))
                else:
                    rest += mm[a:b]
            node.MergeFromString(bytes(rest))
        elif field == 5:  # initializer: name, type and dims
            graph.initializer.append(_tensor_stub(mm, s, e))
        elif field in (11, 12, 13):  # input, output, value_info
            {11: graph.input, 12: graph.output, 13: graph.value_info}[field].add().ParseFromString(mm[s:e])


def _light_attribute(mm, start, end) -> onnx.AttributeProto:
    attr, rest, tensor = onnx.AttributeProto(), bytearray(), None
    for f, w, a, b in _all_fields(mm, start, end, with_tag=True):
        if f == 5 and w == 2:  # AttributeProto.t
            tensor = _tensor_stub(mm, *_value_span(mm, a, b))
        else:
            rest += mm[a:b]
    attr.MergeFromString(bytes(rest))
    if tensor is not None:
        attr.t.CopyFrom(tensor)
    return attr


def _tensor_stub(mm, start, end) -> onnx.TensorProto:
    """A TensorProto with the name, data type and dims of the one at mm[start:end], and no data."""
    t = onnx.TensorProto()
    for f, w, a, b in _all_fields(mm, start, end):
        if f == 1 and w == 0:  # dims, unpacked
            t.dims.append(_varint_at(mm, a)[0])
        elif f == 1 and w == 2:  # dims, packed
            pos = a
            while pos < b:
                value, pos = _varint_at(mm, pos)
                t.dims.append(value)
        elif f == 2 and w == 0:
            t.data_type = _varint_at(mm, a)[0]
        elif f == 8 and w == 2:
            t.name = mm[a:b].decode()
    return t


def _why(e: Exception) -> str:
    """What went wrong reading a damaged file, in words (the exception's class alone says nothing to a user)."""
    if isinstance(e, IndexError):
        return "the file ends inside a field"
    if isinstance(e, UnicodeDecodeError):
        return f"a name is not UTF-8 text (byte {e.object[e.start:e.start + 1].hex()} at {e.start})"
    if isinstance(e, DecodeError):
        return "protobuf cannot parse it as an ONNX ModelProto"
    text = str(e).strip().splitlines()
    return text[0] if text else f"{type(e).__name__} while reading it"


def _all_fields(buf, pos: int, end: int, with_tag: bool = False):
    """(field number, wire type, value start, field end) of each field of the message in buf[pos:end]; with
    ``with_tag`` the span starts at the field's tag (the whole field, to copy it as it is)."""
    while pos < end:
        tag_start = pos
        field, wire, pos = _tag(buf, pos)
        start, pos = _skip(buf, pos, wire)
        if pos > end:
            raise ValueError("a field runs past the end of its message")
        if field == 0:
            raise ValueError("field number 0")
        yield field, wire, tag_start if with_tag else start, pos


def _value_span(buf, tag_start: int, end: int) -> tuple[int, int]:
    """(value start, end) of the length-delimited field whose tag starts at tag_start."""
    _field, wire, pos = _tag(buf, tag_start)
    return _skip(buf, pos, wire)[0], end


def _varint_at(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _tag(buf, pos: int) -> tuple[int, int, int]:
    tag, pos = _varint_at(buf, pos)
    return tag >> 3, tag & 7, pos


def _skip(buf, pos: int, wire: int) -> tuple[int, int]:
    """(start of the field's value, end of the field) for a field whose tag ends at pos."""
    if wire == 0:
        return pos, _varint_at(buf, pos)[1]
    if wire == 1:
        return pos, pos + 8
    if wire == 5:
        return pos, pos + 4
    if wire == 2:
        length, start = _varint_at(buf, pos)
        return start, start + length
    raise ValueError(f"unsupported protobuf wire type {wire}")
