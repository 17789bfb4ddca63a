"""Reading SQuAD v1.1 files: the sample file, and a clear error naming the file for each kind of bad input."""

import json
from pathlib import Path

import pytest

from bertrt.errors import BertrtError
from bertrt.run.squad_data import read_squad

SAMPLE = Path(__file__).parent / "data" / "squad_sample.json"


def write(tmp_path, obj, name="bad.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


def squad(context="Ems flows north.", answer="north", start=10, **qa_extra):
    qa = {"id": "q1", "question": "Where does it flow?", "answers": [{"text": answer, "answer_start": start}]}
    qa.update(qa_extra)
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": [qa]}]}]}


def test_sample_file():
    examples = read_squad(SAMPLE)
    assert len(examples) == 12
    by_id = {e.qas_id: e for e in examples}
    lh1 = by_id["lh-1"]
    assert lh1.question_text == "Who built the lighthouse at Cape Farewell?"
    assert lh1.title == "Lighthouses"
    assert lh1.doc_words[lh1.start_position:lh1.end_position + 1] == ["Margaret", "Holloway."]
    # the Ems paragraph writes "371\u202fkm": the narrow no-break space separates words
    rv1 = by_id["rv-1"]
    assert "371" in rv1.doc_words and "km" in rv1.doc_words
    for e in examples:
        for a in e.answers:
            assert e.context_text[a.answer_start:a.answer_start + len(a.text)] == a.text


def test_answer_positions_are_words(tmp_path):
    (example,) = read_squad(write(tmp_path, squad()))
    assert example.doc_words == ["Ems", "flows", "north."]
    assert (example.start_position, example.end_position) == (2, 2)


def check_error(path, *fragments):
    with pytest.raises(BertrtError) as e:
        read_squad(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message
    return message


def test_missing_file(tmp_path):
    check_error(tmp_path / "absent.json", "SQuAD file not found")


def test_not_json(tmp_path):
    check_error(write(tmp_path, '{"data": [}'), "not JSON", "line 1")


def test_not_utf8(tmp_path):
    path = tmp_path / "latin.json"
    path.write_bytes(b'{"data": "caf\xe9"}')
    check_error(path, "not UTF-8")


@pytest.mark.parametrize("mutate, fragments", [
    (lambda d: d.pop("data"), ["the top level has no 'data' key"]),
    (lambda d: d["data"][0].pop("paragraphs"), ["data[0] has no 'paragraphs' key"]),
    (lambda d: d["data"][0]["paragraphs"][0].pop("context"), ["data[0].paragraphs[0] has no 'context' key"]),
    (lambda d: d["data"][0]["paragraphs"][0].pop("qas"), ["data[0].paragraphs[0] has no 'qas' key"]),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].pop("question"),
     ["data[0].paragraphs[0].qas[0] has no 'question' key"]),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].pop("id"), ["qas[0] has no 'id' key"]),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].pop("answer_start"),
     ["qas[0].answers[0] (id q1) has no 'answer_start' key"]),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(answer_start="10"),
     ["['answer_start'] is a str, expected int"]),
    (lambda d: d["data"][0]["paragraphs"][0].update(qas={}), ["['qas'] is a dict, expected list"]),
    (lambda d: d["data"].append([]), ["data[1] is a list, expected an object"]),
])
def test_wrong_structure(tmp_path, mutate, fragments):
    doc = squad()
    mutate(doc)
    check_error(write(tmp_path, doc), *fragments)


def test_top_level_not_an_object(tmp_path):
    check_error(write(tmp_path, "[1, 2]"), "the top level is a list, expected an object")


@pytest.mark.parametrize("answer, start", [("north", 9), ("north", 30), ("south", 10), ("north", -1)])
def test_answer_not_at_answer_start(tmp_path, answer, start):
    message = check_error(write(tmp_path, squad(answer=answer, start=start)),
                          f"answer '{answer}' is not at answer_start {start}", "(id q1)")
    assert "found" in message


def test_answer_check_can_be_turned_off(tmp_path):
    (example,) = read_squad(write(tmp_path, squad(answer="south", start=10)), check_answers=False)
    assert example.answers[0].text == "south" and example.start_position is None


def test_what_squad_and_calibration_must_not_take(tmp_path):
    """Each was accepted without a word (#14): 8 predictions for 12 scored questions, an empty question, a v2.0
    file scored as v1.1 (unanswerable questions counted wrong), a file of no questions scored 0."""
    doc = squad()
    qas = doc["data"][0]["paragraphs"][0]["qas"]
    qas.append(dict(qas[0], question="And where else?"))
    check_error(write(tmp_path, doc), "data[0].paragraphs[0].qas[1]: question id 'q1' is also "
                                      "data[0].paragraphs[0].qas[0]'s")
    check_error(write(tmp_path, squad(question="  ")), "qas[0] (id q1): the question is empty")
    v2 = squad()
    v2["version"] = "v2.0"
    check_error(write(tmp_path, v2), "is a SQuAD v2.0 file")
    check_error(write(tmp_path, squad(answers=[], is_impossible=True)), "an unanswerable question (SQuAD v2.0)")
    check_error(write(tmp_path, squad(answers=[])), "no answer to score against")
    empty = squad()
    empty["data"][0]["paragraphs"][0]["qas"] = []
    check_error(write(tmp_path, empty), "no questions in the file")
    # Calibration reads no answers: a v2.0 file's questions are questions all the same.
    (example,) = read_squad(write(tmp_path, squad(answers=[], is_impossible=True)), check_answers=False)
    assert example.qas_id == "q1"


# ---- the project's pydoc QA files (calibration and evaluation) ----

PYDOC_DIR = Path(__file__).parents[1] / "calibrate" / "data"
PYDOC_FILES = ("pydoc_qa_calib.json", "pydoc_qa_eval.json")


@pytest.fixture(scope="module")
def pydoc_examples():
    return [read_squad(PYDOC_DIR / name) for name in PYDOC_FILES]  # answers checked against answer_start


def test_pydoc_files_are_large_enough_and_separate(pydoc_examples):
    calib, evaluation = pydoc_examples
    assert len(calib) >= 110 and len(evaluation) >= 110
    assert not {e.context_text for e in calib} & {e.context_text for e in evaluation}
    assert not {e.qas_id for e in calib} & {e.qas_id for e in evaluation}
    for e in calib + evaluation:
        assert 120 <= len(e.doc_words) <= 300
        assert len(e.answers) == 1 and 1 <= len(e.answers[0].text.split()) <= 12


def test_pydoc_files_regenerate_byte_identical(tmp_path):
    import importlib.util
    import sys

    recorded = json.loads((PYDOC_DIR / PYDOC_FILES[0]).read_text(encoding="utf-8"))["version"]
    here = f"Python {sys.version_info.major}.{sys.version_info.minor} "
    if here not in recorded:
        pytest.skip(f"the files were made from another Python's documentation ({recorded})")
    spec = importlib.util.spec_from_file_location("make_pydoc_qa", PYDOC_DIR / "make_pydoc_qa.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    for name in PYDOC_FILES:
        assert (tmp_path / name).read_bytes() == (PYDOC_DIR / name).read_bytes(), name
