"""benchmarks/squad_parts.py: a row answered in parts joins into the predictions file squad_accuracy.py reuses,
and a join with a part missing or misplaced is refused. Dev here is the 96-question fixture slice."""

import argparse
import json
import shutil
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import squad_accuracy as sa  # noqa: E402
import squad_parts  # noqa: E402

MODEL, ROW, PARTS = "minilm-squad", "int8-minmax-trt11", 3


@pytest.fixture
def dev(tmp_path, monkeypatch):
    """The fixture slice as the dev set squad_accuracy reads; its examples."""
    shared = tmp_path / "shared"
    (shared / "data/squad").mkdir(parents=True)
    shutil.copy(FIXTURES / "squad_dev_slice.json", shared / "data/squad/dev-v1.1.json")
    monkeypatch.setattr(sa, "SHARED", shared)
    return sa.dev_examples(None, tmp_path / "work")[0]


def _write_parts(folder: Path, examples, answer, skip=()):
    folder.mkdir(parents=True, exist_ok=True)
    for k, (start, end) in enumerate(squad_parts.part_bounds(len(examples), PARTS)):
        if k in skip:
            continue
        record = {"model": MODEL, "row": ROW, "part": k, "parts": PARTS, "questions": [start, end],
                  "features": end - start, "seconds": 1.5, "int8_gemms": 25,
                  "answers": {e.qas_id: answer(e) for e in examples[start:end]}}
        (folder / squad_parts.part_name(MODEL, ROW, k, PARTS)).write_text(json.dumps(record))


def _join(work, *folders):
    squad_parts.join(argparse.Namespace(work=str(work), model=MODEL, row=ROW, parts=PARTS, sources=folders))


def test_parts_cover_every_question_once():
    assert squad_parts.part_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert squad_parts.part_bounds(96, 96)[-1] == (95, 96)
    with pytest.raises(SystemExit, match="--parts must be between 1 and the 10 questions"):
        squad_parts.part_bounds(10, 11)


def test_joined_parts_are_a_row_squad_accuracy_reuses(dev, tmp_path, monkeypatch):
    # parts from two folders (two machines); every answer the first gold answer but the first question's
    first = dev[0].qas_id
    answer = lambda e: "no such answer" if e.qas_id == first else e.answers[0].text  # noqa: E731
    _write_parts(tmp_path / "a", dev, answer, skip=(1,))
    _write_parts(tmp_path / "b", dev, answer, skip=(0, 2))
    work = tmp_path / "work"
    _join(work, tmp_path / "a", tmp_path / "b")
    out = work / MODEL / "predictions" / f"{ROW}.full.json"
    texts = json.loads(out.read_text())
    assert sorted(texts) == sorted(e.qas_id for e in dev) and texts[first] == "no such answer"
    scores = json.loads(out.with_suffix(".scores.json").read_text())
    assert scores["questions"] == 96 and scores["seconds"] == 4.5 and scores["int8_gemms"] == 25
    assert scores["exact_match"] == pytest.approx(100 * 95 / 96)

    class NoBackend(sa.Model):  # a reused row asks for no backend
        def backend(self, row):
            raise AssertionError("the joined row was run again")

    model = NoBackend(MODEL, work, 100)
    assert sa.run_row(model, ROW, dev, None, [], out, 8) == scores


def test_a_missing_part_is_refused(dev, tmp_path):
    _write_parts(tmp_path / "a", dev, lambda e: e.answers[0].text, skip=(2,))
    with pytest.raises(SystemExit, match="1 of 3 parts missing \\(2\\)"):
        _join(tmp_path / "work", tmp_path / "a")
    assert not (tmp_path / "work" / MODEL / "predictions").exists()  # nothing half-written


def test_a_part_of_other_questions_is_refused(dev, tmp_path):
    _write_parts(tmp_path / "a", dev, lambda e: e.answers[0].text)
    path = tmp_path / "a" / squad_parts.part_name(MODEL, ROW, 1, PARTS)
    record = json.loads(path.read_text())
    record["answers"].pop(next(iter(record["answers"])))
    path.write_text(json.dumps(record))
    with pytest.raises(SystemExit, match="part 1 answers other questions"):
        _join(tmp_path / "work", tmp_path / "a")
