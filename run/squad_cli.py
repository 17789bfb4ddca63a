"""``bertrt squad``: predict a SQuAD v1.1 file on any backend, write predictions.json, score EM/F1."""

from __future__ import annotations

import json

import click

from bertrt.options import (batch_option, log, max_answer_length_option, out_option, report_option, reporter,
                            squad_json_option)
from bertrt.run.cli_options import model_options, open_from_options, resolve_seq, text_options, tokenizer_for


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
def squad(engine, onnx, amax, runtime, squad_json, out, vocab, seq, batch, limit, n_best, max_answer_length, report_path):
    """Answer every question of a SQuAD v1.1 file and score exact match and F1.

    With --amax, a fused graph runs as TensorRT 10 runs it in implicit INT8: its INT8 plugins with the
    ranges' scales, and every weight GEMM whose input and output have a range in INT8 (activation per tensor,
    weight per output channel), the same simulation as `bertrt calibrate evaluate`.
    """
    from bertrt.atomic import write_text
    from bertrt.run.squad_data import read_squad
    from bertrt.run.squad_metric import evaluate
    from bertrt.run.squad_predict import predict_examples

    examples = read_squad(squad_json)
    if limit is not None:
        examples = examples[:limit]
    tokenizer = tokenizer_for(vocab)
    with open_from_options(engine, onnx, amax, runtime) as backend:
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
