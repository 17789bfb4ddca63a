"""Answer post-processing with hand-made logits: known spans, each discard rule, n-best probabilities."""

import math

import numpy as np
import pytest

from bertrt.convert import zoo
from bertrt.run.features import example_features, split_doc_words
from bertrt.run.postprocess import NO_ANSWER, best_indexes, get_final_text, predict_answer
from bertrt.run.tokenization import load_tokenizer

PASSAGE = "Barges carried peat on the Dortmund-Ems Canal, which Élise Brunner's company opened in 1899."
# [CLS] who opened it ? [SEP] = positions 0-5, then the passage's pieces from position 6:
#  6 barges  7 carried  8 peat  9 on  10 the  11 dortmund  12 -  13 ems  14 canal  15 ,  16 which
# 17 elise  18 br  19 ##un  20 ##ner  21 '  22 s  23 company  24 opened  25 in  26 1899  27 .  28 [SEP]
# 29-31 padding (seq 32)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(zoo.vocab_path())


@pytest.fixture(scope="module")
def one_window(tok):
    words, _ = split_doc_words(PASSAGE)
    features = example_features(tok, "Who opened it?", words, max_seq_length=32)
    assert len(features) == 1 and features[0].tokens[17] == "elise" and features[0].tokens[28] == "[SEP]"
    return words, features


def logits(seq, points, base=-10.0):
    out = np.full(seq, base, dtype=np.float32)
    for position, value in points.items():
        out[position] = value
    return out


def answer(words, features, starts, ends, **kw):
    seq = features[0].input_ids.shape[0]
    return predict_answer(words, features, [logits(seq, s) for s in starts], [logits(seq, e) for e in ends], **kw)


@pytest.mark.parametrize("start, end, text", [
    (17, 20, "Élise Brunner"),  # accent and casing back, word pieces joined, "'s" left out
    (11, 13, "Dortmund-Ems"),  # the hyphen comes back without spaces
    (26, 26, "1899"),  # the full stop stuck to the word is cut off
    (26, 27, "1899."),
    (14, 15, "Canal,"),
])
def test_known_span(one_window, start, end, text):
    words, features = one_window
    prediction = answer(words, features, [{start: 4.0}], [{end: 3.0}])
    assert prediction.text == text
    assert prediction.nbest[0].start_logit == 4.0 and prediction.nbest[0].end_logit == 3.0


@pytest.mark.parametrize("start, end, why", [
    (30, 30, "start and end past the last token (padding)"),
    (17, 30, "end past the last token"),
    (2, 2, "a question token is not in the passage"),
    (0, 20, "[CLS] is not in the passage"),
    (26, 28, "the final [SEP] is not in the passage"),
    (20, 17, "end before start"),
    (6, 26, "21 tokens, longer than max_answer_length 20"),
])
def test_discard_rules(one_window, start, end, why):
    words, features = one_window
    # n_best_size 1: only the best start with the best end is considered, so a discarded pair leaves nothing
    prediction = answer(words, features, [{start: 5.0}], [{end: 5.0}], n_best_size=1, max_answer_length=20)
    assert prediction.text == NO_ANSWER, why
    assert prediction.probability == 1.0 and len(prediction.nbest) == 1
    assert not prediction.answered  # the placeholder is not an answer (infer says none, #14)


def test_max_answer_length_is_inclusive(one_window):
    words, features = one_window
    prediction = answer(words, features, [{6: 5.0}], [{25: 5.0}], n_best_size=1, max_answer_length=20)
    assert prediction.text == "Barges carried peat on the Dortmund-Ems Canal, which Élise Brunner's company opened in"


def test_discarded_best_falls_through_to_next(one_window):
    words, features = one_window
    # starts {24: 9, 17: 6} × ends {7: 9, 20: 3}: every pair but elise → ##ner ends before it starts
    prediction = answer(words, features, [{24: 9.0, 17: 6.0}], [{7: 9.0, 20: 3.0}], n_best_size=2)
    assert prediction.text == "Élise Brunner"


def test_probabilities_are_softmax_over_nbest(one_window):
    words, features = one_window
    # top-2 starts {17: 4, 11: 2} × top-2 ends {20: 3, 13: 1}: (17,20)=7, (11,20)=5, (11,13)=3, (17,13) invalid;
    # n-best 2 keeps the sums 7 and 5 → p = e^7 / (e^7 + e^5) = 1 / (1 + e^-2)
    prediction = answer(words, features, [{17: 4.0, 11: 2.0}], [{20: 3.0, 13: 1.0}], n_best_size=2)
    assert [c.text for c in prediction.nbest] == ["Élise Brunner", "Dortmund-Ems Canal, which Élise Brunner"]
    assert prediction.probability == pytest.approx(1 / (1 + math.exp(-2)), abs=1e-12)
    assert prediction.nbest[1].probability == pytest.approx(1 / (1 + math.exp(2)), abs=1e-12)


def test_duplicates_removed(tok):
    words, _ = split_doc_words("The canal opened in 1899 and closed in 1999.")
    features = example_features(tok, "When?", words, max_seq_length=24)
    first, second = [p for p, t in enumerate(features[0].tokens) if t == "in"]
    # pairs: (in1,in1)=10 "in", (in1,in2)=9 "in 1899 and closed in", (in2,in2)=8 "in" again → dropped
    prediction = answer(words, features, [{first: 5.0, second: 4.0}], [{first: 5.0, second: 4.0}], n_best_size=3)
    assert [c.text for c in prediction.nbest] == ["in", "in 1899 and closed in"]
    assert prediction.probability == pytest.approx(1 / (1 + math.exp(-1)), abs=1e-12)


