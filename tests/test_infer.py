"""bertrt infer: the mechanics on the tiny model (its weights are random, so the answers mean nothing)."""

import re

import pytest
from click.testing import CliRunner

from bertrt.cli import cli
from bertrt.run.backends import open_backend
from bertrt.run.cli_options import tokenizer_for
from bertrt.run.infer_cli import answer_questions

PASSAGE = ("The lighthouse at Cape Farewell was built in 1871 by the engineer Margaret Holloway. Its lamp, fuelled "
           "first by whale oil and later by kerosene, could be seen from 22 nautical miles away on a clear night. "
           "In 1952 the keepers were withdrawn and the light was made automatic. Today the tower is a small museum, "
           "open from April to October, and visitors climb 143 steps to reach the gallery.")
QUESTIONS = ["Who built the lighthouse?", "When were the keepers withdrawn?", "How many steps are there?"]
ANSWER = re.compile(r"^Answer: '(.*)' \(probability ([0-9.]+)\)$")


def test_infer_answers_each_question_with_a_span(tiny_onnx):
    args = ["infer", "--onnx", str(tiny_onnx), "-p", PASSAGE]
    for q in QUESTIONS:
        args += ["-q", q]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    answers = [ANSWER.match(line) for line in result.output.splitlines() if line.startswith("Answer:")]
    assert len(answers) == 3 and all(answers)
    for m in answers:
        assert m.group(1) in PASSAGE and m.group(1)
        assert 0 < float(m.group(2)) <= 1
    assert [line[len("Question: "):] for line in result.output.splitlines() if line.startswith("Question:")] == QUESTIONS


def test_n_best_and_passage_file(tiny_onnx, tmp_path):
    passage = tmp_path / "passage.txt"
    passage.write_text(PASSAGE, encoding="utf-8")
    result = CliRunner().invoke(cli, ["infer", "--onnx", str(tiny_onnx), "--passage-file", str(passage),
                                      "-q", QUESTIONS[0], "--n-best", "3"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("  2. ") for line in lines) and any(line.startswith("  3. ") for line in lines)


def test_answer_questions_probabilities_sum_to_one(tiny_onnx):
    with open_backend(onnx=tiny_onnx) as backend:
        predictions = answer_questions(backend, tokenizer_for(None), PASSAGE, QUESTIONS, seq=128)
    for p in predictions:
        assert p.text == p.nbest[0].text and p.text in PASSAGE
        assert sum(c.probability for c in p.nbest) == pytest.approx(1.0)
        assert p.probability == max(c.probability for c in p.nbest)


def test_passage_is_required_once(tiny_onnx, tmp_path):
    result = CliRunner().invoke(cli, ["infer", "--onnx", str(tiny_onnx), "-q", "What?"])
    assert result.exit_code == 2 and "exactly one of -p" in result.output
    result = CliRunner().invoke(cli, ["infer", "--onnx", str(tiny_onnx), "--passage-file",
                                      str(tmp_path / "missing.txt"), "-q", "What?"])
    assert result.exit_code == 1 and "missing.txt" in result.output


def test_an_empty_question_is_refused_and_no_answer_is_not_shown_as_one(tiny_onnx, monkeypatch):
    """Before #14: an empty question was answered, and a passage with no fitting span printed
    "Answer: 'empty' (probability 1.0000)" as if 'empty' were the answer."""
    from bertrt.run import infer_cli
    from bertrt.run.postprocess import NO_ANSWER, Candidate, Prediction

    r = CliRunner().invoke(cli, ["infer", "--onnx", str(tiny_onnx), "-p", "Ems flows north.", "-q", "Where?",
                                 "-q", " "])
    assert r.exit_code == 1 and r.output.strip() == "Error: question 2 is empty"
    nothing = Prediction(NO_ANSWER, 1.0, [Candidate(NO_ANSWER, 1.0, 0.0, 0.0)], answered=False)
    monkeypatch.setattr(infer_cli, "answer_questions", lambda *a, **k: [nothing])
    r = CliRunner().invoke(cli, ["infer", "--onnx", str(tiny_onnx), "-p", "Ems flows north.", "-q", "Where?"])
    assert r.exit_code == 0 and "Answer: none: no span of the passage fits" in r.output
    assert "'empty'" not in r.output
