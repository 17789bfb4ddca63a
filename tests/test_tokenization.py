"""WordPiece against hand-written expectations (pieces looked up in BERT's uncased vocab.txt) and against the
Hugging Face fast tokenizer of the fine-tuned minilm-squad model on real SQuAD text."""

import json

import pytest
from tokenizers import Tokenizer

from conftest import need_shared

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
    # special tokens written in the text stay whole, as in the tokenizer BERT SQuAD models are trained with
    ("a [SEP] b", ["a", "[SEP]", "b"]),
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


@pytest.fixture(scope="module")
def hf():
    (path,) = need_shared("models/minilm-squad/tokenizer.json")
    t = Tokenizer.from_file(str(path))
    t.no_padding()
    t.no_truncation()
    return t


def test_same_tokens_as_the_hugging_face_tokenizer_on_the_tricky_cases(tok, hf):
    cases = ["Café résumé naïve", "don't... (yes)!", "中文字", "unaffable", "Supercalifragilisticexpialidocious",
             "x" * 201 + "!", "ten\u202fkm", "Hello\u00a0World", "a\x00b\x07c\u200bd\tz", "\ufffdok", "a [SEP] b"]
    for text in cases:
        assert tok.tokenize(text) == hf.encode(text, add_special_tokens=False).tokens, text
    # The one difference, on purpose: Google's WordPiece splits words of up to 200 characters, HF's up to 100.
    assert tok.tokenize("a" * 150)[0] == "aaa" and hf.encode("a" * 150, add_special_tokens=False).tokens == ["[UNK]"]


def test_same_tokens_and_ids_as_the_hugging_face_tokenizer_on_squad_dev(tok, hf):
    (dev,) = need_shared("data/squad/dev-v1.1.json")
    texts = []
    for article in json.loads(dev.read_text(encoding="utf-8"))["data"]:
        for paragraph in article["paragraphs"]:
            texts += [paragraph["context"]] + [q["question"] for q in paragraph["qas"]]
    assert len(texts) == 2067 + 10570  # every passage and question of the dev set
    different = [t for t in texts
                 if tok.convert_tokens_to_ids(tok.tokenize(t)) != hf.encode(t, add_special_tokens=False).ids]
    assert different == []
