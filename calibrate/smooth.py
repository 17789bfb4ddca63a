"""Per-channel smoothing of the weight GEMMs' inputs (SmoothQuant), so that per-tensor INT8 fits them.

BERT's LayerNorm outputs carry a few outlier channels (MiniLM: channel 99 reaches 28 where the median channel
stays near 2) and its GELU outputs a few huge ones; one per-tensor INT8 scale sized for the outliers leaves the
other channels a handful of levels. For a GEMM ``y = x W``, ``y = (x / s) (diag(s) W)`` for any positive
per-input-channel ``s``: dividing the activation's channels by ``s`` and multiplying the weight's rows by it
moves the outliers into the weights, which are quantized per output channel anyway.

    s = r^alpha / w^(1 - alpha)      r: the activation's per-channel max |x| over the calibration samples
                                     w: the per-row max |W| of every GEMM reading it (Q, K and V together)

alpha is chosen per activation from a grid, as the one whose INT8 GEMM (activation per tensor from its
calibrated max, weight per output channel) is closest to the float GEMM on a sample of calibration tokens;
an activation no alpha improves is left as it is. The smoothed model is the same function (a Mul by 1/s
before the GEMMs, the weights' rows scaled; max |difference| at the float32 rounding level), a canonical
model that surgery fuses as it does the original, so the rest of the INT8 flow (ranges, cache, Q/DQ) takes it
unchanged. TensorRT runs the Mul as a pointwise layer fused with the quantization before the GEMM.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from bertrt.calibrate.data_source import Feed
from bertrt.calibrate.qdq import QMAX, symmetric_scale
from bertrt.calibrate.tensors import GraphIndex, weight_gemms
from bertrt.errors import BertrtError
from bertrt.onnx_io import EXTERNAL_DATA_THRESHOLD, model_bytes, save_model
from bertrt.progress import Progress, iterate

ALPHAS = tuple(round(a / 10, 1) for a in range(11))
SAMPLE_TOKENS = 1024  # tokens per activation kept for choosing alpha (all of them are used for the channel max)
SCALE_LIMIT = 2.0 ** 10  # s stays within [1/1024, 1024]: the scaled weights and 1/s stay well inside float16
SMOOTHED = "/smoothed"  # suffix of the smoothed tensor; its scale is "<activation>/smooth_scale"


@dataclass
class Smoothing:
    """What was decided for one activation (the input of one or more weight GEMMs)."""

    activation: str
    gemms: list[str]
    alpha: float | None  # None: left as it is
    error_before: float  # relative error of the INT8 GEMM(s) on the sampled tokens, unsmoothed
    error_after: float  # the same with the chosen alpha (= error_before when left alone)
    scale: np.ndarray | None = None  # s, float32 [channels]
    reason: str = ""  # why it was left as it is


@dataclass
class _Stats:
    absmax: np.ndarray  # float64 [channels]
    tokens: np.ndarray  # float32 [n, channels], sampled rows


def _transposed(node: onnx.NodeProto) -> bool:
    """Whether the GEMM stores its weight as [out, in] (Gemm with transB)."""
    return node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)


def _rows(w: np.ndarray, node: onnx.NodeProto) -> np.ndarray:
    """A GEMM's weight as [in_channels, out_channels]."""
    return w.T if _transposed(node) else w


def _quantize(x: np.ndarray, amax) -> np.ndarray:
    scale = symmetric_scale(amax).astype(np.float64)  # the scale insert_qdq writes
    return np.clip(np.rint(x / scale), -QMAX, QMAX) * scale


def int8_gemm_error(x: np.ndarray, w: np.ndarray, amax: float) -> float:
    """||x w - Q(x) Q(w)|| / ||x w||: x per tensor at ``amax``, w [in, out] per output channel (symmetric)."""
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    ref = x @ w
    got = _quantize(x, amax) @ _quantize(w, np.max(np.abs(w), axis=0, keepdims=True))
    norm = np.linalg.norm(ref)
    return float(np.linalg.norm(ref - got) / norm) if norm > 0 else 0.0


def smoothing_scale(absmax: np.ndarray, wmax: np.ndarray, alpha: float) -> np.ndarray:
    """s = r^alpha / w^(1-alpha) per channel; 1 for a channel that is (nearly) all zeros on either side."""
    r = np.asarray(absmax, dtype=np.float64)
    w = np.asarray(wmax, dtype=np.float64)
    dead = (r <= 1e-6 * max(r.max(), 1e-30)) | (w <= 1e-6 * max(w.max(), 1e-30))
    s = np.ones_like(r)
    live = ~dead
    s[live] = r[live] ** alpha / w[live] ** (1 - alpha)
    return np.clip(s, 1 / SCALE_LIMIT, SCALE_LIMIT)


def choose(stats: _Stats, w: np.ndarray,
           alphas: Iterable[float] = ALPHAS) -> tuple[float | None, float, float, np.ndarray | None]:
    """(alpha or None, error unsmoothed, error chosen, s or None) for activation stats and the [in, out] weight of
    every GEMM reading it (concatenated along the outputs)."""
    x = stats.tokens
    before = int8_gemm_error(x, w, float(stats.absmax.max()))
    best = (None, before, None)
    wmax = np.max(np.abs(w), axis=1)
    for alpha in alphas:
        s = smoothing_scale(stats.absmax, wmax, alpha)
        err = int8_gemm_error(x / s, w * s[:, None], float(np.max(stats.absmax / s)))
        if err < best[1]:
            best = (alpha, err, s)
    alpha, after, s = best
    return alpha, before, after, None if s is None else s.astype(np.float32)


