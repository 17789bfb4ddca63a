"""`bertrt squad` gives the same predictions on the canonical model (ONNX Runtime) and on the graph surgery
fused from it (the CPU reference of the plugins), for the tiny and the minilm (real weights) models."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bertrt.cli import cli

SAMPLE = Path(__file__).parent / "data" / "squad_sample.json"


@pytest.mark.parametrize("which", ["tiny_onnx", pytest.param("minilm_onnx", marks=pytest.mark.slow)])
def test_same_predictions_fused_and_original(which, request, tmp_path):
    model = request.getfixturevalue(which)
    fused = tmp_path / "fused.onnx"
    r = CliRunner().invoke(cli, ["surgery", "run", str(model), "-o", str(fused), "--target", "trt10"])
    assert r.exit_code == 0, r.output
    preds = {}
    for name, path in (("original", model), ("fused", fused)):
        out = tmp_path / f"{name}.json"
        r = CliRunner().invoke(cli, ["squad", "--onnx", str(path), "--squad-json", str(SAMPLE), "-o", str(out)])
        assert r.exit_code == 0, r.output
        assert "exact_match" in r.output
        preds[name] = json.loads(out.read_text())
    questions = [qa["id"] for article in json.loads(SAMPLE.read_text())["data"]
                 for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    assert sorted(preds["original"]) == sorted(questions)
    assert preds["fused"] == preds["original"]
