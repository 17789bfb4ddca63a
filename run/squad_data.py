"""Read SQuAD v1.1 JSON (data → paragraphs → context, qas → id, question, answers) into examples."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from bertrt.errors import BertrtError
from bertrt.json_io import read_json
from bertrt.run.features import split_doc_words


@dataclass
class Answer:
    text: str
    answer_start: int  # character offset in the context


@dataclass
class SquadExample:
    qas_id: str
    question_text: str
    context_text: str
    doc_words: list[str]
    answers: list[Answer] = field(default_factory=list)
    title: str = ""
    # Word indices of the first answer in doc_words (None when there is no answer).
    start_position: int | None = None
    end_position: int | None = None


def _get(obj, key: str, kind, where: str, path: Path):
    if not isinstance(obj, dict):
        raise BertrtError(f"{where} is a {type(obj).__name__}, expected an object", path)
    if key not in obj:
        raise BertrtError(f"{where} has no '{key}' key", path)
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise BertrtError(f"{where}['{key}'] is a {type(value).__name__}, expected {names}", path)
    return value


def load_json(path: str | os.PathLike):
    return read_json(path, "SQuAD file")


def examples_from_dataset(dataset, path: str | os.PathLike = "<data>", *,
                          check_answers: bool = True) -> list[SquadExample]:
    """Examples of a parsed SQuAD document, in file order; a BertrtError naming the place for a question that is
    empty or whose id another has already (predictions are keyed by id), or a file without questions.

    With check_answers (to score), every question has an answer whose text sits at its answer_start in the
    context, and a SQuAD v2.0 file (unanswerable questions) is refused: the metric here is v1.1's.
    """
    path = Path(path)
    data = _get(dataset, "data", list, "the top level", path)
    if check_answers and str(dataset.get("version", "")).lstrip("vV").startswith("2"):
        raise BertrtError(f"is a SQuAD {dataset['version']} file (with unanswerable questions); bertrt answers and "
                          "scores SQuAD v1.1", path)
    examples = []
    seen: dict[str, str] = {}  # question id -> where it was
    for a, article in enumerate(data):
        where = f"data[{a}]"
        paragraphs = _get(article, "paragraphs", list, where, path)
        title = article.get("title", "")
        for p, paragraph in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            context = _get(paragraph, "context", str, where, path)
            qas = _get(paragraph, "qas", list, where, path)
            doc_words, char_to_word = split_doc_words(context)
            for q, qa in enumerate(qas):
                where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                qas_id = str(_get(qa, "id", (str, int), where, path))
                if qas_id in seen:  # predictions are keyed by id: a second question would overwrite the first
                    raise BertrtError(f"{where}: question id {qas_id!r} is also {seen[qas_id]}'s", path)
                seen[qas_id] = where
                question = _get(qa, "question", str, where, path)
                if not question.strip():
                    raise BertrtError(f"{where} (id {qas_id}): the question is empty", path)
                if check_answers and (qa.get("is_impossible") or "plausible_answers" in qa):
                    raise BertrtError(f"{where} (id {qas_id}): an unanswerable question (SQuAD v2.0); bertrt answers "
                                      "and scores SQuAD v1.1", path)
                answers = []
                for n, answer in enumerate(_get(qa, "answers", list, where, path)):
                    where_n = f"{where}.answers[{n}] (id {qas_id})"
                    text = _get(answer, "text", str, where_n, path)
                    start = _get(answer, "answer_start", int, where_n, path)
                    if check_answers and (start < 0 or context[start:start + len(text)] != text or not text):
                        found = context[max(start, 0):max(start, 0) + len(text)]
                        raise BertrtError(f"{where_n}: answer {text!r} is not at answer_start {start} of the "
                                          f"context (found {found!r})", path)
                    answers.append(Answer(text, start))
                if check_answers and not answers:
                    raise BertrtError(f"{where} (id {qas_id}): no answer to score against (SQuAD v1.1 gives every "
                                      "question one)", path)
                example = SquadExample(qas_id, question, context, doc_words, answers, title)
                if answers and check_answers:
                    first = answers[0]
                    example.start_position = char_to_word[first.answer_start]
                    example.end_position = char_to_word[first.answer_start + len(first.text) - 1]
                examples.append(example)
    if not examples:
        raise BertrtError("no questions in the file", path)
    return examples


def read_squad(path: str | os.PathLike, *, check_answers: bool = True) -> list[SquadExample]:
    """Examples of a SQuAD v1.1 file; a BertrtError naming the file for anything malformed."""
    return examples_from_dataset(load_json(path), path, check_answers=check_answers)
