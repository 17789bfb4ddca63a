"""Backends: ONNX Runtime and the CPU reference behind one interface; TensorRT stops with exit 3 here."""

import importlib.util

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from bertrt.cli import cli
from bertrt.errors import BertrtError, ToolMissing
from bertrt.plugins.handbuilt import fused_bert, random_bert_weights, unfused_bert
from bertrt.run.backends import InputShape, OrtBackend, ReferenceBackend, TrtBackend, open_backend, pick_profile
from bertrt.run.perf import random_feeds

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def handbuilt(tmp_path_factory):
    """(unfused.onnx, fused.onnx) of one seeded tiny BERT: 2 layers, hidden 128, 2 heads, dynamic batch and seq."""
    weights = random_bert_weights(2, 128, 2, 512, seed=3)
    folder = tmp_path_factory.mktemp("handbuilt")
    unfused, fused = folder / "unfused.onnx", folder / "fused.onnx"
    onnx.save(unfused_bert(weights, 2, 2), unfused)
    onnx.save(fused_bert(weights, 2, 2), fused)
    return unfused, fused


def feeds_with_padding(batch, seq, seed=0):
    feeds = random_feeds(batch, seq, 30522, seed)
    lengths = np.random.default_rng(seed).integers(seq // 4, seq + 1, size=batch)
    feeds["input_mask"] = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32)
    return feeds


def test_ort_backend_equals_onnxruntime_directly(tiny_onnx):
    feeds = feeds_with_padding(3, 128)
    expected = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
    with open_backend(onnx=tiny_onnx) as backend:
        assert isinstance(backend, OrtBackend) and backend.name == "onnxruntime"
        assert backend.input_shape.seq == 128 and backend.input_shape.batch is None
        assert backend.vocab_size == 30522
        logits = backend.run(feeds)
    assert logits.shape == (3, 128, 2) and logits.dtype == np.float32
    np.testing.assert_array_equal(logits, expected)


def test_ort_backend_rejects_other_seq(tiny_onnx):
    with open_backend(onnx=tiny_onnx) as backend, pytest.raises(BertrtError, match="sequence length 128"):
        backend.run(random_feeds(1, 64, 30522))


def test_missing_input_is_an_error(tiny_onnx):
    feeds = random_feeds(1, 128, 30522)
    del feeds["segment_ids"]
    with open_backend(onnx=tiny_onnx) as backend, pytest.raises(BertrtError, match="segment_ids"):
        backend.run(feeds)


def test_reference_backend_matches_unfused_graph(handbuilt):
    unfused, fused = handbuilt
    feeds = feeds_with_padding(2, 48, seed=1)
    with open_backend(onnx=fused) as ref, open_backend(onnx=unfused) as plain:
        assert isinstance(ref, ReferenceBackend) and isinstance(plain, OrtBackend)
        assert ref.input_shape == InputShape(None, None, positions=512)  # a free axis, a table of 512 rows
        got, want = ref.run(feeds), plain.run(feeds)
    assert got.shape == want.shape == (2, 48, 2)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_fixed_batch_model_is_split_and_padded(tiny_onnx, tmp_path):
    """A graph with batch fixed to 2 takes 3 rows as one full and one padded call, same as row by row."""
    model = onnx.load(tiny_onnx)
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = 2
    path = tmp_path / "batch2.onnx"
    onnx.save(model, path)
    feeds = feeds_with_padding(3, 128, seed=2)
    with open_backend(onnx=path) as fixed, open_backend(onnx=tiny_onnx) as free:
        assert fixed.input_shape.batch == 2
        got = fixed.run(feeds)
        rows = [free.run({k: v[i:i + 1] for k, v in feeds.items()}) for i in range(3)]
    np.testing.assert_allclose(got, np.concatenate(rows), atol=1e-5)


def test_pick_profile_takes_the_first_that_fits():
    profiles = [((1, 384), (1, 384), (1, 384)), ((1, 384), (8, 384), (8, 384)), ((1, 128), (8, 128), (8, 128))]
    assert pick_profile(profiles, (1, 384)) == 0
    assert pick_profile(profiles, (4, 384)) == 1
    assert pick_profile(profiles, (8, 128)) == 2
    assert pick_profile(profiles, (9, 384)) is None


def test_open_backend_needs_exactly_one_model(tiny_onnx):
    with pytest.raises(BertrtError, match="exactly one"):
        open_backend()
    with pytest.raises(BertrtError, match="exactly one"):
        open_backend(engine="x.plan", onnx=tiny_onnx)


def test_non_qa_model_is_an_error(tmp_path):
    path = tmp_path / "nope.onnx"
    path.write_bytes(b"not onnx at all")
    with pytest.raises(BertrtError, match="nope.onnx"):
        open_backend(onnx=path)


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_tensorrt_backend_without_tensorrt(tmp_path):
    engine = tmp_path / "model.plan"
    engine.write_bytes(b"\0" * 16)
    with pytest.raises(ToolMissing) as info:
        TrtBackend(engine)
    assert info.value.exit_code == 3
    assert "tensorrt" in str(info.value) and "pip install tensorrt" in str(info.value)


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_cli_engine_without_tensorrt_exits_3(tmp_path):
    engine = tmp_path / "model.plan"
    engine.write_bytes(b"\0" * 16)
    result = CliRunner().invoke(cli, ["infer", "--engine", str(engine), "-p", "Some text here.", "-q", "What?"])
    assert result.exit_code == 3, result.output
    assert "pip install tensorrt" in result.output and "bertrt infer" in result.output