def channel_stats(model: onnx.ModelProto, feeds: list[Feed], activations: list[str], *,
                  tokens: int = SAMPLE_TOKENS, seed: int = 0, progress: Progress | None = None) -> dict[str, _Stats]:
    """Per-channel max |x| of each activation over every position of every feed (padding included, as the
    per-tensor calibration sees it), and ``tokens`` rows sampled evenly over the feeds (fixed seed)."""
    if not feeds:
        raise BertrtError("no calibration samples")
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for name in activations:
        if name not in have:
            probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    rng = np.random.default_rng(seed)
    per_feed = max(1, -(-tokens // len(feeds)))
    absmax: dict[str, np.ndarray] = {}
    rows: dict[str, list[np.ndarray]] = {a: [] for a in activations}
    with tempfile.TemporaryDirectory(prefix="bertrt-smooth-") as tmp:
        path = Path(tmp) / "probe.onnx"
        save_model(probe, path, external_data=model_bytes(probe) >= EXTERNAL_DATA_THRESHOLD)
        del probe
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
        for feed in iterate(progress, feeds, "calibrate smooth: channel statistics", "samples"):
            outs = session.run(activations, feed)
            pick = None
            for name, out in zip(activations, outs):
                flat = np.asarray(out, dtype=np.float32).reshape(-1, out.shape[-1])
                m = np.max(np.abs(flat), axis=0).astype(np.float64)
                absmax[name] = m if name not in absmax else np.maximum(absmax[name], m)
                if pick is None or len(pick) > len(flat):
                    pick = np.sort(rng.choice(len(flat), size=min(per_feed, len(flat)), replace=False))
                rows[name].append(flat[pick])
    return {a: _Stats(absmax[a], np.concatenate(rows[a])[:tokens]) for a in activations}


def plan(model: onnx.ModelProto, feeds: list[Feed], *, skip_gemms: Iterable[str] = (),
         alphas: Iterable[float] = ALPHAS, tokens: int = SAMPLE_TOKENS,
         progress: Progress | None = None) -> list[Smoothing]:
    """Decide the smoothing of every weight GEMM input of ``model`` (except GEMMs in ``skip_gemms``, which stay
    in float), in graph order."""
    index = GraphIndex(model)
    skip = set(skip_gemms)
    weights = {i.name: i for i in model.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node, act in weight_gemms(index):
        readers.setdefault(act, []).append(node)
    # GEMMs left in float are not smoothed, nor anything else reading their input.
    readers = {a: nodes for a, nodes in readers.items() if not any(n.name in skip for n in nodes)}
    # Scaling a weight must change nothing but this GEMM: an initializer read by it alone.
    uses = Counter(t for node in index.nodes for t in node.input)
    refused = {}
    for act, nodes in readers.items():
        if not all(n.input[1] in weights for n in nodes):
            refused[act] = "a weight is a Constant node, not an initializer"
        elif not all(uses[n.input[1]] == 1 for n in nodes):
            refused[act] = "a weight is shared with another node"
    wanted = [a for a in readers if a not in refused]
    stats = channel_stats(model, feeds, wanted, tokens=tokens, progress=progress) if wanted else {}
    out = []
    for act, nodes in iterate(progress, readers.items(), "calibrate smooth: choosing alpha", "GEMM inputs"):
        names = [n.name for n in nodes]
        if act in refused:
            out.append(Smoothing(act, names, None, float("nan"), float("nan"), reason=refused[act]))
        if act not in stats:
            continue
        w = np.concatenate([_rows(numpy_helper.to_array(weights[n.input[1]]).astype(np.float32), n)
                            for n in nodes], axis=1)
        if w.shape[0] != stats[act].absmax.size:
            out.append(Smoothing(act, names, None, float("nan"), float("nan"),
                                 reason=f"weight rows {w.shape[0]} != activation channels {stats[act].absmax.size}"))
            continue
        alpha, before, after, s = choose(stats[act], w, alphas)
        out.append(Smoothing(act, names, alpha, before, after, s,
                             reason="" if alpha is not None else "no alpha lowers the INT8 error"))
    return out


def apply(model: onnx.ModelProto, smoothings: Iterable[Smoothing]) -> onnx.ModelProto:
    """A copy of ``model`` with each chosen activation divided by s (one Mul, before its GEMMs) and the rows of
    its GEMMs' weights multiplied by s."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    weights = {i.name: i for i in g.initializer}
    by_name = {n.name: n for n in g.node}
    muls: dict[str, onnx.NodeProto] = {}
    for sm in smoothings:
        if sm.alpha is None:
            continue
        act, s = sm.activation, np.asarray(sm.scale, dtype=np.float32)
        smoothed = act + SMOOTHED
        for name in sm.gemms:
            node = by_name[name]
            init = weights[node.input[1]]
            w = numpy_helper.to_array(init)
            scaled = (w.astype(np.float32) * (s[None, :] if _transposed(node) else s[:, None])).astype(w.dtype)
            init.CopyFrom(numpy_helper.from_array(scaled, init.name))
            node.input[0] = smoothed
        g.initializer.append(numpy_helper.from_array((1.0 / s.astype(np.float64)).astype(np.float32),
                                                     act + "/smooth_scale"))
        muls[act] = helper.make_node("Mul", [act, act + "/smooth_scale"], [smoothed], name=act + "/Smooth")
    # Each Mul right after its activation's producer (graph inputs: first), keeping the node order topological.
    nodes = [muls.pop(i.name) for i in g.input if i.name in muls]
    for node in g.node:
        nodes.append(node)
        nodes.extend(muls.pop(t) for t in node.output if t in muls)
    del g.node[:]
    g.node.extend(nodes)
    return out
