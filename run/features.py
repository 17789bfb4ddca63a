"""SQuAD question + passage → fixed-length model features, as Google's run_squad.py makes them.

A passage longer than the sequence is cut into overlapping windows (doc spans) that start ``doc_stride``
word pieces apart; each window is one feature ``[CLS] query [SEP] span [SEP]`` padded with zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bertrt.contract import CANONICAL_INPUTS, DEFAULT_SEQ
from bertrt.errors import BertrtError
from bertrt.progress import Progress, iterate
from bertrt.run.tokenization import CLS, SEP, WordPieceTokenizer

DOC_STRIDE = 128
MAX_QUERY_LENGTH = 64

_WHITESPACE = frozenset(" \t\r\n\u202f")  # run_squad.py's is_whitespace, with the narrow no-break space


def split_doc_words(text: str) -> tuple[list[str], list[int]]:
    """The passage's whitespace-separated words, and for each character the index of its word.

    A whitespace character maps to the word before it (-1 before the first word), as run_squad.py does.
    """
    words: list[str] = []
    char_to_word: list[int] = []
    prev_is_space = True
    for c in text:
        if c in _WHITESPACE:
            prev_is_space = True
        else:
            if prev_is_space:
                words.append(c)
            else:
                words[-1] += c
            prev_is_space = False
        char_to_word.append(len(words) - 1)
    return words, char_to_word


@dataclass
class Feature:
    """One window of one example: the model inputs and the maps back to the passage's words."""

    example_index: int
    doc_span_index: int
    tokens: list[str]
    token_to_orig_map: dict[int, int]  # feature position → passage word index (span tokens only)
    token_is_max_context: dict[int, bool]  # feature position → this window is the token's best context
    input_ids: np.ndarray  # int32 [seq]
    segment_ids: np.ndarray  # int32 [seq]
    input_mask: np.ndarray  # int32 [seq]
    doc_span: tuple[int, int] = field(default=(0, 0))  # (start, length) in the passage's word pieces


def doc_spans(num_tokens: int, max_tokens_for_doc: int, doc_stride: int) -> list[tuple[int, int]]:
    """(start, length) windows over the passage's word pieces; the last one reaches the end."""
    spans = []
    start = 0
    while start < num_tokens:
        length = min(num_tokens - start, max_tokens_for_doc)
        spans.append((start, length))
        if start + length == num_tokens:
            break
        start += min(length, doc_stride)
    return spans


def is_max_context(spans: list[tuple[int, int]], span_index: int, position: int) -> bool:
    """Whether span_index is the window where the token at position has the most context.

    Score = min(left, right context) + 0.01 · window length; the first window with the best score wins.
    """
    best_score, best_index = None, None
    for index, (start, length) in enumerate(spans):
        end = start + length - 1
        if position < start or position > end:
            continue
        score = min(position - start, end - position) + 0.01 * length
        if best_score is None or score > best_score:
            best_score, best_index = score, index
    return best_index == span_index


def example_features(tokenizer: WordPieceTokenizer, question: str, doc_words: list[str], *,
                     max_seq_length: int = DEFAULT_SEQ, doc_stride: int = DOC_STRIDE,
                     max_query_length: int = MAX_QUERY_LENGTH, example_index: int = 0) -> list[Feature]:
    """The features of one question over one passage (given as its whitespace-split words)."""
    if doc_stride < 1:
        raise BertrtError(f"doc stride must be at least 1, got {doc_stride}")
    query_tokens = tokenizer.tokenize(question)[:max_query_length]
    max_tokens_for_doc = max_seq_length - len(query_tokens) - 3
    if max_tokens_for_doc < 1:
        raise BertrtError(f"sequence length {max_seq_length} leaves no room for the passage after a "
                          f"{len(query_tokens)}-token question; use a longer sequence or a shorter max query length")

    tok_to_orig: list[int] = []
    doc_tokens: list[str] = []
    for word_index, pieces in enumerate(tokenizer.tokenize_words(doc_words)):
        tok_to_orig.extend([word_index] * len(pieces))
        doc_tokens.extend(pieces)

    spans = doc_spans(len(doc_tokens), max_tokens_for_doc, doc_stride)
    features = []
    for span_index, (start, length) in enumerate(spans):
        tokens = [CLS, *query_tokens, SEP]
        segment_ids = [0] * len(tokens)
        token_to_orig_map = {}
        token_is_max_context = {}
        for position in range(start, start + length):
            token_to_orig_map[len(tokens)] = tok_to_orig[position]
            token_is_max_context[len(tokens)] = is_max_context(spans, span_index, position)
            tokens.append(doc_tokens[position])
        tokens.append(SEP)
        segment_ids += [1] * (length + 1)

        pad = max_seq_length - len(tokens)
        input_ids = np.array(tokenizer.convert_tokens_to_ids(tokens) + [0] * pad, dtype=np.int32)
        features.append(Feature(
            example_index=example_index, doc_span_index=span_index, tokens=tokens,
            token_to_orig_map=token_to_orig_map, token_is_max_context=token_is_max_context,
            input_ids=input_ids,
            segment_ids=np.array(segment_ids + [0] * pad, dtype=np.int32),
            input_mask=np.array([1] * len(tokens) + [0] * pad, dtype=np.int32),
            doc_span=(start, length)))
    return features


def examples_features(tokenizer: WordPieceTokenizer, examples, *, max_seq_length: int = DEFAULT_SEQ,
                      doc_stride: int = DOC_STRIDE, max_query_length: int = MAX_QUERY_LENGTH,
                      progress: Progress | None = None) -> list[list[Feature]]:
    """Features of each example (anything with ``question_text`` and ``doc_words``), in example order."""
    out = []
    for index, example in enumerate(iterate(progress, examples, "features", "questions")):
        out.append(example_features(tokenizer, example.question_text, example.doc_words,
                                    max_seq_length=max_seq_length, doc_stride=doc_stride,
                                    max_query_length=max_query_length, example_index=index))
    return out


def stack_features(features: list[Feature]) -> dict[str, np.ndarray]:
    """The canonical model's inputs for a batch of features: int32 [batch, seq] each."""
    if not features:
        raise ValueError("no features to stack")
    return {name: np.stack([getattr(f, name) for f in features]).astype(np.int32, copy=False)
            for name in CANONICAL_INPUTS}
