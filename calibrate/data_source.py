"""Calibration inputs: SQuAD questions made into the features inference uses, or a folder of .npz feeds.

As NVIDIA's BERT demo calibrated: the first feature of each of the first ``num`` examples (doc stride 128,
max query length 64, uncased WordPiece), one sample per batch, at the model's sequence length.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

from bertrt.contract import CANONICAL_INPUTS, resolve_seq
from bertrt.errors import BertrtError
from bertrt.run.features import DOC_STRIDE, MAX_QUERY_LENGTH, example_features, stack_features
from bertrt.run.squad_data import read_squad
from bertrt.run.tokenization import load_tokenizer

DEFAULT_NUM = 100

Feed = dict[str, np.ndarray]


def model_inputs(model: onnx.ModelProto) -> dict[str, list]:
    """Graph input name -> shape (an int for a fixed axis, None for a free one); initializers excluded."""
    inits = {i.name for i in model.graph.initializer}
    out = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        out[inp.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return out


def model_seq(model: onnx.ModelProto, path: str | os.PathLike = "<model>", seq: int | None = None) -> int:
    """The sequence length to calibrate at: the model's fixed one, else ``seq``, else ``DEFAULT_SEQ``."""
    inputs = model_inputs(model)
    missing = [n for n in CANONICAL_INPUTS if n not in inputs]
    if missing:
        raise BertrtError(f"not a canonical BERT model: no input {', '.join(missing)} "
                          f"(inputs: {', '.join(inputs) or 'none'}); convert it with `bertrt convert` first", path)
    shape = inputs["input_ids"]
    fixed = shape[1] if len(shape) == 2 else None
    if len(shape) != 2:
        raise BertrtError(f"input_ids has rank {len(shape)}, expected [batch, seq]", path)
    return resolve_seq(fixed, seq, path)


def first_features(squad_json: str | os.PathLike, vocab: str | os.PathLike, seq: int, num: int, *,
                   doc_stride: int = DOC_STRIDE, max_query_length: int = MAX_QUERY_LENGTH,
                   what: str = "calibration samples") -> list:
    """The first feature (as inference makes it) of each of the first ``num`` questions of a SQuAD-format file."""
    if num < 1:
        raise BertrtError(f"number of {what} must be at least 1, got {num}")
    examples = read_squad(squad_json, check_answers=False)  # refuses a file without questions
    tokenizer = load_tokenizer(vocab)
    return [example_features(tokenizer, ex.question_text, ex.doc_words, max_seq_length=seq, doc_stride=doc_stride,
                             max_query_length=max_query_length, example_index=i)[0]
            for i, ex in enumerate(examples[:num])]


def squad_feeds(squad_json: str | os.PathLike, vocab: str | os.PathLike, seq: int, num: int = DEFAULT_NUM, *,
                doc_stride: int = DOC_STRIDE, max_query_length: int = MAX_QUERY_LENGTH) -> list[Feed]:
    """Batch-1 feeds of the first feature of each of the first ``num`` questions of a SQuAD-format file."""
    return [stack_features([f]) for f in first_features(squad_json, vocab, seq, num, doc_stride=doc_stride,
                                                         max_query_length=max_query_length)]


def npz_feeds(folder: str | os.PathLike, inputs: dict[str, list], num: int | None = None) -> list[Feed]:
    """Feeds from ``*.npz`` files (sorted by name), each holding one int32 [batch, seq] array per model input."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BertrtError("no such folder of .npz feeds", folder)
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise BertrtError("no .npz files in the folder", folder)
    if num is not None:
        files = files[:num]
    return [_read_npz(f, inputs) for f in files]


def _read_npz(path: Path, inputs: dict[str, list]) -> Feed:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise BertrtError(f"not a readable .npz file: {e}", path) from None
    feed = {}
    for name, shape in inputs.items():
        if name not in arrays:
            raise BertrtError(f"no array '{name}' (has: {', '.join(sorted(arrays)) or 'none'})", path)
        a = arrays[name]
        if a.dtype != np.int32:
            raise BertrtError(f"'{name}' is {a.dtype}, expected int32", path)
        if a.ndim != len(shape) or any(d is not None and d != s for d, s in zip(shape, a.shape)):
            want = "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
            raise BertrtError(f"'{name}' has shape {list(a.shape)}, expected {want}", path)
        feed[name] = a
    batches = {a.shape[0] for a in feed.values()}
    if len(batches) > 1:
        raise BertrtError(f"inputs disagree on the batch size: {sorted(batches)}", path)
    return feed


class FeedReader(CalibrationDataReader):
    """onnxruntime's calibration data reader over a list of feeds; ``on_feed`` is called after each one."""

    def __init__(self, feeds: Iterable[Feed], on_feed: Callable[[], None] | None = None):
        self._feeds = list(feeds)
        self._next = 0
        self._on_feed = on_feed

    def get_next(self) -> Feed | None:
        if self._next >= len(self._feeds):
            return None
        feed = self._feeds[self._next]
        self._next += 1
        if self._on_feed is not None:
            self._on_feed()
        return feed

    def __len__(self) -> int:
        return len(self._feeds)

    def rewind(self) -> None:
        self._next = 0
