"""``bertrt compare`` and ``compare_models``: Polygraphy's Comparator over ONNX Runtime and the CPU reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from bertrt.cli import cli
from bertrt.onnx_io import load_model, save_model
from bertrt.plugins.handbuilt import fused_bert, random_bert_weights, unfused_bert
from bertrt.run.compare import compare_models, random_inputs, vocab_size


@pytest.fixture(scope="module")
def tiny_weights(tiny_ckpt):
    from bertrt.convert.checkpoint import BertConfig, find_prefix, read_weights

    cfg = BertConfig.load(tiny_ckpt / "bert_config.json")
    return cfg, read_weights(find_prefix(tiny_ckpt), cfg)


@pytest.fixture(scope="module")
def tiny_fused(tiny_weights, tmp_path_factory):
    cfg, w = tiny_weights
    return save_model(fused_bert(w, cfg.num_hidden_layers, cfg.num_attention_heads),
                      tmp_path_factory.mktemp("fused") / "tiny-fused.onnx")


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    """A hand-built unfused/fused pair with random weights (no TF conversion needed)."""
    w = random_bert_weights(2, 128, 2, 512, seed=3)
    d = tmp_path_factory.mktemp("pair")
    return save_model(unfused_bert(w, 2, 2), d / "model.onnx"), save_model(fused_bert(w, 2, 2), d / "fused.onnx"), w


def test_fused_tiny_matches_canonical_tiny_model(tiny_onnx, tiny_fused):
    """Acceptance: the hand-fused 2-layer tiny BERT equals tf2onnx's canonical model within 1e-4 (FP32)."""
    result = compare_models(tiny_onnx, tiny_fused, batch=2, seed=0, iterations=2)
    assert result.passed, result.table()
    (logits,) = result.outputs
    assert logits.name == "logits" and logits.max_abs <= 1e-4
    assert result.backends == ("onnxrt", "bertrt-ref") and result.precision == "fp32"


def test_cli_pass_prints_errors_and_exits_0(tiny_onnx, tiny_fused):
    res = CliRunner().invoke(cli, ["compare", str(tiny_onnx), str(tiny_fused), "--batch", "2", "--seed", "5"])
    assert res.exit_code == 0, res.output
    assert "logits" in res.output and "PASS" in res.output and "max abs" in res.output


def test_cli_fail_exits_1(small_pair, tmp_path):
    unfused, _, w = small_pair
    w = dict(w)
    w["cls/squad/output_bias"] = w["cls/squad/output_bias"] + np.float32(0.01)  # logits move by 0.01
    bad = save_model(fused_bert(w, 2, 2), tmp_path / "bad.onnx")
    res = CliRunner().invoke(cli, ["compare", str(unfused), str(bad), "--seq", "32"])
    assert res.exit_code == 1
    assert "FAIL" in res.output
    # the same pair passes once the tolerance allows the change
    res = CliRunner().invoke(cli, ["compare", str(unfused), str(bad), "--seq", "32", "--atol", "1.0"])
    assert res.exit_code == 0, res.output


def test_precision_is_read_from_the_plugins(small_pair, tmp_path):
    unfused, _, w = small_pair
    fp16 = save_model(fused_bert(w, 2, 2, "fp16"), tmp_path / "fp16.onnx")
    result = compare_models(unfused, fp16, seq=32)
    assert result.precision == "fp16" and result.atol == 2e-2 and result.passed
    assert result.outputs[0].max_abs > 1e-6  # FP16 rounding did happen
    strict = compare_models(unfused, fp16, seq=32, precision="fp32")
    assert not strict.passed


def test_random_inputs_are_valid(small_pair):
    unfused, _, _ = small_pair
    model = load_model(unfused)
    assert vocab_size(model) == 30522
    (feed,) = random_inputs(model, batch=4, seq=40, seed=1)
    assert feed["input_ids"].dtype == np.int32 and feed["input_ids"].shape == (4, 40)
    assert feed["input_ids"].min() >= 0 and feed["input_ids"].max() < 30522
    assert set(np.unique(feed["segment_ids"])) <= {0, 1}
    m = feed["input_mask"]
    lengths = m.sum(1)
    assert np.array_equal(m, (np.arange(40)[None] < lengths[:, None]).astype(np.int32))  # contiguous prefixes
    assert lengths.min() >= 1


