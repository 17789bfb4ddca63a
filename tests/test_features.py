"""SQuAD features against a hand-checked layout: three windows over a 15-piece passage."""

import numpy as np
import pytest

from bertrt.convert import zoo
from bertrt.errors import BertrtError
from bertrt.run.features import doc_spans, example_features, split_doc_words, stack_features
from bertrt.run.tokenization import load_tokenizer

PASSAGE = "Margaret was an unaffable engineer; she built the lighthouse in 1871."
QUESTION = "Who built it?"
# word pieces:  margaret was an una ##ffa ##ble engineer ;  she built the lighthouse in 1871 .
# piece index:  0        1   2  3   4     5    6        7  8   9     10  11         12 13   14
# word index:   0        1   2  3   3     3    4        4  5   6     7   8          9  10   10
# seq 16, question 4 pieces → 16 - 4 - 3 = 9 pieces a window; stride 4 → windows (0, 9), (4, 9), (8, 7)
QUERY = [101, 2040, 2328, 2009, 1029, 102]  # [CLS] who built it ? [SEP]


@pytest.fixture(scope="module")
def features():
    tok = load_tokenizer(zoo.vocab_path())
    words, _ = split_doc_words(PASSAGE)
    return example_features(tok, QUESTION, words, max_seq_length=16, doc_stride=4, max_query_length=64)


def test_split_doc_words():
    words, char_to_word = split_doc_words(" ab\u202fc\td  e\n")
    assert words == ["ab", "c", "d", "e"]
    #                      ' '  a  b  nnbsp c  tab d  ' ' ' ' e  \n
    assert char_to_word == [-1, 0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    # the no-break space U+00A0 is not a word separator for the passage
    assert split_doc_words("a\u00a0b c")[0] == ["a\u00a0b", "c"]


def test_windows(features):
    assert [f.doc_span for f in features] == [(0, 9), (4, 9), (8, 7)]
    assert [f.doc_span_index for f in features] == [0, 1, 2]


def test_token_layout(features):
    a, b, c = features
    assert a.tokens == ["[CLS]", "who", "built", "it", "?", "[SEP]", "margaret", "was", "an", "una", "##ffa",
                        "##ble", "engineer", ";", "she", "[SEP]"]
    assert b.tokens[6:] == ["##ffa", "##ble", "engineer", ";", "she", "built", "the", "lighthouse", "in", "[SEP]"]
    assert c.tokens[6:] == ["she", "built", "the", "lighthouse", "in", "1871", ".", "[SEP]"]
    assert a.input_ids.tolist() == QUERY + [5545, 2001, 2019, 14477, 20961, 3468, 3992, 1025, 2016, 102]
    assert b.input_ids.tolist() == QUERY + [20961, 3468, 3992, 1025, 2016, 2328, 1996, 10171, 1999, 102]
    assert c.input_ids.tolist() == QUERY + [2016, 2328, 1996, 10171, 1999, 7428, 1012, 102, 0, 0]


def test_segments_and_mask(features):
    a, b, c = features
    for f in (a, b):
        assert f.segment_ids.tolist() == [0] * 6 + [1] * 10
        assert f.input_mask.tolist() == [1] * 16
    assert c.segment_ids.tolist() == [0] * 6 + [1] * 8 + [0, 0]
    assert c.input_mask.tolist() == [1] * 14 + [0, 0]
    for f in features:
        for array in (f.input_ids, f.segment_ids, f.input_mask):
            assert array.dtype == np.int32 and array.shape == (16,)


def test_token_to_orig_map(features):
    a, b, c = features
    assert a.token_to_orig_map == {6: 0, 7: 1, 8: 2, 9: 3, 10: 3, 11: 3, 12: 4, 13: 4, 14: 5}
    assert b.token_to_orig_map == {6: 3, 7: 3, 8: 4, 9: 4, 10: 5, 11: 6, 12: 7, 13: 8, 14: 9}
    assert c.token_to_orig_map == {6: 5, 7: 6, 8: 7, 9: 8, 10: 9, 11: 10, 12: 10}


def test_max_context(features):
    # score = min(left, right) + 0.01 * window length, by piece:
    #   6: A 2.09 = B 2.09 → the first window keeps it;  10: B 2.09 > C 2.07 (the 0.01 term decides)
    # so A owns pieces 0-6, B 7-10, C 11-14
    a, b, c = features
    assert a.token_is_max_context == {p: p <= 12 for p in range(6, 15)}
    assert b.token_is_max_context == {p: 9 <= p <= 12 for p in range(6, 15)}
    assert c.token_is_max_context == {p: p >= 9 for p in range(6, 13)}


def test_doc_spans_stride_and_end():
    assert doc_spans(10, 4, 3) == [(0, 4), (3, 4), (6, 4)]
    assert doc_spans(10, 4, 6) == [(0, 4), (4, 4), (8, 2)]  # the stride is capped by the window length
    assert doc_spans(3, 4, 2) == [(0, 3)]
    assert doc_spans(0, 4, 2) == []


def test_query_truncated():
    tok = load_tokenizer(zoo.vocab_path())
    (f,) = example_features(tok, "who " * 10, ["x"], max_seq_length=16, max_query_length=3)
    assert f.tokens[:6] == ["[CLS]", "who", "who", "who", "[SEP]", "x"]


def test_no_room_for_passage():
    tok = load_tokenizer(zoo.vocab_path())
    with pytest.raises(BertrtError, match="leaves no room"):
        example_features(tok, QUESTION, ["x"], max_seq_length=7)


def test_stack_features(features):
    batch = stack_features(features)
    assert sorted(batch) == ["input_ids", "input_mask", "segment_ids"]
    for name, array in batch.items():
        assert array.dtype == np.int32 and array.shape == (3, 16)
        assert (array[2] == getattr(features[2], name)).all()
