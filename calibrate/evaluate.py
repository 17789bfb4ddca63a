"""How close an INT8 (or any reduced-precision) model stays to the FP32 original on real questions.

The original (a canonical model) runs on ONNX Runtime, the candidate (a fused graph with INT8 plugins, a
Q/DQ graph, ...) on the CPU reference runner, both on the same features of the questions of a SQuAD-format
file. Per question's first feature, over its valid tokens (input_mask = 1: [CLS], question, [SEP], passage,
[SEP]):

  * cos start / cos end: cosine similarity (float64) of the candidate's start (end) logits with the
    original's; the reported value is the plain mean over features (and the worst feature's is kept);
  * agree start / agree end: whether the argmax of the start (end) logits over the passage tokens (the
    positions that map to a passage word: no [CLS], question or [SEP]) is the same position in both;
    the reported value is the share of features that agree.

With ``answers`` (eval_samples), every feature of each question runs and both models' answers are scored
against the file's answers: SQuAD v1.1 exact match and F1 of each, and the candidate's F1 drop, the number
an INT8 build is gated on (cosine and agreement stay as diagnostics), with its standard error over the
questions (paired: the spread of the per-question F1 differences / sqrt(questions)). A gate should take its
questions spread over the file (``spread``): SQuAD's dev set runs article by article, and its first 500
questions are all from one article (Super_Bowl_50), a sample whose INT8 drop need not be the set's.

The two models run one after the other, not side by side, so peak memory is that of the larger one.
TensorRT 10 implicit INT8 is simulated by ``implicit_int8_model``: a GEMM whose input and output both have a
range runs INT8 (activation per tensor from the range, weight per output channel), a GEMM missing either
runs in float, and INT8 plugins read their scales from the same ranges (ReferenceRunner ``amax=``). The
reference sums an INT8 GEMM on the integers, as TensorRT does (plugins/runner.py constants_beside_readers).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from bertrt.calibrate.qdq import QdqReport, insert_qdq
from bertrt.calibrate.tensors import GraphIndex, weight_gemms
from bertrt.errors import BertrtError
from bertrt.onnx_io import load_model
from bertrt.plugins.nodes import TYPE_INT8, is_plugin_node, read_scalar_attrs
from bertrt.progress import Progress
from bertrt.run.features import DOC_STRIDE, MAX_QUERY_LENGTH, Feature, examples_features
from bertrt.run.squad_data import read_squad
from bertrt.run.tokenization import load_tokenizer

COS_TARGET = 0.99
AGREE_TARGET = 0.90
LOGITS = "logits"


@dataclass
class EvalSet:
    """Questions and their features. ``answers``: every feature of each question (EM/F1 are scored);
    otherwise only the first (cosine and agreement only)."""

    examples: list
    per_example: list[list[Feature]]
    answers: bool = False
    in_file: int = 0  # questions in the file they were taken from

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: slice) -> "EvalSet":
        return EvalSet(self.examples[index], self.per_example[index], self.answers, self.in_file)

    @property
    def features(self) -> list[Feature]:
        return [f for feats in self.per_example for f in feats]

    def first_rows(self) -> list[int]:
        """Row of each question's first feature in ``features``."""
        return list(np.cumsum([0] + [len(f) for f in self.per_example[:-1]])) if self.per_example else []


@dataclass
class Evaluation:
    features: int
    cos_start: float  # mean over features of the per-feature cosine over valid tokens
    cos_end: float
    agree_start: float  # share of features whose passage argmax agrees
    agree_end: float
    min_cos_start: float
    min_cos_end: float
    per_feature: list[dict] = field(default_factory=list, repr=False)
    # SQuAD v1.1 scores over the questions (with EvalSet.answers): the original's and the candidate's.
    questions: int = 0
    fp32_exact_match: float | None = None
    fp32_f1: float | None = None
    exact_match: float | None = None
    f1: float | None = None
    f1_drop_se: float | None = None  # standard error of f1_drop over the questions (paired)

    @property
    def f1_drop(self) -> float | None:
        return None if self.f1 is None else self.fp32_f1 - self.f1

    def meets(self, cos: float = COS_TARGET, agree: float = AGREE_TARGET, max_f1_drop: float | None = None) -> bool:
        ok = min(self.cos_start, self.cos_end) >= cos and min(self.agree_start, self.agree_end) >= agree
        if max_f1_drop is not None:
            if self.f1_drop is None:
                raise BertrtError("an F1 bound needs the questions' answers scored (EvalSet.answers)")
            ok = ok and self.f1_drop <= max_f1_drop
        return ok

    def summary(self) -> dict:
        out = asdict(self)
        del out["per_feature"]
        out["f1_drop"] = self.f1_drop
        return out