def test_start_must_be_in_its_max_context_window(tok):
    # the hand-checked windows of test_features: piece 8 "she" sits at position 14 of window A (not its
    # best context) and at position 10 of window B (its best context)
    words, _ = split_doc_words("Margaret was an unaffable engineer; she built the lighthouse in 1871.")
    features = example_features(tok, "Who built it?", words, max_seq_length=16, doc_stride=4)
    assert [f.tokens[p] for f, p in zip(features, (14, 10))] == ["she", "she"]
    prediction = answer(words, features, [{14: 5.0}, {10: 1.0}, {}], [{14: 5.0}, {11: 1.0}, {}], n_best_size=1)
    assert prediction.text == "she built"  # A's higher-scoring "she" was discarded


def test_get_final_text():
    assert get_final_text("steve smith", "Steve Smith's") == "Steve Smith"
    assert get_final_text("cafe", "(Café)") == "Café"
    assert get_final_text("xyz", "Abc def") == "Abc def"  # not found: the whole original words
    # the zero-width space is cleaned away, so the texts cannot be aligned: the whole original words
    assert get_final_text("hello", "Hello\u200bWorld") == "Hello\u200bWorld"


def test_best_indexes_ties_keep_lower_index():
    assert best_indexes(np.array([1.0, 3.0, 3.0, 2.0, 3.0]), 4) == [1, 2, 4, 3]


@pytest.mark.parametrize("seq, stride", [(128, 128), (40, 8)])
def test_oracle_logits_answer_the_sample_file(tok, seq, stride):
    """Logits peaked on each ground-truth span give back the ground-truth text (EM 100), also across windows."""
    from pathlib import Path

    from bertrt.run.features import examples_features
    from bertrt.run.squad_data import read_squad
    from bertrt.run.squad_metric import evaluate

    examples = read_squad(Path(__file__).parent / "data" / "squad_sample.json")
    all_features = examples_features(tok, examples, max_seq_length=seq, doc_stride=stride)
    predictions, windows = {}, 0
    for example, features in zip(examples, all_features):
        windows += len(features)
        answer_pieces = " ".join(tok.tokenize(example.answers[0].text))
        starts, ends = [], []
        for f in features:
            s, e = np.full(seq, -10.0, np.float32), np.full(seq, -10.0, np.float32)
            span = sorted(p for p, w in f.token_to_orig_map.items()
                          if example.start_position <= w <= example.end_position)
            # the pieces of the answer words that spell the answer itself (run_squad's improved span)
            for a in span:
                for b in span:
                    if b >= a and " ".join(f.tokens[a:b + 1]) == answer_pieces and f.token_is_max_context[a]:
                        s[a], e[b] = 5.0, 5.0
            starts.append(s)
            ends.append(e)
        predictions[example.qas_id] = predict_answer(example.doc_words, features, starts, ends).text
    if seq == 40:
        assert windows > 2 * len(examples)  # the short sequence really makes several windows per example
    assert evaluate(examples, predictions)["exact_match"] == 100.0, predictions
    assert predictions == {e.qas_id: e.answers[0].text for e in examples}  # casing and punctuation too


def test_canonical_model_logits_to_answers(tok, tiny_onnx):
    """Sample file → features → the canonical tiny model on ONNX Runtime → answers.

    With n_best_size = seq every pair is considered, so the best answer must be the best valid pair of a
    brute-force float64 loop over all pairs of all windows.
    """
    from pathlib import Path

    import onnxruntime as ort

    from bertrt.run.features import examples_features, stack_features
    from bertrt.run.squad_data import read_squad
    from bertrt.run.squad_metric import evaluate

    seq = 128
    examples = read_squad(Path(__file__).parent / "data" / "squad_sample.json")
    all_features = examples_features(tok, examples, max_seq_length=seq, doc_stride=32)
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    predictions = {}
    for example, features in zip(examples, all_features):
        (logits,) = session.run(["logits"], stack_features(features))
        assert logits.shape == (len(features), seq, 2)
        starts, ends = logits[..., 0], logits[..., 1]
        prediction = predict_answer(example.doc_words, features, starts, ends, n_best_size=seq)
        best = max(float(s[a]) + float(e[b])
                   for f, s, e in zip(features, starts.astype(np.float64), ends.astype(np.float64))
                   for a in f.token_to_orig_map for b in f.token_to_orig_map
                   if f.token_is_max_context[a] and a <= b < a + 30)
        top = prediction.nbest[0]
        assert top.start_logit + top.end_logit == pytest.approx(best, abs=1e-6)
        # answers are cut from the passage's words joined by single spaces (U+202F becomes a space)
        assert prediction.text in " ".join(example.doc_words)
        assert sum(c.probability for c in prediction.nbest) == pytest.approx(1.0)
        predictions[example.qas_id] = prediction.text
    result = evaluate(examples, predictions)
    assert result["total"] == 12 and result["unanswered"] == 0
