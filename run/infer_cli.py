"""``bertrt infer``: answer questions about a passage, as the former demo's inference.py did."""

from __future__ import annotations

import time
from dataclasses import dataclass

import click

from bertrt.errors import BertrtError
from bertrt.options import max_answer_length_option
from bertrt.run.cli_options import model_options, open_from_options, resolve_seq, text_options, tokenizer_for


@dataclass
class Question:
    """One question over the passage, shaped like a SQuAD example for the shared prediction path."""

    qas_id: str
    question_text: str
    doc_words: list[str]


def answer_questions(backend, tokenizer, passage: str, questions: list[str], *, seq: int, n_best_size: int = 20,
                     max_answer_length: int = 30) -> list:
    """One Prediction (text, probability, nbest) per question, in order."""
    from bertrt.run.features import split_doc_words
    from bertrt.run.squad_predict import predict_examples

    words, _ = split_doc_words(passage)
    if not words:
        raise BertrtError("the passage is empty")
    empty = [i + 1 for i, q in enumerate(questions) if not q.strip()]
    if empty:
        raise BertrtError(f"question {empty[0]} is empty")
    examples = [Question(str(i), q, words) for i, q in enumerate(questions)]
    predictions = predict_examples(backend, tokenizer, examples, seq=seq, n_best_size=n_best_size,
                                   max_answer_length=max_answer_length)
    return [predictions[e.qas_id] for e in examples]


def _passage(passage, passage_file):
    if (passage is None) == (passage_file is None):
        raise click.UsageError("give exactly one of -p PASSAGE or --passage-file FILE")
    if passage_file is None:
        return passage
    try:
        with open(passage_file, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise BertrtError(f"cannot read the passage: {e.strerror}", passage_file) from None
    except UnicodeDecodeError as e:
        raise BertrtError(f"the passage is not UTF-8 text ({e.reason} at byte {e.start})", passage_file) from None


@click.command("infer")
@model_options
@click.option("-p", "--passage", default=None, help="The passage (paragraph) to answer from.")
@click.option("--passage-file", type=click.Path(dir_okay=False), default=None, help="Read the passage from a file.")
@click.option("-q", "--question", "questions", multiple=True, required=True, help="A question; repeat for more.")
@text_options
@click.option("--n-best", "n_best", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many candidate answers to show per question.")
@max_answer_length_option
def infer(engine, onnx, amax, runtime, passage, passage_file, questions, vocab, seq, n_best, max_answer_length):
    """Answer each question about the passage: the answer and its probability."""
    text = _passage(passage, passage_file)
    tokenizer = tokenizer_for(vocab)
    with open_from_options(engine, onnx, amax, runtime) as backend:
        seq = resolve_seq(backend, seq)
        start = time.perf_counter()
        predictions = answer_questions(backend, tokenizer, text, list(questions), seq=seq,
                                       n_best_size=max(20, n_best), max_answer_length=max_answer_length)
        elapsed = time.perf_counter() - start
    for question, prediction in zip(questions, predictions):
        click.echo(f"Question: {question}")
        if not prediction.answered:  # not the placeholder as if it were an answer of probability 1
            click.echo(f"Answer: none: no span of the passage fits (start before end, at most {max_answer_length} "
                       "word pieces)")
            continue
        click.echo(f"Answer: {prediction.text!r} (probability {prediction.probability:.4f})")
        for rank, c in enumerate(prediction.nbest[1:n_best], start=2):
            click.echo(f"  {rank}. {c.text!r} (probability {c.probability:.4f})")
    click.echo(f"{len(questions)} question(s) on {backend.name} in {elapsed * 1000:.1f} ms", err=True)
