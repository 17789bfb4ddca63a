"""Real accuracy on a slice of SQuAD v1.1 dev (tests/fixtures/squad_dev_slice.json, 96 questions) with the real
fine-tuned models in ../shared: the fused graphs answer like the canonical model, and the INT8 recipe `make
engine` uses stays within its F1 bound, with `bertrt squad --amax` scoring what `calibrate evaluate` scores."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bertrt.cli import cli
from conftest import FIXTURES, need_shared

SLICE = FIXTURES / "squad_dev_slice.json"
SEQ = "384"
FP16_F1_BOUND = 1.0  # 96 questions: one changed answer moves F1 by up to 1.04
INT8_F1_BOUND = 1.0  # the Makefile's MAX_F1_DROP
FLOAT_GEMMS = ["--float-gemms", "ffn1,ffn2"]  # the Makefile's FLOAT_GEMMS for a real model
INT8_GEMMS = 13  # of 25: per layer QKV and attention output; the QA head


def _cli(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def canonical(tmp_path_factory):
    """name -> (canonical model at seq 384, vocab.txt), through `zoo import-hf` and `convert tf`, as make engine."""
    made = {}

    def make(name):
        if name not in made:
            (hf,) = need_shared(f"models/{name}/model.safetensors")
            d = tmp_path_factory.mktemp(name)
            _cli("zoo", "import-hf", hf.parent, "-o", d / "ckpt")
            _cli("convert", "tf", "--checkpoint", d / "ckpt", "--seq", SEQ, "-o", d / "model.onnx")
            made[name] = (d / "model.onnx", d / "ckpt" / "vocab.txt")
        return made[name]

    return make


def _squad(model, vocab, out: Path, *extra):
    r = _cli("squad", "--onnx", model, "--squad-json", SLICE, "--vocab", vocab, "-o", out, "--report",
             out.with_suffix(".scores.json"), *extra)
    return json.loads(out.read_text()), json.loads(out.with_suffix(".scores.json").read_text()), r.output


@pytest.mark.slow
def test_fused_graphs_answer_like_the_canonical_model(canonical, tmp_path):
    model, vocab = canonical("minilm-squad")
    preds, scores = {}, {}
    for name, precision in (("canonical", None), ("fp32", "fp32"), ("fp16", "fp16")):
        path = model
        if precision:
            path = tmp_path / f"fused-{precision}.onnx"
            _cli("surgery", "run", model, "-o", path, "--target", "trt10", "--precision", precision)
        preds[name], scores[name], _ = _squad(path, vocab, tmp_path / f"{name}.json")
    assert scores["canonical"]["total"] == 96 and scores["canonical"]["unanswered"] == 0
    assert scores["canonical"]["f1"] > 75  # a real SQuAD model (82.45 on the full dev set)
    assert preds["fp32"] == preds["canonical"]
    assert abs(scores["fp16"]["f1"] - scores["canonical"]["f1"]) <= FP16_F1_BOUND
    assert sum(preds["fp16"][k] != v for k, v in preds["canonical"].items()) <= 2


def test_h64_reaches_int8_attention_on_every_layer(canonical, tmp_path):
    """Heads of 64 and a fixed sequence (convert tf --seq 384): QKVToContext runs INT8 on all 6 layers."""
    model, _ = canonical("minilm-squad-h64")
    r = _cli("surgery", "run", model, "-o", tmp_path / "fused.onnx", "--target", "trt10", "--precision", "int8")
    assert "QKVToContext 6/6" in r.output


@pytest.mark.slow
def test_make_engine_int8_recipe_stays_within_its_f1_bound(canonical, tmp_path):
    """The Makefile's recipe for a real model (smoothed, minmax, FLOAT_GEMMS) on minilm-squad, TensorRT 10."""
    model, vocab = canonical("minilm-squad")
    (train,) = need_shared("data/squad/train-v1.1.first44.json")
    calib = ["--squad-json", train, "--calib-num", "100", "--vocab", vocab]
    d = tmp_path
    _cli("calibrate", "smooth", model, *calib, *FLOAT_GEMMS, "-o", d / "smooth.onnx")
    _cli("surgery", "run", d / "smooth.onnx", "-o", d / "fused.onnx", "--target", "trt10", "--precision", "int8",
         "--name-map", d / "map.json")
    _cli("calibrate", "ranges", d / "smooth.onnx", *calib, "--method", "minmax", *FLOAT_GEMMS,
         "--name-map", d / "map.json", "-o", d / "ranges.json")
    r = _cli("calibrate", "evaluate", model, d / "fused.onnx", "--amax", d / "ranges.json", "--squad-json", SLICE,
             "--num", "96", "--vocab", vocab, "--check", "--min-cos", "0.8", "--min-agree", "0",
             "--max-f1-drop", INT8_F1_BOUND, "-o", d / "eval.json")
    e = json.loads((d / "eval.json").read_text())
    assert e["questions"] == 96 and e["f1_drop"] <= INT8_F1_BOUND and f"{INT8_GEMMS} GEMMs INT8" in r.output
    # bertrt squad --amax runs the same simulation: the same answers, so the same F1 to the last digit.
    _, scores, out = _squad(d / "fused.onnx", vocab, d / "int8.json", "--amax", d / "ranges.json")
    assert f"{INT8_GEMMS} GEMMs in INT8" in out
    assert scores["f1"] == pytest.approx(e["f1"], abs=1e-9)
    _, fp32, _ = _squad(model, vocab, d / "fp32.json")
    assert fp32["f1"] == pytest.approx(e["fp32_f1"], abs=1e-9)
