"""The INT8 gate's sample: questions spread through the file, and the standard error of its F1 drop."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bertrt.calibrate.evaluate import drop_standard_error, eval_samples, spread_indices
from bertrt.cli import cli
from bertrt.convert.zoo import vocab_path
from bertrt.run.squad_data import read_squad
from bertrt.run.squad_metric import evaluate, question_f1

EVAL = Path(__file__).parents[1] / "calibrate" / "data" / "pydoc_qa_eval.json"


def test_spread_indices_are_evenly_spaced_from_the_first():
    assert spread_indices(10, 4) == [0, 2, 5, 7]
    assert spread_indices(3, 5) == [0, 1, 2]  # more asked than there are: all of them
    assert spread_indices(10570, 1000)[-1] == 10559


def test_spread_samples_come_from_the_whole_file():
    every = read_squad(EVAL)
    first = eval_samples(EVAL, vocab_path(), 128, 4, answers=True)
    spread = eval_samples(EVAL, vocab_path(), 128, 4, answers=True, spread=True)
    assert [e.qas_id for e in first.examples] == [e.qas_id for e in every[:4]]
    assert [e.qas_id for e in spread.examples] == [every[i * len(every) // 4].qas_id for i in range(4)]
    assert spread.in_file == first.in_file == len(every) > 4


def test_drop_standard_error_by_hand():
    # differences 0, -100, 50: mean -16.67, sample std sqrt(11666.67 / 2) = 76.376, / sqrt(3)
    assert drop_standard_error([100, 0, 50], [100, 100, 0]) == pytest.approx(44.096, abs=1e-3)
    assert drop_standard_error([80], [20]) == 0.0


def test_question_f1_averages_to_the_metric():
    examples = read_squad(EVAL)[:6]
    preds = {e.qas_id: (e.answers[0].text if i % 2 else "something else") for i, e in enumerate(examples)}
    del preds[examples[-1].qas_id]  # unanswered: 0
    per = question_f1(examples, preds)
    assert per[-1] == 0 and per.mean() == pytest.approx(evaluate(examples, preds)["f1"])


def test_evaluate_reports_the_sample_and_its_standard_error(tiny_onnx, tmp_path):
    r = CliRunner().invoke(cli, ["calibrate", "evaluate", str(tiny_onnx), str(tiny_onnx), "--squad-json", str(EVAL),
                                 "--num", "5", "--spread", "--check", "--max-f1-drop", "0",
                                 "-o", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    n = len(read_squad(EVAL))
    assert f"on 5 questions (spread through the file of {n})" in r.output
    assert "drop 0.00 (standard error 0.00 over the questions) <= 0.0" in r.output  # the model against itself
    scores = json.loads((tmp_path / "e.json").read_text())
    assert scores["questions"] == 5 and scores["f1_drop_se"] == 0.0 and np.isclose(scores["f1_drop"], 0)
