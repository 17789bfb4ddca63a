"""Start/end logits of an example's features → its answer text, as the former demo's get_predictions does.

The best ``n_best_size`` starts × best ends of every feature are filtered (inside the passage, start in its
best-context window, end ≥ start, at most ``max_answer_length`` tokens), ranked by start + end logit, mapped
back to the passage's words and aligned to their original casing and punctuation. There is no null answer:
when nothing survives, the answer is "empty".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bertrt.run.features import Feature
from bertrt.run.tokenization import basic_tokenize

N_BEST_SIZE = 20
MAX_ANSWER_LENGTH = 30
NO_ANSWER = "empty"


@dataclass
class Candidate:
    text: str
    probability: float
    start_logit: float
    end_logit: float


@dataclass
class Prediction:
    text: str
    probability: float
    nbest: list[Candidate]
    answered: bool = True  # False: no span survived, and text is the NO_ANSWER placeholder (for predictions.json)


def best_indexes(logits: np.ndarray, n: int) -> list[int]:
    """Indexes of the n largest logits, largest first; ties keep the lower index first."""
    return [int(i) for i in np.argsort(-np.asarray(logits, dtype=np.float64), kind="stable")[:n]]


def softmax(scores: list[float]) -> list[float]:
    if not scores:
        return []
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def _strip_spaces(text: str) -> tuple[str, dict[int, int]]:
    """text without spaces, and each of its characters' index in text."""
    chars, index = [], {}
    for i, c in enumerate(text):
        if c != " ":
            index[len(chars)] = i
            chars.append(c)
    return "".join(chars), index


def get_final_text(pred_text: str, orig_text: str) -> str:
    """The part of orig_text (the passage words, joined by spaces) that the lower-cased pred_text is.

    Both are compared without spaces, character by character; when they cannot be aligned (the
    normalizer changed the text's length) the whole orig_text is the answer.
    """
    tok_text = " ".join(basic_tokenize(orig_text))
    start = tok_text.find(pred_text)
    if start == -1:
        return orig_text
    end = start + len(pred_text) - 1

    orig_ns, orig_ns_to_s = _strip_spaces(orig_text)
    tok_ns, tok_ns_to_s = _strip_spaces(tok_text)
    if len(orig_ns) != len(tok_ns):
        return orig_text
    tok_s_to_ns = {s: ns for ns, s in tok_ns_to_s.items()}

    orig_start = orig_ns_to_s.get(tok_s_to_ns.get(start, -1))
    orig_end = orig_ns_to_s.get(tok_s_to_ns.get(end, -1))
    if orig_start is None or orig_end is None:
        return orig_text
    return orig_text[orig_start:orig_end + 1]


def _valid(feature: Feature, start: int, end: int, max_answer_length: int) -> bool:
    n = len(feature.tokens)
    return (start < n and end < n
            and start in feature.token_to_orig_map and end in feature.token_to_orig_map
            and feature.token_is_max_context.get(start, False)
            and end >= start
            and end - start + 1 <= max_answer_length)


def predict_answer(doc_words: list[str], features: list[Feature], start_logits: list[np.ndarray],
                   end_logits: list[np.ndarray], *, n_best_size: int = N_BEST_SIZE,
                   max_answer_length: int = MAX_ANSWER_LENGTH) -> Prediction:
    """The answer of one example from its features and each feature's start and end logits ([seq] each)."""
    if not (len(features) == len(start_logits) == len(end_logits)):
        raise ValueError(f"{len(features)} features but {len(start_logits)} start and "
                         f"{len(end_logits)} end logit rows")
    prelim = []  # (feature index, start, end, start logit, end logit)
    for f, (feature, starts, ends) in enumerate(zip(features, start_logits, end_logits)):
        starts = np.asarray(starts, dtype=np.float64).reshape(-1)
        ends = np.asarray(ends, dtype=np.float64).reshape(-1)
        for start in best_indexes(starts, n_best_size):
            for end in best_indexes(ends, n_best_size):
                if _valid(feature, start, end, max_answer_length):
                    prelim.append((f, start, end, float(starts[start]), float(ends[end])))
    prelim.sort(key=lambda p: p[3] + p[4], reverse=True)  # stable: ties keep feature/start/end order

    nbest: list[tuple[str, float, float]] = []
    seen = set()
    for f, start, end, start_logit, end_logit in prelim:
        if len(nbest) >= n_best_size:
            break
        feature = features[f]
        tok_text = " ".join(feature.tokens[start:end + 1]).replace(" ##", "").replace("##", "")
        tok_text = " ".join(tok_text.split())
        orig_words = doc_words[feature.token_to_orig_map[start]:feature.token_to_orig_map[end] + 1]
        text = get_final_text(tok_text, " ".join(orig_words))
        if text in seen:
            continue
        seen.add(text)
        nbest.append((text, start_logit, end_logit))

    answered = bool(nbest)
    if not nbest:
        nbest.append((NO_ANSWER, 0.0, 0.0))
    probs = softmax([s + e for _, s, e in nbest])
    candidates = [Candidate(text, p, s, e) for (text, s, e), p in zip(nbest, probs)]
    return Prediction(candidates[0].text, candidates[0].probability, candidates, answered)
