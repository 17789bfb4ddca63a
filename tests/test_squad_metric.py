"""The SQuAD v1.1 metric against hand-computed EM and F1."""

from pathlib import Path

import pytest

from bertrt.run.squad_data import Answer, SquadExample, read_squad
from bertrt.run.squad_metric import evaluate, exact_match, f1, normalize_answer

SAMPLE = Path(__file__).parent / "data" / "squad_sample.json"


@pytest.mark.parametrize("text, normalized", [
    ("The Cat", "cat"),  # lower case, article dropped
    ("a cat, an owl & the dog!", "cat owl dog"),  # punctuation and every article
    ("  several \t spaces\n here ", "several spaces here"),  # white space collapsed
    ("Theater another thesis", "theater another thesis"),  # articles only as whole words
    ("the-end", "theend"),  # punctuation goes first, so "the-end" is one word, not an article
    ("(1899).", "1899"),
    ("Élise's", "élises"),  # non-ASCII letters stay; the apostrophe goes
])
def test_normalize(text, normalized):
    assert normalize_answer(text) == normalized


def test_exact_match_rules():
    assert exact_match("the Senne heath", "Senne Heath") == 1.0
    assert exact_match("Senne heath!", "senne heath") == 1.0
    assert exact_match("Senne", "Senne heath") == 0.0
    assert exact_match("The Dortmund-Ems Canal.", "dortmund-ems canal") == 1.0  # "dortmundems canal" both


def test_f1_hand_computed():
    # pred {senne, heath, north} vs truth {senne, heath}: overlap 2, P 2/3, R 1 → F1 = 0.8
    assert f1("the Senne heath north", "Senne heath") == pytest.approx(0.8)
    # repeated tokens count up to their multiplicity: pred [x, x, y], truth [x, y, y]:
    # overlap min(2,1) + min(1,2) = 2, P 2/3, R 2/3 → 2/3
    assert f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert f1("nothing shared", "other words") == 0.0
    assert f1("", "words") == 0.0
    assert f1("The", "a") == 0.0  # both normalize to nothing: no overlap → 0


def test_evaluate_max_over_truths_and_totals():
    def ex(qid, *truths):
        return SquadExample(qid, "?", "", [], [Answer(t, 0) for t in truths])

    examples = [ex("q1", "Senne heath", "the Senne heath"),   # pred exact for both → EM 1, F1 1
                ex("q2", "1899", "in 1899"),                  # "1899 AD": vs "1899" P 1/2 R 1 → 2/3;
                                                               #  vs "in 1899" P 1/2 R 1/2 → 1/2; max 2/3
                ex("q3", "Hase"),                             # no prediction → 0, 0
                ex("q4", "a starter", "starter culture")]     # "Starter" EM with the first (article) → 1, 1
    predictions = {"q1": "Senne Heath", "q2": "1899 AD", "q4": "Starter"}
    result = evaluate(examples, predictions)
    assert result["total"] == 4 and result["unanswered"] == 1
    assert result["exact_match"] == pytest.approx(100 * 2 / 4)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0 + 1) / 4)


def test_evaluate_sample_file_with_its_own_answers():
    examples = read_squad(SAMPLE)
    perfect = {e.qas_id: e.answers[0].text for e in examples}
    assert evaluate(examples, perfect) == {"exact_match": 100.0, "f1": 100.0, "total": 12, "unanswered": 0}