def test_cli_engine_and_onnx_together_is_a_usage_error(tiny_onnx):
    result = CliRunner().invoke(cli, ["infer", "--engine", "a.plan", "--onnx", str(tiny_onnx), "-p", "x", "-q", "y"])
    assert result.exit_code == 2 and "exactly one of --engine" in result.output


def test_a_backend_failure_is_one_line_naming_the_model_and_the_cause(handbuilt, tmp_path):
    """#14, item 7: past the position table, an id past the embedding table, or the runtime's own failure."""
    unfused, fused = handbuilt
    for path in (unfused, fused):
        with open_backend(onnx=path) as backend:
            with pytest.raises(BertrtError) as e:
                backend.run(feeds_with_padding(1, 600))
            assert str(e.value) == f"{path}: seq 600 is longer than the model's 512 positions"
            feeds = feeds_with_padding(1, 16)
            feeds["input_ids"][0, 0] = 40000
            with pytest.raises(BertrtError, match=f"^{path}: token id 40000 is past the model's 30522 embedding rows"):
                backend.run(feeds)
    # A graph that loads and then fails when it runs (a Reshape to a size the input does not have).
    import onnx
    from onnx import helper

    model = onnx.load(unfused)
    shape = helper.make_tensor("bad_shape", onnx.TensorProto.INT64, [2], [7, -1])
    model.graph.initializer.append(shape)
    last = model.graph.node[-1]
    reshaped = helper.make_node("Reshape", [last.output[0], "bad_shape"], ["logits"], name="bad_reshape")
    last.output[0] = "before_bad_reshape"
    reshaped.input[0] = "before_bad_reshape"
    model.graph.node.append(reshaped)
    broken = tmp_path / "broken.onnx"
    onnx.save(model, broken)
    with open_backend(onnx=broken) as backend, pytest.raises(BertrtError) as e:
        backend.run(feeds_with_padding(1, 16))
    message = str(e.value)
    assert message.startswith(f"{broken}: onnxruntime cannot run it on input_ids [1, 16], ") and "\n" not in message


def test_a_packed_engine_packs_no_longer_than_its_max_seqlen_profile():
    """#14, item 2: the limit comes from the engine (its max_seqlen input's profiles, as bertrt build made them),
    not the plugins' 384. The profiles are data here; TrtBackend reads the same from a real engine."""
    from bertrt.run.backends import Backend, engine_input_shape, profile_max_seqlen

    assert profile_max_seqlen([((1,), (64,), (64,)), ((1,), (64,), (64,))]) == 64
    assert profile_max_seqlen([((1,), (128,), (128,)), ((1,), (384,), (384,))]) == 128
    built = {"cu_seqlens": [((2,), (9,), (9,))], "max_seqlen": [((1,), (64,), (64,))],  # bertrt build --seq 64
             "input_ids": [((1,), (512,), (512,))]}
    shape = engine_input_shape(built.__getitem__, varseqlen=True)
    assert (shape.varseqlen, shape.max_batch, shape.max_seqlen) == (True, 8, 64)

    class Packed(Backend):  # stands for the engine after packing: what reaches it is what it would read
        name = "packed"

        def _run(self, feeds):
            self.seen = feeds
            return np.zeros((feeds["input_ids"].size, 2), np.float32)

    backend = Packed("e.plan", shape)
    feeds = feeds_with_padding(1, 64)
    feeds["input_mask"][:] = 1
    backend.run(feeds)
    assert backend.seen["cu_seqlens"].tolist() == [0, 64]  # 64 tokens: as long as the engine takes
    feeds = feeds_with_padding(1, 100)
    feeds["input_mask"][:] = 1  # 100 tokens: past the engine's 64, though within 384
    with pytest.raises(BertrtError, match="^e.plan: sequence 0 has 100 tokens; the var-seqlen model computes at most "
                                          "64"):
        backend.run(feeds)
    fixed = engine_input_shape({"input_ids": [((1, 128), (8, 128), (8, 128))]}.__getitem__, varseqlen=False)
    assert (fixed.seq, fixed.max_batch, fixed.varseqlen) == (128, 8, False)


def test_threads_reach_every_onnxruntime_session(handbuilt):
    """A benchmark that runs several rows side by side gives each session a share of the cores."""
    unfused, fused = handbuilt
    feeds = feeds_with_padding(1, 16)
    with OrtBackend(unfused, threads=1) as plain, ReferenceBackend(fused, threads=1) as ref:
        plain.run(feeds), ref.run(feeds)
        sessions = [plain.session] + [s for seg in ref.runner.steps for s in getattr(seg, "sessions", {}).values()]
    assert len(sessions) > 1
    assert {s.get_session_options().intra_op_num_threads for s in sessions} == {1}
