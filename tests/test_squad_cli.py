"""bertrt squad: predictions and EM/F1 on the sample file, checked against an independent run."""

import json
from pathlib import Path

import onnx
import onnxruntime as ort
from click.testing import CliRunner

from bertrt.cli import cli
from bertrt.convert.zoo import vocab_path
from bertrt.plugins.handbuilt import fused_bert, random_bert_weights, unfused_bert
from bertrt.run.features import examples_features, stack_features
from bertrt.run.postprocess import predict_answer
from bertrt.run.squad_data import read_squad
from bertrt.run.squad_metric import evaluate
from bertrt.run.tokenization import load_tokenizer

SAMPLE = Path(__file__).parent / "data" / "squad_sample.json"


def independent_predictions(model_path, seq):
    """Features → ONNX Runtime session, one feature at a time → predict_answer; no bertrt backend involved."""
    examples = read_squad(SAMPLE)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    per_example = examples_features(load_tokenizer(vocab_path()), examples, max_seq_length=seq)
    out = {}
    for example, feats in zip(examples, per_example):
        starts, ends = [], []
        for f in feats:
            logits = session.run(["logits"], stack_features([f]))[0][0]
            starts.append(logits[:, 0])
            ends.append(logits[:, 1])
        out[example.qas_id] = predict_answer(example.doc_words, feats, starts, ends).text
    return examples, out


def run_squad(args):
    result = CliRunner().invoke(cli, ["squad", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def test_squad_on_tiny_matches_independent_run(tiny_onnx, tmp_path):
    out = tmp_path / "predictions.json"
    scores_path = tmp_path / "scores.json"
    result = run_squad(["--onnx", tiny_onnx, "--squad-json", SAMPLE, "-o", out, "--batch", "4", "--report", scores_path])
    predictions = json.loads(out.read_text())
    examples, expected = independent_predictions(tiny_onnx, 128)
    assert len(predictions) == len(examples) == 12
    assert predictions == expected
    scores = evaluate(examples, expected)
    assert json.loads(scores_path.read_text()) == scores
    assert f"exact_match {scores['exact_match']:.2f}  f1 {scores['f1']:.2f}  (12 questions)" in result.output


def test_batch_size_does_not_change_predictions(tiny_onnx, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    run_squad(["--onnx", tiny_onnx, "--squad-json", SAMPLE, "-o", a, "--batch", "1", "--limit", "5"])
    run_squad(["--onnx", tiny_onnx, "--squad-json", SAMPLE, "-o", b, "--batch", "3", "--limit", "5"])
    assert json.loads(a.read_text()) == json.loads(b.read_text())
    assert len(json.loads(a.read_text())) == 5


def test_reference_backend_on_fused_graph_predicts_as_the_canonical_graph(tmp_path):
    """The hand-built fused tiny BERT (plugin nodes, CPU reference) and its standard-op twin (ONNX Runtime)."""
    weights = random_bert_weights(2, 128, 2, 512, seed=7)
    unfused, fused = tmp_path / "unfused.onnx", tmp_path / "fused.onnx"
    onnx.save(unfused_bert(weights, 2, 2), unfused)
    onnx.save(fused_bert(weights, 2, 2), fused)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    run_squad(["--onnx", unfused, "--squad-json", SAMPLE, "-o", a, "--seq", "128", "--batch", "4"])
    result = run_squad(["--onnx", fused, "--squad-json", SAMPLE, "-o", b, "--seq", "128", "--batch", "4"])
    assert "reference backend" in result.output
    pa, pb = json.loads(a.read_text()), json.loads(b.read_text())
    assert len(pa) == 12 and pa == pb
    assert pa == independent_predictions(unfused, 128)[1]


def test_bad_squad_file_leaves_no_output(tiny_onnx, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    out = tmp_path / "predictions.json"
    result = CliRunner().invoke(cli, ["squad", "--onnx", str(tiny_onnx), "--squad-json", str(bad), "-o", str(out)])
    assert result.exit_code == 1
    assert "bad.json: not JSON" in result.output
    assert not out.exists()


def test_wrong_seq_for_fixed_model_is_an_error(tiny_onnx, tmp_path):
    out = tmp_path / "p.json"
    result = CliRunner().invoke(cli, ["squad", "--onnx", str(tiny_onnx), "--squad-json", str(SAMPLE),
                                      "-o", str(out), "--seq", "384"])
    assert result.exit_code == 1 and "sequence length 128" in result.output
    assert not out.exists()
