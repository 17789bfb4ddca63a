"""SQuAD questions -> features -> logits on a backend -> answers: the loop `bertrt squad`, `bertrt infer` and
`bertrt calibrate evaluate` share.

Features run in batches of ``batch`` (a backend splits or pads them to what it takes); their logits come back
as one float32 array [features, seq, 2] in feature order, so several backends can be scored on the same
features and their answers compared.
"""

from __future__ import annotations

import numpy as np

from bertrt.progress import Progress, task
from bertrt.run.features import Feature, examples_features, stack_features
from bertrt.run.postprocess import MAX_ANSWER_LENGTH, N_BEST_SIZE, Prediction, predict_answer


def feature_logits(backend, features: list[Feature], *, seq: int, batch: int = 8,
                   progress: Progress | None = None, label: str | None = None) -> np.ndarray:
    """Logits float32 [len(features), seq, 2] of the features, run ``batch`` at a time."""
    out = np.zeros((len(features), seq, 2), np.float32)
    with task(progress, label or f"inference ({backend.name})", len(features), "features") as advance:
        for start in range(0, len(features), batch):
            chunk = features[start:start + batch]
            out[start:start + len(chunk)] = backend.run(stack_features(chunk))
            advance(len(chunk))
    return out


def answers(examples, per_example: list[list[Feature]], logits: np.ndarray, *, n_best_size: int = N_BEST_SIZE,
            max_answer_length: int = MAX_ANSWER_LENGTH) -> dict[str, Prediction]:
    """{qas_id: Prediction} from the logits of every example's features (flattened in example order)."""
    predictions = {}
    row = 0
    for example, feats in zip(examples, per_example):
        rows = logits[row:row + len(feats)]
        row += len(feats)
        predictions[example.qas_id] = predict_answer(
            example.doc_words, feats, list(rows[:, :, 0]), list(rows[:, :, 1]),
            n_best_size=n_best_size, max_answer_length=max_answer_length)
    return predictions


def predict_examples(backend, tokenizer, examples, *, seq: int, batch: int = 8,
                     progress: Progress | None = None, n_best_size: int = N_BEST_SIZE,
                     max_answer_length: int = MAX_ANSWER_LENGTH) -> dict:
    """{qas_id: Prediction} for examples (``qas_id``, ``question_text``, ``doc_words``)."""
    per_example = examples_features(tokenizer, examples, max_seq_length=seq, progress=progress)
    flat = [f for feats in per_example for f in feats]
    logits = feature_logits(backend, flat, seq=seq, batch=batch, progress=progress)
    return answers(examples, per_example, logits, n_best_size=n_best_size, max_answer_length=max_answer_length)
