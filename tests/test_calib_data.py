"""Calibration data: SQuAD features as inference makes them, .npz feeds and their errors."""

from pathlib import Path

import numpy as np
import onnx
import pytest

from bertrt.calibrate.data_source import FeedReader, model_inputs, model_seq, npz_feeds, squad_feeds
from bertrt.contract import DEFAULT_SEQ
from bertrt.convert.zoo import vocab_path
from bertrt.errors import BertrtError
from bertrt.run.features import example_features
from bertrt.run.squad_data import read_squad
from bertrt.run.tokenization import load_tokenizer

CALIB_JSON = Path(__file__).parents[1] / "calibrate" / "data" / "pydoc_qa_calib.json"
INPUTS = {"input_ids": [None, 16], "segment_ids": [None, 16], "input_mask": [None, 16]}


def test_squad_feeds_are_first_features_of_first_questions():
    feeds = squad_feeds(CALIB_JSON, vocab_path(), 128, num=5)
    assert len(feeds) == 5
    examples = read_squad(CALIB_JSON)
    tok = load_tokenizer(vocab_path())
    for feed, ex in zip(feeds, examples):
        first = example_features(tok, ex.question_text, ex.doc_words, max_seq_length=128)[0]
        assert all(feed[k].dtype == np.int32 and feed[k].shape == (1, 128) for k in feed)
        np.testing.assert_array_equal(feed["input_ids"][0], first.input_ids)
        np.testing.assert_array_equal(feed["segment_ids"][0], first.segment_ids)
    assert len(squad_feeds(CALIB_JSON, vocab_path(), 128, num=10_000)) == 148  # all questions, no more


def test_reader_hands_out_each_feed_once():
    feeds = [{"x": np.zeros(1)}, {"x": np.ones(1)}]
    seen = []
    reader = FeedReader(feeds, on_feed=lambda: seen.append(1))
    assert [reader.get_next()["x"][0], reader.get_next()["x"][0], reader.get_next()] == [0, 1, None]
    assert len(seen) == 2


def _save(folder, name, **arrays):
    folder.mkdir(exist_ok=True)
    np.savez(folder / name, **arrays)


def test_npz_feeds_in_name_order(tmp_path):
    ok = {k: np.full((2, 16), i, np.int32) for i, k in enumerate(INPUTS)}
    _save(tmp_path, "b.npz", **ok)
    _save(tmp_path, "a.npz", **{k: v + 1 for k, v in ok.items()})
    feeds = npz_feeds(tmp_path, INPUTS)
    assert [int(f["input_ids"][0, 0]) for f in feeds] == [1, 0]
    assert len(npz_feeds(tmp_path, INPUTS, num=1)) == 1


@pytest.mark.parametrize("arrays, problem", [
    ({"input_ids": np.zeros((1, 16), np.int32), "segment_ids": np.zeros((1, 16), np.int32)}, "no array 'input_mask'"),
    ({k: np.zeros((1, 16), np.int64) for k in INPUTS}, "int64, expected int32"),
    ({k: np.zeros((1, 8), np.int32) for k in INPUTS}, r"shape \[1, 8\], expected \[\?, 16\]"),
    ({k: np.zeros((16,), np.int32) for k in INPUTS}, "shape"),
])
def test_npz_errors_name_the_file(tmp_path, arrays, problem):
    _save(tmp_path, "bad.npz", **arrays)
    with pytest.raises(BertrtError, match=problem) as err:
        npz_feeds(tmp_path, INPUTS)
    assert err.value.path.endswith("bad.npz")


def test_npz_folder_errors(tmp_path):
    with pytest.raises(BertrtError, match="no such folder"):
        npz_feeds(tmp_path / "nope", INPUTS)
    with pytest.raises(BertrtError, match="no .npz files"):
        npz_feeds(tmp_path, INPUTS)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(BertrtError, match="not a readable .npz"):
        npz_feeds(tmp_path, INPUTS)


def test_model_seq(tiny_onnx):
    model = onnx.load(tiny_onnx)
    assert model_inputs(model)["input_ids"] == [None, 128]
    assert model_seq(model) == 128
    with pytest.raises(BertrtError, match="not 384"):
        model_seq(model, tiny_onnx, 384)
    ids = next(i for i in model.graph.input if i.name == "input_ids")
    ids.type.tensor_type.shape.dim[1].dim_param = "seq"
    assert model_seq(model, tiny_onnx) == DEFAULT_SEQ == 384  # a free axis: the same default as every stage
    assert model_seq(model, tiny_onnx, 64) == 64
    model.graph.input.remove(ids)
    with pytest.raises(BertrtError, match="no input input_ids"):
        model_seq(model, tiny_onnx)


def test_bad_squad_inputs(tmp_path):
    with pytest.raises(BertrtError, match="not found"):
        squad_feeds(tmp_path / "none.json", vocab_path(), 64)
    (tmp_path / "empty.json").write_text('{"data": []}')
    with pytest.raises(BertrtError, match="no questions"):
        squad_feeds(tmp_path / "empty.json", vocab_path(), 64)
    with pytest.raises(BertrtError, match="at least 1"):
        squad_feeds(CALIB_JSON, vocab_path(), 64, num=0)