def test_vocab_from_the_emb_layer_norm_node(small_pair):
    _, fused, _ = small_pair
    assert vocab_size(load_model(fused)) == 30522


def test_load_inputs_from_polygraphy_json(small_pair, tmp_path):
    from polygraphy.json import save_json

    unfused, fused, _ = small_pair
    feeds = random_inputs(load_model(unfused), batch=1, seq=24, seed=9)
    save_json(feeds, str(tmp_path / "in.json"))
    res = CliRunner().invoke(cli, ["compare", str(unfused), str(fused), "--load-inputs", str(tmp_path / "in.json")])
    assert res.exit_code == 0, res.output
    (tmp_path / "junk.json").write_text(json.dumps({"a": 1}))
    res = CliRunner().invoke(cli, ["compare", str(unfused), str(fused), "--load-inputs", str(tmp_path / "junk.json")])
    assert res.exit_code == 1 and "junk.json" in res.output


def test_bad_file_is_a_one_line_error(small_pair, tmp_path):
    unfused, _, _ = small_pair
    (tmp_path / "empty.onnx").write_bytes(b"")
    res = CliRunner().invoke(cli, ["compare", str(unfused), str(tmp_path / "empty.onnx")])
    assert res.exit_code == 1
    assert res.output.startswith("Error: ") and "empty.onnx" in res.output and "empty file" in res.output
    res = CliRunner().invoke(cli, ["compare", str(unfused), str(tmp_path / "missing.onnx")])
    assert res.exit_code == 1 and "no such file" in res.output


def test_static_shape_mismatch_is_an_error(tiny_onnx, tiny_fused):
    res = CliRunner().invoke(cli, ["compare", str(tiny_onnx), str(tiny_fused), "--seq", "64"])
    assert res.exit_code == 1 and "fixed sequence length of 128" in res.output


def test_compare_past_the_position_table_is_one_line(canonical_fixtures, tmp_path):
    """#14, item 7, as a user hits it: convert onnx the HF export (64 positions), surgery run, compare --seq 128.
    It was an ONNX Runtime traceback; it is one line naming the model and the cause, for either backend."""
    from click.testing import CliRunner

    from bertrt.cli import cli

    canonical, fused = canonical_fixtures["hf_qa_eager"], tmp_path / "fused.onnx"
    assert CliRunner().invoke(cli, ["surgery", "run", str(canonical), "-o", str(fused)]).exit_code == 0
    for b in (canonical, fused):
        r = CliRunner().invoke(cli, ["compare", str(canonical), str(b), "--seq", "128"])
        assert r.exit_code == 1 and (r.exception is None or isinstance(r.exception, SystemExit)), r.output
        assert r.stderr.strip() == (f"Error: {canonical}: seq 128 is longer than the model's 64 positions; "
                                    "compare at 64 tokens or fewer")


def test_a_graph_that_fails_when_it_runs_is_named_in_one_line(tiny_onnx, tmp_path, capfd):
    """#14 (found by the fuzz campaign once it read file descriptor 2): compare named the first model whichever
    failed, and ONNX Runtime's C++ log printed a second, colored line on the terminal beside the Error line."""
    import onnx
    from onnx import helper

    model = onnx.load(tiny_onnx)
    model.graph.initializer.append(helper.make_tensor("bad_shape", onnx.TensorProto.INT64, [2], [7, -1]))
    last = model.graph.node[-1]
    last.output[0] = "before_bad_reshape"  # it loads; [1, 128, 2] cannot become [7, -1] when it runs
    model.graph.node.append(helper.make_node("Reshape", ["before_bad_reshape", "bad_shape"], ["logits"]))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, broken)
    capfd.readouterr()
    r = CliRunner().invoke(cli, ["compare", str(tiny_onnx), str(broken)])
    assert r.exit_code == 1, r.output
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(
        f"Error: {broken}: ONNX Runtime cannot run it on these inputs (1x128): "), r.stderr
    assert capfd.readouterr().err == ""  # nothing past Python's stderr (ONNX Runtime's log is off)
