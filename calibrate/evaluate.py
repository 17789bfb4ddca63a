"""How close an INT8 (or any reduced-precision) model stays to the FP32 original on real questions.

The original (a canonical model) runs on ONNX Runtime, the candidate (a fused graph with INT8 plugins, a
Q/DQ graph, ...) on the CPU reference runner, both on the first feature of each question of a SQuAD-format
file. Per feature, over its valid tokens (input_mask = 1: [CLS], question, [SEP], passage, [SEP]):

  * cos start / cos end: cosine similarity (float64) of the candidate's start (end) logits with the
    original's; the reported value is the plain mean over features (and the worst feature's is kept);
  * agree start / agree end: whether the argmax of the start (end) logits over the passage tokens (the
    positions that map to a passage word: no [CLS], question or [SEP]) is the same position in both;
    the reported value is the share of features that agree.

TensorRT 10 implicit INT8 is simulated by ``implicit_int8_model``: a GEMM whose input and output both have a
range runs INT8 (activation per tensor from the range, weight per output channel), a GEMM missing either
runs in float, and INT8 plugins read their scales from the same ranges (ReferenceRunner ``amax=``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from bertrt.calibrate.data_source import first_features
from bertrt.calibrate.qdq import QdqReport, insert_qdq
from bertrt.calibrate.tensors import GraphIndex, weight_gemms
from bertrt.errors import BertrtError
from bertrt.onnx_io import load_model
from bertrt.plugins.nodes import TYPE_INT8, is_plugin_node, read_scalar_attrs
from bertrt.plugins.runner import ReferenceRunner
from bertrt.progress import Progress, task
from bertrt.run.features import DOC_STRIDE, MAX_QUERY_LENGTH, stack_features

COS_TARGET = 0.99
AGREE_TARGET = 0.90
LOGITS = "logits"


@dataclass
class Sample:
    """One feature's model inputs (batch 1) and which of its positions are passage tokens."""

    feed: dict[str, np.ndarray]
    passage: np.ndarray  # bool [seq]


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

    def meets(self, cos: float = COS_TARGET, agree: float = AGREE_TARGET) -> bool:
        return min(self.cos_start, self.cos_end) >= cos and min(self.agree_start, self.agree_end) >= agree

    def summary(self) -> dict:
        out = asdict(self)
        del out["per_feature"]
        return out


def eval_samples(squad_json: str | os.PathLike, vocab: str | os.PathLike, seq: int, num: int, *,
                 doc_stride: int = DOC_STRIDE, max_query_length: int = MAX_QUERY_LENGTH) -> list[Sample]:
    """The first feature of each of the first ``num`` questions, with its passage positions."""
    samples = []
    for first in first_features(squad_json, vocab, seq, num, doc_stride=doc_stride, max_query_length=max_query_length,
                                what="questions"):
        passage = np.zeros(seq, dtype=bool)
        passage[list(first.token_to_orig_map)] = True
        samples.append(Sample(stack_features([first]), passage))
    return samples


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


def evaluate(reference: str | os.PathLike, candidate: onnx.ModelProto | str | os.PathLike, samples: list[Sample],
             *, amax: Mapping[str, float] | None = None, batch: int = 8, progress: Progress | None = None,
             label: str = "calibrate evaluate") -> Evaluation:
    """Scores of ``candidate`` (run on the reference runner with ``amax`` for its INT8 plugins) against the
    canonical model at ``reference`` (run on ONNX Runtime) over ``samples``, ``batch`` features at a time."""
    if not samples:
        raise BertrtError("no features to evaluate")
    if batch < 1:
        raise BertrtError(f"batch must be at least 1, got {batch}")
    if not os.path.isfile(reference):
        raise BertrtError("model not found", reference)
    cand = candidate if isinstance(candidate, onnx.ModelProto) else load_model(candidate)
    path = None if isinstance(candidate, onnx.ModelProto) else candidate
    if amax is None and _has_int8_plugins(cand):
        raise BertrtError("the candidate has INT8 plugin nodes; give the ranges they read (amax)", path)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(os.fspath(reference), opts, providers=["CPUExecutionProvider"])
    runner = ReferenceRunner(cand, amax=dict(amax or {}))
    if LOGITS not in runner.output_names:
        raise BertrtError(f"the candidate has no '{LOGITS}' output (outputs: {', '.join(runner.output_names)})", path)
    scores = []
    with task(progress, label, len(samples), "features") as advance:
        for lo in range(0, len(samples), batch):
            chunk = samples[lo:lo + batch]
            feed = {k: np.concatenate([s.feed[k] for s in chunk]) for k in chunk[0].feed}
            ref = session.run([LOGITS], feed)[0]
            out = runner.run(feed)[LOGITS]
            if out.shape != ref.shape:
                raise BertrtError(f"the candidate's logits have shape {list(out.shape)}, the original's "
                                  f"{list(ref.shape)}", path)
            for i, s in enumerate(chunk):
                scores.append(score_feature(ref[i], out[i], s.feed["input_mask"][0] == 1, s.passage))
            advance(len(chunk))
    return summarize(scores)


def table(rows: list[tuple[str, str, Evaluation]]) -> str:
    """Rows (method, target, evaluation) as a text table, with the targets in the last line."""
    lines = [f"{'method':<34} {'target':<16} {'cos start':>9} {'cos end':>9} {'agree start':>11} "
             f"{'agree end':>9} {'meets':>5}"]
    for method, target, e in rows:
        lines.append(f"{method:<34} {target:<16} {e.cos_start:>9.4f} {e.cos_end:>9.4f} {e.agree_start:>11.1%} "
                     f"{e.agree_end:>9.1%} {'yes' if e.meets() else 'no':>5}")
    lines.append(f"targets: cosine >= {COS_TARGET} and agreement >= {AGREE_TARGET:.0%} (start and end); "
                 "cosine = mean over features of the per-feature cosine over valid tokens")
    return "\n".join(lines)
