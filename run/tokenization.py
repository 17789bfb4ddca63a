"""BERT's uncased WordPiece tokenizer: the `tokenizers` library's ``BertWordPieceTokenizer``.

It reproduces Google's ``FullTokenizer(do_lower_case=True)``: the BERT normalizer cleans control characters,
spaces out CJK characters, strips accents and lower-cases; the BERT pre-tokenizer splits on whitespace and
punctuation; WordPiece matches the longest vocabulary piece first. Two settings differ from the library's
defaults to match Google: words of up to 200 characters are split (the library stops at 100), and the
vocabulary is read as Google's reader reads it (``read_vocab``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from tokenizers.implementations import BertWordPieceTokenizer

from bertrt.errors import BertrtError

UNK = "[UNK]"
CLS = "[CLS]"
SEP = "[SEP]"
MAX_CHARS_PER_WORD = 200  # longer words become [UNK], as in Google's WordPiece


@functools.lru_cache(maxsize=1)
def _basic() -> BertWordPieceTokenizer:
    return BertWordPieceTokenizer(lowercase=True)  # no vocabulary: its normalizer and pre-tokenizer


def basic_tokenize(text: str) -> list[str]:
    """Google's BasicTokenizer (lower case): normalized words and punctuation, before WordPiece."""
    t = _basic()
    return [word for word, _ in t.pre_tokenizer.pre_tokenize_str(t.normalizer.normalize_str(text))]


def read_vocab(path: str | os.PathLike) -> dict[str, int]:
    """vocab.txt: one token a line, id = line number (surrounding whitespace stripped, as Google's reader does)."""
    path = Path(path)
    if not path.is_file():
        raise BertrtError("vocabulary file not found", path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise BertrtError(f"vocabulary file is not UTF-8 text ({e.reason} at byte {e.start})", path) from None
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    vocab = {}
    for index, line in enumerate(lines):
        vocab[line.strip()] = index
    if not vocab or vocab.keys() == {""}:
        raise BertrtError("vocabulary file is empty", path)
    for token in (UNK, CLS, SEP):
        if token not in vocab:
            raise BertrtError(f"vocabulary has no {token} token; it is not a BERT vocab.txt", path)
    return vocab


class WordPieceTokenizer:
    """Uncased BERT WordPiece over a vocab.txt."""

    def __init__(self, vocab_path: str | os.PathLike):
        self.vocab_path = Path(vocab_path)
        self.vocab = read_vocab(self.vocab_path)
        self._tokenizer = BertWordPieceTokenizer(self.vocab, unk_token=UNK, sep_token=SEP, cls_token=CLS,
                                                 lowercase=True)
        self._tokenizer.model.max_input_chars_per_word = MAX_CHARS_PER_WORD

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of a text (a question, or one document word)."""
        return self._tokenizer.encode(text, add_special_tokens=False).tokens

    def tokenize_words(self, words: list[str]) -> list[list[str]]:
        """Word pieces of each whitespace-split word, in one call (a word of only control characters gets none)."""
        if not words:
            return []
        encoding = self._tokenizer.encode(words, is_pretokenized=True, add_special_tokens=False)
        pieces: list[list[str]] = [[] for _ in words]
        for token, word_id in zip(encoding.tokens, encoding.word_ids):
            pieces[word_id].append(token)
        return pieces

    def convert_tokens_to_ids(self, tokens: list[str]) -> list[int]:
        return [self.vocab[token] for token in tokens]


@functools.lru_cache(maxsize=4)
def load_tokenizer(vocab_path: str | os.PathLike) -> WordPieceTokenizer:
    """A tokenizer per vocab file, built once (the vocabulary takes a moment to load)."""
    return WordPieceTokenizer(vocab_path)


def vocab_or_default(vocab: str | os.PathLike | None) -> str | os.PathLike:
    """``vocab``, or BERT's uncased vocab.txt (what the zoo's models and NGC's checkpoints use) when it is None."""
    if vocab is not None:
        return vocab
    from bertrt.convert.zoo import vocab_path

    return vocab_path()
