"""``bertrt squad``: predict a SQuAD v1.1 file on any backend, write predictions.json, score EM/F1."""

from __future__ import annotations

import json

import click
import numpy as np

from bertrt.options import (batch_option, log, max_answer_length_option, out_option, report_option, reporter,
                            squad_json_option)
from bertrt.progress import iterate
from bertrt.run.cli_options import model_options, open_from_options, resolve_seq, text_options, tokenizer_for


def predict_examples(backend, tokenizer, examples, *, seq: int, batch: int = 1, progress=None,
                     n_best_size: int = 20, max_answer_length: int = 30) -> dict:
    """{qas_id: Prediction} for examples (``qas_id``, ``question_text``, ``doc_words``), run in batches."""
    from bertrt.run.features import examples_features, stack_features
    from bertrt.run.postprocess import predict_answer

    per_example = examples_features(tokenizer, examples, max_seq_length=seq, progress=progress)
    flat = [f for feats in per_example for f in feats]
    logits = []
    chunks = range(0, len(flat), batch)
    for start in iterate(progress, chunks, f"inference ({backend.name})", "batches"):
        logits.append(backend.run(stack_features(flat[start:start + batch])))
    logits = np.concatenate(logits) if logits else np.zeros((0, seq, 2), np.float32)

    predictions = {}
    row = 0
    for example, feats in zip(examples, per_example):
        rows = logits[row:row + len(feats)]
        row += len(feats)
        predictions[example.qas_id] = predict_answer(
            example.doc_words, feats, list(rows[:, :, 0]), list(rows[:, :, 1]),
            n_best_size=n_best_size, max_answer_length=max_answer_length)
    return predictions


@click.command("squad")
@model_options
@squad_json_option("Questions to answer and score")
@out_option("Predictions JSON {question id: answer text}, for SQuAD's evaluate-v1.1.py.", default="predictions.json")
@text_options
@batch_option
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N questions.")
@click.option("--n-best", "n_best", type=click.IntRange(min=1), default=20, show_default=True,
              help="Start and end candidates per feature.")
@max_answer_length_option
@report_option("Also write the scores (EM, F1, counts) as JSON.")
def squad(engine, onnx, amax, squad_json, out, vocab, seq, batch, limit, n_best, max_answer_length, report_path):
    """Answer every question of a SQuAD v1.1 file and score exact match and F1."""
    from bertrt.atomic import write_text
    from bertrt.run.squad_data import read_squad
    from bertrt.run.squad_metric import evaluate

    examples = read_squad(squad_json)
    if limit is not None:
        examples = examples[:limit]
    tokenizer = tokenizer_for(vocab)
    with open_from_options(engine, onnx, amax) as backend:
        seq = resolve_seq(backend, seq)
        log(f"{len(examples)} questions, {backend!r}, seq {seq}, batch {batch}")
        predictions = predict_examples(backend, tokenizer, examples, seq=seq, batch=batch, progress=reporter(),
                                       n_best_size=n_best, max_answer_length=max_answer_length)
    texts = {qas_id: p.text for qas_id, p in predictions.items()}
    write_text(out, json.dumps(texts, indent=2, ensure_ascii=False) + "\n")
    scores = evaluate(examples, texts)
    if report_path:
        write_text(report_path, json.dumps(scores, indent=2, sort_keys=True) + "\n")
    click.echo(f"wrote {out}")
    click.echo(f"exact_match {scores['exact_match']:.2f}  f1 {scores['f1']:.2f}  ({scores['total']} questions)")
