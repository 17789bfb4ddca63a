"""ONNX intake: every exporter's BERT lands on the canonical contract and computes exactly the same."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bertrt.convert.onnx_intake import convert_onnx
from bertrt.errors import BertrtError

FIXTURES = Path(__file__).parent / "fixtures"
EXPORTS = ["hf_qa_eager", "hf_qa_sdpa", "torch_dynamo_qa", "torch_legacy_bert", "qat_qdq"]
CANONICAL_INPUTS = ["input_ids", "segment_ids", "input_mask"]
SOURCE_INPUTS = ["input_ids", "token_type_ids", "attention_mask"]


def session(path) -> ort.InferenceSession:
    # No ORT graph optimizations: each graph runs as written, so equal graphs give equal bits.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def random_batch(batch, seq, seed, vocab=128):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (batch, seq), dtype=np.int64)
    types = (np.arange(seq) >= seq // 2).astype(np.int64)[None].repeat(batch, 0)
    mask = np.ones((batch, seq), np.int64)
    mask[-1, seq - seq // 3:] = 0  # padding in the last row
    return ids, types, mask


def io_signature(model):
    def sig(vi):
        t = vi.type.tensor_type
        return vi.name, t.elem_type, [d.dim_param or d.dim_value for d in t.shape.dim]

    return [sig(i) for i in model.graph.input], [sig(o) for o in model.graph.output]


@pytest.mark.parametrize("name", EXPORTS)
def test_exports_become_canonical_and_equal(name, tmp_path):
    src, dst = FIXTURES / f"{name}.onnx", tmp_path / "model.onnx"
    report = convert_onnx(src, dst)
    inputs, outputs = io_signature(onnx.load(dst))
    assert inputs == [(n, TensorProto.INT32, ["batch", "seq"]) for n in CANONICAL_INPUTS]
    assert outputs == [("logits", TensorProto.FLOAT, ["batch", "seq", 2])]
    assert report["renamed"] == {"token_type_ids": "segment_ids", "attention_mask": "input_mask"}
    assert report["cast"] == dict.fromkeys(CANONICAL_INPUTS, "int64")
    assert report["output"] == "logits"
    assert report["joined"] == ([] if name == "torch_legacy_bert" else ["start_logits", "end_logits"])

    before, after = session(src), session(dst)
    for batch, seq, seed in [(2, 24, 0), (1, 7, 1), (3, 64, 2)]:
        ids, types, mask = random_batch(batch, seq, seed)
        want = before.run(None, dict(zip(SOURCE_INPUTS, (ids, types, mask))))
        want = want[0] if len(want) == 1 else np.stack(want, axis=-1)  # (start, end) -> [..., 2]
        got, = after.run(None, dict(zip(CANONICAL_INPUTS, (a.astype(np.int32) for a in (ids, types, mask)))))
        assert got.dtype == np.float32 and got.shape == (batch, seq, 2)
        assert np.array_equal(got, want)


def test_qdq_nodes_survive_intake(tmp_path):
    src = FIXTURES / "qat_qdq.onnx"
    before = Counter(n.op_type for n in onnx.load(src).graph.node)
    report = convert_onnx(src, tmp_path / "q.onnx")
    after = Counter(n.op_type for n in onnx.load(tmp_path / "q.onnx").graph.node)
    assert before["QuantizeLinear"] == after["QuantizeLinear"] == 34
    assert before["DequantizeLinear"] == after["DequantizeLinear"] == 47
    assert report["qdq_nodes"] == 81
    assert after["Identity"] == 0 and after["Constant"] == 0  # sanitized around them


def test_output_is_deterministic(tmp_path):
    convert_onnx(FIXTURES / "hf_qa_sdpa.onnx", tmp_path / "a.onnx")
    convert_onnx(FIXTURES / "hf_qa_sdpa.onnx", tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_canonical_tf2onnx_model_passes_through(tiny_onnx, tmp_path):
    report = convert_onnx(tiny_onnx, tmp_path / "same.onnx")
    assert report["renamed"] == {} and report["cast"] == {} and report["joined"] == []
    source, result = onnx.load(tiny_onnx), onnx.load(tmp_path / "same.onnx")
    assert io_signature(result)[0] == io_signature(source)[0]
    assert io_signature(result)[1][0][:2] == ("logits", TensorProto.FLOAT)
    ids, types, mask = random_batch(2, 128, 3, vocab=30522)
    feed = dict(zip(CANONICAL_INPUTS, (a.astype(np.int32) for a in (ids, types, mask))))
    assert np.array_equal(session(tiny_onnx).run(None, feed)[0], session(tmp_path / "same.onnx").run(None, feed)[0])


def test_encoder_without_head_gives_hidden_states(tmp_path):
    # Cut the QA head off a real export: the input of the [hidden, 2] MatMul is the encoder's output.
    graph = gs.import_onnx(onnx.load(FIXTURES / "hf_qa_eager.onnx"))
    head = next(n for n in graph.nodes if n.op == "MatMul" and isinstance(n.inputs[1], gs.Constant)
                and tuple(n.inputs[1].shape) == (128, 2))
    hidden = head.inputs[0]
    hidden.dtype, hidden.shape = np.float32, None
    hidden.name = "last_hidden_state"
    graph.outputs = [hidden]
    graph.cleanup()
    encoder = tmp_path / "encoder.onnx"
    onnx.save(gs.export_onnx(graph), encoder)

    report = convert_onnx(encoder, tmp_path / "out.onnx")
    assert report["output"] == "hidden_states" and report["renamed"]["last_hidden_state"] == "hidden_states"
    assert io_signature(onnx.load(tmp_path / "out.onnx"))[1] == [("hidden_states", TensorProto.FLOAT,
                                                                   ["batch", "seq", 128])]
    ids, types, mask = random_batch(2, 16, 4)
    want, = session(encoder).run(None, dict(zip(SOURCE_INPUTS, (ids, types, mask))))
    got, = session(tmp_path / "out.onnx").run(None, dict(zip(CANONICAL_INPUTS, (a.astype(np.int32) for a in (ids, types, mask)))))
    assert want.shape == (2, 16, 128) and np.array_equal(got, want)


# --- small hand-made graphs ------------------------------------------------------------------------------

def toy_model(ids=("input_ids", TensorProto.INT64), gather=True, extra_inputs=(), outputs=None):
    """ids -> Gather(table) * mask -> [batch, seq, 4]: the smallest thing intake accepts as an encoder."""
    table = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(16, 4), "table")
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    four = numpy_helper.from_array(np.ones(4, np.float32), "four")
    if gather:
        nodes = [helper.make_node("Gather", ["table", ids[0]], ["emb"])]
    else:  # the ids are used as numbers, not as indices into a table
        nodes = [helper.make_node("Cast", [ids[0]], ["ids_f"], to=TensorProto.FLOAT),
                 helper.make_node("Unsqueeze", ["ids_f", "axes"], ["ids_col"]),
                 helper.make_node("Mul", ["ids_col", "four"], ["emb"])]
    nodes += [helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
              helper.make_node("Unsqueeze", ["mask_f", "axes"], ["mask_col"]),
              helper.make_node("Mul", ["emb", "mask_col"], ["last_hidden_state"])]
    inputs = [helper.make_tensor_value_info(ids[0], ids[1], ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])]
    inputs += [helper.make_tensor_value_info(n, t, ["batch", "seq"]) for n, t in extra_inputs]
    outputs = outputs or [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", 4])]
    graph = helper.make_graph(nodes, "toy", inputs, outputs, [table, axes, four])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_missing_segment_input_is_added(tmp_path):
    onnx.save(toy_model(), tmp_path / "toy.onnx")
    report = convert_onnx(tmp_path / "toy.onnx", tmp_path / "out.onnx")
    assert report["added"] == ["segment_ids"] and report["output"] == "hidden_states"
    model = onnx.load(tmp_path / "out.onnx")
    assert [i.name for i in model.graph.input] == CANONICAL_INPUTS
    ids = np.array([[3, 15, 0]], np.int32)
    mask = np.array([[1, 1, 0]], np.int32)
    got, = session(tmp_path / "out.onnx").run(None, {"input_ids": ids, "segment_ids": np.zeros_like(ids),
                                                     "input_mask": mask})
    want = np.arange(64, dtype=np.float32).reshape(16, 4)[ids] * mask[..., None]  # by hand
    assert np.array_equal(got, want)


# --- bad input: one BertrtError line naming the file, and nothing written ------------------------------

def bad_sources(tmp_path):
    """name -> (source path, words the message must contain)."""
    real = (FIXTURES / "hf_qa_eager.onnx").read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(real[: len(real) // 3])
    (tmp_path / "notes.onnx").write_text("these are not the droids you are looking for\n" * 20)
    (tmp_path / "empty.onnx").write_bytes(b"")

    def save(name, model):
        onnx.save(model, tmp_path / name)

    image = helper.make_graph([helper.make_node("Relu", ["pixel_values"], ["y"])], "image",
                              [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    save("image.onnx", helper.make_model(image, opset_imports=[helper.make_opsetid("", 17)]))
    save("no_gather.onnx", toy_model(gather=False))
    save("float_ids.onnx", toy_model(ids=("input_ids", TensorProto.FLOAT), gather=False))
    save("position_ids.onnx", toy_model(extra_inputs=[("position_ids", TensorProto.INT64)]))
    rank4 = toy_model(outputs=[helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                                             ["batch", "seq", 4, 1])])
    rank4.graph.node[-1].output[0] = "hidden3"  # the graph computes rank 4, as it declares
    rank4.graph.node.append(helper.make_node("Unsqueeze", ["hidden3", "axes"], ["last_hidden_state"]))
    save("rank4_output.onnx", rank4)
    start_only = onnx.load(FIXTURES / "hf_qa_eager.onnx")
    del start_only.graph.output[1]
    save("start_only.onnx", start_only)
    return {
        "missing": (tmp_path / "nowhere.onnx", "no such file"),
        "truncated": (tmp_path / "truncated.onnx", "not a readable ONNX model"),
        "not_onnx": (tmp_path / "notes.onnx", "not a readable ONNX model"),
        "empty": (tmp_path / "empty.onnx", "empty file"),
        "image_model": (tmp_path / "image.onnx", "no token-id input"),
        "no_gather": (tmp_path / "no_gather.onnx", "does not feed a Gather on an embedding table"),
        "float_ids": (tmp_path / "float_ids.onnx", "'input_ids' is float32, expected int32 or int64"),
        "unknown_input": (tmp_path / "position_ids.onnx", "'position_ids' has no place"),
        "rank4_output": (tmp_path / "rank4_output.onnx", "outputs fit no contract"),
        "start_only": (tmp_path / "start_only.onnx", "outputs fit no contract (start_logits [?, ?])"),
    }


BAD = ["missing", "truncated", "not_onnx", "empty", "image_model", "no_gather", "float_ids", "unknown_input",
       "rank4_output", "start_only"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_clear_error_and_no_output(case, tmp_path):
    src, words = bad_sources(tmp_path)[case]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(BertrtError) as info:
        convert_onnx(src, out_dir / "model.onnx")
    message = info.value.message
    assert message.startswith(f"{src}: ") and words in message, message
    assert "\n" not in message
    assert info.value.exit_code == 1
    assert list(out_dir.iterdir()) == []  # no output, no temporary file


def test_failed_intake_leaves_an_older_output_alone(tmp_path):
    dst = tmp_path / "model.onnx"
    dst.write_bytes(b"previous result")
    with pytest.raises(BertrtError):
        convert_onnx(bad_sources(tmp_path)["no_gather"][0], dst)
    assert dst.read_bytes() == b"previous result"


def test_large_model_weights_go_to_external_data(tmp_path, monkeypatch):
    # Lower the 1.8 GB threshold so the fixture takes the path a BERT-Large QAT export would.
    monkeypatch.setattr("bertrt.onnx_io.EXTERNAL_DATA_THRESHOLD", 1000)
    dst = tmp_path / "model.onnx"
    convert_onnx(FIXTURES / "hf_qa_eager.onnx", dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert dst.stat().st_size < 100_000 < (tmp_path / "model.onnx.data").stat().st_size
    ids, types, mask = random_batch(2, 12, 5)
    want = np.stack(session(FIXTURES / "hf_qa_eager.onnx").run(None, dict(zip(SOURCE_INPUTS, (ids, types, mask)))), -1)
    got, = session(dst).run(None, dict(zip(CANONICAL_INPUTS, (a.astype(np.int32) for a in (ids, types, mask)))))
    assert np.array_equal(got, want)


# --- the command line: one line naming the file, exit 1, nothing written -------------------------------

def test_cli_bad_inputs(tmp_path):
    from click.testing import CliRunner

    from bertrt.cli import cli

    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    relu = tmp_path / "relu.onnx"
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                                     opset_imports=[onnx.helper.make_opsetid("", 17)]), relu)
    cases = [(tmp_path / "missing.onnx", "no such file"), (text, "not a readable ONNX model"), (relu, "")]
    for src, words in cases:
        out = tmp_path / "out.onnx"
        r = CliRunner().invoke(cli, ["convert", "onnx", str(src), "-o", str(out)])
        assert r.exit_code == 1, r.output
        last = r.output.strip().splitlines()[-1]
        assert last.startswith(f"Error: {src}: ") and words in last
        assert not out.exists() and not list(tmp_path.glob(".out.onnx*"))