def spread_indices(total: int, num: int) -> list[int]:
    """``num`` of ``total`` positions evenly spaced from the first (all of them when num >= total)."""
    return list(range(total)) if num >= total else [i * total // num for i in range(num)]


def eval_samples(squad_json: str | os.PathLike, vocab: str | os.PathLike, seq: int, num: int, *,
                 doc_stride: int = DOC_STRIDE, max_query_length: int = MAX_QUERY_LENGTH,
                 answers: bool = False, spread: bool = False) -> EvalSet:
    """``num`` questions of a SQuAD-format file (the first ones; ``spread``: evenly spaced through the file)
    with their first feature, or all their features (``answers``: to score EM/F1, which needs the file's
    answers)."""
    if num < 1:
        raise BertrtError(f"number of questions must be at least 1, got {num}")
    examples = read_squad(squad_json, check_answers=answers)
    in_file = len(examples)
    examples = [examples[i] for i in spread_indices(in_file, num)] if spread else examples[:num]
    if not examples:
        raise BertrtError("no questions in the file", squad_json)
    if answers and not all(e.answers for e in examples):
        raise BertrtError("questions without answers cannot be scored in EM/F1", squad_json)
    tokenizer = load_tokenizer(vocab)
    per_example = examples_features(tokenizer, examples, max_seq_length=seq, doc_stride=doc_stride,
                                    max_query_length=max_query_length)
    if not answers:
        per_example = [feats[:1] for feats in per_example]
    return EvalSet(examples, per_example, answers, in_file)


def _passage(feature: Feature, seq: int) -> np.ndarray:
    passage = np.zeros(seq, dtype=bool)
    passage[list(feature.token_to_orig_map)] = True
    return passage


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def score_feature(reference: np.ndarray, candidate: np.ndarray, valid: np.ndarray, passage: np.ndarray) -> dict:
    """Cosines and argmax agreement of one feature's [seq, 2] logits (see the module text)."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if not np.all(np.isfinite(cand)):
        return {"cos_start": 0.0, "cos_end": 0.0, "agree_start": False, "agree_end": False}
    out = {}
    pos = np.flatnonzero(passage)
    for i, name in enumerate(("start", "end")):
        out[f"cos_{name}"] = _cosine(ref[valid, i], cand[valid, i])
        out[f"agree_{name}"] = bool(pos[np.argmax(ref[pos, i])] == pos[np.argmax(cand[pos, i])])
    return out


def summarize(scores: list[dict]) -> Evaluation:
    if not scores:
        raise BertrtError("no features were evaluated")
    col = {k: np.array([s[k] for s in scores], dtype=np.float64) for k in scores[0]}
    return Evaluation(features=len(scores), cos_start=float(col["cos_start"].mean()),
                      cos_end=float(col["cos_end"].mean()), agree_start=float(col["agree_start"].mean()),
                      agree_end=float(col["agree_end"].mean()), min_cos_start=float(col["cos_start"].min()),
                      min_cos_end=float(col["cos_end"].min()), per_feature=scores)


def implicit_int8_model(model: onnx.ModelProto, amax: Mapping[str, float], *,
                        skip_nodes: Iterable[str] = ()) -> tuple[onnx.ModelProto, QdqReport]:
    """A fused TensorRT 10 INT8 graph as its engine computes it: Q/DQ on each weight GEMM whose input and
    output have a range (TensorRT runs a layer in float when a tensor it reads or writes has none)."""
    asked = set(skip_nodes)
    no_output = {node.name for node, _ in weight_gemms(GraphIndex(model)) if node.output[0] not in amax} - asked
    out, report = insert_qdq(model, amax, skip_nodes=sorted(asked | no_output), allow_missing=True)
    for name in no_output:
        report.skipped[name] = "no range for its output"
    return out, report


def _has_int8_plugins(model: onnx.ModelProto) -> bool:
    return any(is_plugin_node(n) and getattr(read_scalar_attrs(n).get("type_id"), "value", None) == TYPE_INT8
               for n in model.graph.node)


def evaluate(reference: str | os.PathLike, candidate, samples: EvalSet, *, amax: Mapping[str, float] | None = None,
             batch: int = 8, progress: Progress | None = None, label: str = "calibrate evaluate") -> Evaluation:
    """Scores of ``candidate`` (a model, its path, or a function that makes it; run on the reference runner
    with ``amax`` for its INT8 plugins) against the canonical model at ``reference`` (run on ONNX Runtime) over
    ``samples``, ``batch`` features at a time. The original runs first and is closed before the candidate is
    loaded (or made)."""
    from bertrt.run.backends import OrtBackend, ReferenceBackend
    from bertrt.run.squad_metric import evaluate as squad_scores
    from bertrt.run.squad_metric import question_f1
    from bertrt.run.squad_predict import answers, feature_logits

    if not len(samples):
        raise BertrtError("no features to evaluate")
    if batch < 1:
        raise BertrtError(f"batch must be at least 1, got {batch}")
    if not os.path.isfile(reference):
        raise BertrtError("model not found", reference)
    path = candidate if isinstance(candidate, (str, os.PathLike)) else None
    features = samples.features
    seq = len(features[0].input_ids)
    with OrtBackend(reference) as original:
        ref = feature_logits(original, features, seq=seq, batch=batch, progress=progress, label=f"{label} (FP32)")
    del original
    cand = load_model(candidate) if path is not None else candidate() if callable(candidate) else candidate
    if amax is None and _has_int8_plugins(cand):
        raise BertrtError("the candidate has INT8 plugin nodes; give the ranges they read (amax)", path)
    backend = ReferenceBackend(path, cand, amax=dict(amax or {}))
    del cand
    if backend.output != LOGITS:
        raise BertrtError(f"the candidate has no '{LOGITS}' output", path)
    out = feature_logits(backend, features, seq=seq, batch=batch, progress=progress, label=label)
    scores = [score_feature(ref[row], out[row], features[row].input_mask == 1, _passage(features[row], seq))
              for row in samples.first_rows()]
    result = summarize(scores)
    if samples.answers:
        result.questions = len(samples)
        per_question = []
        for prefix, logits in (("fp32_", ref), ("", out)):
            texts = {k: p.text for k, p in answers(samples.examples, samples.per_example, logits).items()}
            got = squad_scores(samples.examples, texts)
            setattr(result, f"{prefix}exact_match", got["exact_match"])
            setattr(result, f"{prefix}f1", got["f1"])
            per_question.append(question_f1(samples.examples, texts))
        result.f1_drop_se = drop_standard_error(*per_question)
    return result


def drop_standard_error(before: np.ndarray, after: np.ndarray) -> float:
    """Standard error (F1 points) of mean(before - after), paired per question: how far a sample's F1 drop
    may sit from the drop over all the questions it was drawn from."""
    diff = np.asarray(before, np.float64) - np.asarray(after, np.float64)
    return float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0


def table(rows: list[tuple[str, str, Evaluation]], cos: float = COS_TARGET, agree: float = AGREE_TARGET,
          max_f1_drop: float | None = None) -> str:
    """Rows (method, target, evaluation) as a text table, with the targets in the last line; with EM/F1
    columns (FP32 -> candidate) when the rows have them. 'meets' is against the targets given (the ones a
    check applies), so it never says yes where the check fails."""
    squad = any(e.f1 is not None for _, _, e in rows)
    head = f"{'method':<34} {'target':<16} {'cos start':>9} {'cos end':>9} {'agree start':>11} {'agree end':>9}"
    lines = [head + (f" {'EM fp32':>7} {'EM':>6} {'F1 fp32':>7} {'F1':>6} {'F1 drop':>7}" if squad else "")
             + f" {'meets':>5}"]
    for method, target, e in rows:
        line = (f"{method:<34} {target:<16} {e.cos_start:>9.4f} {e.cos_end:>9.4f} {e.agree_start:>11.1%} "
                f"{e.agree_end:>9.1%}")
        if squad:
            line += (f" {e.fp32_exact_match:>7.2f} {e.exact_match:>6.2f} {e.fp32_f1:>7.2f} {e.f1:>6.2f} "
                     f"{e.f1_drop:>7.2f}" if e.f1 is not None else " " * 39)
        f1_bound = max_f1_drop if e.f1 is not None else None
        lines.append(line + f" {'yes' if e.meets(cos, agree, f1_bound) else 'no':>5}")
    f1_target = f" and an F1 drop <= {max_f1_drop}" if squad and max_f1_drop is not None else ""
    lines.append(f"targets: cosine >= {cos} and agreement >= {agree:.0%} (start and end){f1_target}; "
                 "cosine = mean over questions of the first feature's cosine over valid tokens"
                 + ("; EM/F1 over all features of each question (SQuAD v1.1)" if squad else ""))
    return "\n".join(lines)
