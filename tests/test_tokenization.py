"""WordPiece against hand-written expectations (pieces looked up in BERT's uncased vocab.txt)."""

import pytest

from bertrt.convert import zoo
from bertrt.errors import BertrtError
from bertrt.run.tokenization import WordPieceTokenizer, basic_tokenize, load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(zoo.vocab_path())


@pytest.mark.parametrize("text, expected", [
    # accents are stripped after NFD, then lower-cased
    ("Café résumé naïve", ["cafe", "resume", "naive"]),
    # every punctuation character is its own token, the apostrophe included
    ("don't... (yes)!", ["don", "'", "t", ".", ".", ".", "(", "yes", ")", "!"]),
    # each CJK character is a word; 字 is not in the vocabulary
    ("中文字", ["中", "文", "[UNK]"]),
    # greedy longest match, continuation pieces carry ##
    ("unaffable", ["una", "##ffa", "##ble"]),
    ("Supercalifragilisticexpialidocious",
     ["super", "##cal", "##if", "##rag", "##ilis", "##tic", "##ex", "##pia", "##lid", "##oc", "##ious"]),
    # a word longer than 200 characters is one [UNK]; punctuation after it is still split off
    ("x" * 201 + "!", ["[UNK]", "!"]),
    # U+202F (narrow no-break space) and U+00A0 are white space
    ("ten\u202fkm", ["ten", "km"]),
    ("Hello\u00a0World", ["hello", "world"]),
    # NUL, BEL, U+FFFD and the zero-width space (format, Cf) are removed; tab separates words
    ("a\x00b\x07c\u200bd\tz", ["abc", "##d", "z"]),
    ("\ufffdok", ["ok"]),
])
def test_tricky_inputs(tok, text, expected):
    assert tok.tokenize(text) == expected


def test_length_limit_is_200_characters(tok):
    # 200 'a's fit: "aaa" then 98 "##aa" then "##a" (no "aaaa" or "##aaa" in the vocabulary)
    assert tok.tokenize("a" * 200) == ["aaa"] + ["##aa"] * 98 + ["##a"]


def test_ids_are_vocab_line_numbers(tok):
    # vocab.txt lines (1-based): [PAD] 1, [UNK] 101, [CLS] 102, [SEP] 103, "the" 1997, "cafe" 7669
    assert tok.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cafe"]) == \
        [0, 100, 101, 102, 1996, 7668]


def test_tokenize_words_keeps_word_boundaries(tok):
    words = ["Café", "\x07", "don't", "中文", "naïve."]
    assert tok.tokenize_words(words) == [["cafe"], [], ["don", "'", "t"], ["中", "文"], ["naive", "."]]
    assert tok.tokenize_words([]) == []


def test_basic_tokenize_keeps_whole_words():
    assert basic_tokenize("Unaffable Café, (yes)!") == ["unaffable", "cafe", ",", "(", "yes", ")", "!"]


def test_missing_vocab(tmp_path):
    with pytest.raises(BertrtError, match="vocabulary file not found") as e:
        WordPieceTokenizer(tmp_path / "nope.txt")
    assert str(tmp_path / "nope.txt") in str(e.value)


def test_empty_vocab(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("")
    with pytest.raises(BertrtError, match="vocabulary file is empty"):
        WordPieceTokenizer(path)


def test_vocab_without_special_tokens(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("hello\nworld\n")
    with pytest.raises(BertrtError, match=r"no \[UNK\] token"):
        WordPieceTokenizer(path)
