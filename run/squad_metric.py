"""The SQuAD v1.1 metric: exact match and token-overlap F1 against the best of the ground truths, ×100."""

from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower case, drop ASCII punctuation, drop the articles a/an/the, collapse white space."""
    text = text.lower()
    text = "".join(c for c in text if c not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1(prediction: str, truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(truth).split()
    same = sum((Counter(pred_tokens) & Counter(truth_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def best_over_truths(metric, prediction: str, truths: list[str]) -> float:
    return max((metric(prediction, t) for t in truths), default=0.0)


def _question_scores(examples, predictions: dict[str, str]):
    """(EM, F1) of each question in order, each 0 or 1 and in [0, 1]; None for a question without a prediction."""
    for example in examples:
        if example.qas_id not in predictions:
            yield None
            continue
        truths = [a.text for a in example.answers]
        prediction = predictions[example.qas_id]
        yield best_over_truths(exact_match, prediction, truths), best_over_truths(f1, prediction, truths)


def evaluate(examples, predictions: dict[str, str]) -> dict[str, float]:
    """EM and F1 (×100) over the examples (each with ``qas_id`` and ``answers``, see squad_data).

    A question without a prediction scores 0 and is counted in ``unanswered``.
    """
    total = em_sum = f1_sum = 0.0
    unanswered = 0
    for scores in _question_scores(examples, predictions):
        total += 1
        if scores is None:
            unanswered += 1
            continue
        em_sum += scores[0]
        f1_sum += scores[1]
    if total == 0:
        return {"exact_match": 0.0, "f1": 0.0, "total": 0, "unanswered": 0}
    return {"exact_match": 100.0 * em_sum / total, "f1": 100.0 * f1_sum / total,
            "total": int(total), "unanswered": unanswered}


def question_f1(examples, predictions: dict[str, str]) -> np.ndarray:
    """Per question F1 (×100, 0 without a prediction), in the examples' order: what ``evaluate`` averages."""
    return np.array([0.0 if s is None else 100.0 * s[1] for s in _question_scores(examples, predictions)])
