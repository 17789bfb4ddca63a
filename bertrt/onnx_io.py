"""Loading and saving ONNX models: clear errors for bad files, atomic writes, external data past 2 GB."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from bertrt.atomic import staging_dir, writing
from bertrt.errors import BertrtError

# protobuf cannot serialize a message of 2 GiB or more; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def check_file(path: str | os.PathLike) -> Path:
    """The path, if it names a non-empty file; a clear error otherwise."""
    path = Path(path)
    if not path.exists():
        raise BertrtError("no such file", path)
    if path.is_dir():
        raise BertrtError("is a folder, expected an ONNX file", path)
    if path.stat().st_size == 0:
        raise BertrtError("empty file, expected an ONNX model", path)
    return path


def load_model(path: str | os.PathLike, load_external_data: bool = True) -> onnx.ModelProto:
    path = check_file(path)
    try:
        model = onnx.load(os.fspath(path), load_external_data=load_external_data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise BertrtError(f"not a readable ONNX model (truncated or another format): {_first_line(e)}", path)
    except FileNotFoundError as e:
        raise BertrtError(f"external data file missing: {e.filename}", path)
    if not model.graph.node or not model.graph.output:
        raise BertrtError("not a readable ONNX model (no graph nodes or outputs; truncated or another format)", path)
    check_names(model, path)
    return model


def check_names(model: onnx.ModelProto, path=None) -> None:
    """Every name in the graph must be UTF-8 text. Protobuf hands a damaged one back as bytes (or raises when it
    is read), and everything downstream fails on it in its own way."""
    g = model.graph

    def names():
        yield from (o.domain for o in model.opset_import)
        yield from (vi.name for vi in (*g.input, *g.output, *g.value_info, *g.initializer))
        for n in g.node:
            yield from (n.name, n.op_type, n.domain, *n.input, *n.output, *(a.name for a in n.attribute))

    try:
        bad = next((name for name in names() if not isinstance(name, str)), None)
    except UnicodeDecodeError as e:
        bad = bytes(e.object)
    if bad is not None:
        raise BertrtError(f"not a readable ONNX model: the name {bad[:60]!r} is not UTF-8 text", path)


def check_written(staged: str | os.PathLike, source: str | os.PathLike | None = None) -> None:
    """onnx.checker on a model just written (from its file, so external data and 2 GB graphs work): a graph that
    references a tensor nothing makes, or an op its opset lacks, is refused before it takes its name."""
    try:
        onnx.checker.check_model(os.fspath(staged))
    except (onnx.checker.ValidationError, ValueError) as e:
        raise BertrtError(f"the graph made from it fails onnx.checker ({_first_line(e)}); nothing written",
                          source) from None


def fit_ir_version(model: onnx.ModelProto) -> onnx.ModelProto:
    """Raise the model's ir_version to the least its opsets need (opset 20 needs IR 9: a graph whose opset was raised
    keeps its exporter's IR otherwise); custom domains (trt.plugins) ask for none. In place; returns the model."""
    need = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    if model.ir_version < need:
        model.ir_version = need
    return model


def model_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the tensors stored in the model (initializers and constant attributes)."""
    total = 0
    for init in model.graph.initializer:
        total += len(init.raw_data) if init.HasField("raw_data") else init.ByteSize()
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                total += a.t.ByteSize()
    return total


def save_model(model: onnx.ModelProto, path: str | os.PathLike, external_data: bool | None = None) -> Path:
    """Write atomically. Models too big for one protobuf keep weights in ``<name>.data`` beside them."""
    path = Path(path)
    if external_data is None:
        external_data = model_bytes(model) >= EXTERNAL_DATA_THRESHOLD
    with staging_dir(path) as tmpdir, writing(path):
        tmp = tmpdir / path.name
        data_name = f"{path.name}.data"
        if external_data:
            onnx.save_model(model, os.fspath(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
            os.replace(tmpdir / data_name, path.parent / data_name)
            # The model proto now points at external data; keep the caller's proto intact.
            onnx.load_external_data_for_model(model, os.fspath(path.parent))
        else:
            onnx.save_model(model, os.fspath(tmp))
        os.replace(tmp, path)
    return path


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
