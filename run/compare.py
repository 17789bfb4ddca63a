"""Compare two graphs' outputs on the same inputs through Polygraphy's Comparator.

Each graph runs on the backend it needs: ONNX Runtime for standard graphs, bertrt's CPU reference
(``BertrtRefRunner``) for graphs with TensorRT plugin nodes. Inputs are random but valid for a BERT QA
model (ids in [0, vocab), segments in {0, 1}, contiguous masks of random lengths) or loaded from a
Polygraphy inputs JSON.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from bertrt.contract import DEFAULT_SEQ, INPUT_IDS, INPUT_MASK, SEGMENT_IDS, random_feeds
from bertrt.errors import BertrtError
from bertrt.onnx_io import load_model
from bertrt.plugins.nodes import EMB_LAYER_NORM, TYPE_FP16, TYPE_INT8, is_plugin_node
from bertrt.plugins.specs import spec_of
from bertrt.plugins.runner import has_plugin_nodes

# Default tolerances per precision: fp32 is the references' float32 rounding; fp16 the plugins' FP16
# rounding at their boundaries; int8 the fake-quantization error of a calibrated model's logits.
TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (2e-2, 2e-2), "int8": (2.5e-1, 2.5e-1)}
SEG_NAMES = (SEGMENT_IDS, "token_type_ids")
MASK_NAMES = (INPUT_MASK, "attention_mask")


@dataclass
class OutputDiff:
    name: str
    max_abs: float
    max_rel: float
    mean_abs: float
    passed: bool


@dataclass
class CompareResult:
    passed: bool
    outputs: list[OutputDiff]
    atol: float
    rtol: float
    precision: str
    backends: tuple[str, str]
    iterations: int
    only_in: dict[str, list[str]] = field(default_factory=dict)  # outputs one graph has and the other not

    def table(self) -> str:
        lines = [f"{'output':<24} {'max abs':>12} {'max rel':>12} {'mean abs':>12}  verdict"]
        for o in self.outputs:
            lines.append(f"{o.name:<24} {o.max_abs:>12.4e} {o.max_rel:>12.4e} {o.mean_abs:>12.4e}  "
                         f"{'PASS' if o.passed else 'FAIL'}")
        lines.append(f"{'PASS' if self.passed else 'FAIL'} ({self.precision}: atol {self.atol:g}, rtol {self.rtol:g}; "
                     f"{self.backends[0]} vs {self.backends[1]}; {self.iterations} iteration(s))")
        return "\n".join(lines)


def vocab_size(model: onnx.ModelProto) -> int | None:
    """Rows of the word-embedding table: from an EmbLN node, or the Gather that reads input_ids."""
    g = model.graph
    for n in g.node:
        if n.op_type == EMB_LAYER_NORM:
            attrs = {a.name: a for a in n.attribute}
            word, beta = attrs.get("bert_embeddings_word_embeddings"), attrs.get("bert_embeddings_layernorm_beta")
            if word is not None and beta is not None:
                E = int(np.prod(beta.t.dims)) or 1
                return int(np.prod(word.t.dims)) // E
    inits = {t.name: t for t in g.initializer}
    ids_name = _find_input(model, ("input_ids",))
    reach = {ids_name} if ids_name else set()
    for n in g.node:  # follow Cast / Identity / Unsqueeze etc. from input_ids to the first Gather
        if n.op_type == "Gather" and len(n.input) > 1 and n.input[1] in reach and n.input[0] in inits:
            return int(inits[n.input[0]].dims[0])
        if n.op_type != "Gather" and any(i in reach for i in n.input):
            reach.update(n.output)
    return None


def plugin_precision(model: onnx.ModelProto) -> str:
    """The lowest precision any plugin node runs in: "int8", "fp16" or "fp32" (also for no plugins)."""
    found = "fp32"
    for n in model.graph.node:
        if not is_plugin_node(n):
            continue
        ints = {a.name: a.i for a in n.attribute if a.type == onnx.AttributeProto.INT}
        spec = spec_of(n)
        if ints.get("type_id") == TYPE_INT8 or (spec is not None and spec.int8_only):
            return "int8"
        if ints.get("type_id") == TYPE_FP16 or ints.get("output_fp16") == 1:
            found = "fp16"
    return found


def _find_input(model, names) -> str | None:
    ins = {vi.name for vi in model.graph.input} - {t.name for t in model.graph.initializer}
    return next((n for n in names if n in ins), None)


def _input_specs(model):
    inits = {t.name for t in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        out.append((vi.name, np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)), dims))
    return out


def random_inputs(model: onnx.ModelProto, batch: int = 1, seq: int | None = None, seed: int = 0,
                  iterations: int = 1, vocab: int | None = None, path=None) -> list[dict[str, np.ndarray]]:
    """Valid BERT QA inputs for the model's [batch, seq] inputs (``contract.random_feeds``: ids, segments in
    {0, 1}, prefix masks of random lengths), in the dtypes the model declares."""
    vocab = vocab or vocab_size(model)
    if vocab is None:
        raise BertrtError("cannot tell the vocabulary size (no EmbLayerNorm node and no word-embedding Gather on "
                          "input_ids); give the inputs instead", path)
    specs = _input_specs(model)
    for name, _dtype, dims in specs:
        if len(dims) != 2:
            raise BertrtError(f"input {name} has rank {len(dims)}; random inputs need [batch, seq] inputs "
                              "(give the inputs instead)", path)
    S = B = None
    for name, _dtype, dims in specs:
        S = _resolve(dims[1], seq if S is None else S, "sequence length", name, path)
        B = _resolve(dims[0], batch if B is None else B, "batch", name, path)
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(iterations):
        canonical = random_feeds(B or batch, S or DEFAULT_SEQ, vocab, rng=rng)
        feeds.append({name: canonical[INPUT_MASK if name in MASK_NAMES else SEGMENT_IDS if name in SEG_NAMES
                                      else INPUT_IDS].astype(dtype) for name, dtype, _dims in specs})
    return feeds


def _resolve(static, wanted, what, name, path):
    if static:
        if wanted is not None and wanted != static:
            raise BertrtError(f"input {name} has a fixed {what} of {static}, not {wanted}", path)
        return static
    return wanted if wanted is not None else DEFAULT_SEQ


def load_inputs(path: str | os.PathLike) -> list[dict[str, np.ndarray]]:
    """Feed dicts from a Polygraphy inputs JSON (``polygraphy run --save-inputs``)."""
    from polygraphy.json import load_json

    p = Path(path)
    if not p.is_file():
        raise BertrtError("no such file", p)
    try:
        data = load_json(os.fspath(p))
    except Exception as e:  # Polygraphy raises several types for a bad file
        raise BertrtError(f"not a Polygraphy inputs JSON: {str(e).splitlines()[0] if str(e) else type(e).__name__}", p)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data or not all(isinstance(d, dict) for d in data):
        raise BertrtError("not a Polygraphy inputs JSON (expected a list of name -> array)", p)
    for d in data:
        bad = [k for k, v in d.items() if not isinstance(v, np.ndarray)]
        if bad:
            raise BertrtError(f"not a Polygraphy inputs JSON: '{bad[0]}' is not an array", p)
    return data


def _check_feeds(feeds, ma, mb, path):
    for model in (ma, mb):
        for name, _dtype, _dims in _input_specs(model):
            if any(name not in f for f in feeds):
                raise BertrtError(f"the inputs give no value for the graph input '{name}'", path)


def _runner(model: onnx.ModelProto, label: str, amax, backend: str = "auto", trt_oss=None):
    if has_plugin_nodes(model) and backend == "kernels":
        from bertrt.plugins.kernels.lib import require_gpu
        from bertrt.plugins.kernels.poly_runner import BertrtKernelsRunner
        from bertrt.plugins.kernels.tree import find_checkout

        find_checkout(trt_oss)
        require_gpu()
        return BertrtKernelsRunner(model, amax=amax, name=f"{label}:bertrt-kernels", trt_oss=trt_oss), "bertrt-kernels"
    if has_plugin_nodes(model):
        from bertrt.plugins.poly_runner import BertrtRefRunner

        return BertrtRefRunner(model, amax=amax, name=f"{label}:bertrt-ref"), "bertrt-ref"
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    return OnnxrtRunner(SessionFromOnnx(model.SerializeToString(), providers=["CPUExecutionProvider"]),
                        name=f"{label}:onnxrt"), "onnxrt"


def compare_models(a, b, *, batch: int = 1, seq: int | None = None, seed: int = 0, iterations: int = 1,
                   precision: str | None = None, atol: float | None = None, rtol: float | None = None,
                   inputs: list[dict] | str | os.PathLike | None = None,
                   amax: dict[str, float] | None = None, backend: str = "auto", trt_oss=None) -> CompareResult:
    """Run graphs ``a`` and ``b`` (paths or ModelProtos) on the same inputs and compare common outputs.

    Inputs are random (see ``random_inputs``) unless ``inputs`` gives feed dicts or a Polygraphy JSON
    path. Tolerances default by precision (``TOLERANCES``); with no precision it is read from the
    plugin nodes' types (``plugin_precision``). ``amax`` carries INT8 ranges for plugins. ``backend="kernels"``
    runs fused graphs on NVIDIA's plugin kernels (GPU, TensorRT OSS checkout ``trt_oss``).
    """
    from polygraphy.comparator import Comparator, CompareFunc
    from polygraphy.logger import G_LOGGER

    path_a = None if isinstance(a, onnx.ModelProto) else a
    ma = a if isinstance(a, onnx.ModelProto) else load_model(a)
    mb = b if isinstance(b, onnx.ModelProto) else load_model(b)
    if is_packed(ma) or is_packed(mb):
        raise BertrtError("a packed (var-seqlen) model takes other inputs than a padded one: compare it with "
                          "compare_packed(padded, packed)", path_a if is_packed(ma) else None)
    if precision is None:
        precision = max(plugin_precision(ma), plugin_precision(mb), key=list(TOLERANCES).index)
    if precision not in TOLERANCES:
        raise BertrtError(f"unknown precision '{precision}' (choose from {', '.join(TOLERANCES)})")
    d_atol, d_rtol = TOLERANCES[precision]
    atol = d_atol if atol is None else atol
    rtol = d_rtol if rtol is None else rtol
    names_a = [o.name for o in ma.graph.output]
    names_b = [o.name for o in mb.graph.output]
    common = [n for n in names_a if n in names_b]
    if not common:
        raise BertrtError(f"the graphs share no output name ({', '.join(names_a)} vs {', '.join(names_b)})", path_a)
    feeds = _feeds(inputs, ma, mb, batch, seq, seed, iterations, path_a)
    ra, ka = _runner(ma, "A", amax, backend, trt_oss)
    rb, kb = _runner(mb, "B", amax, backend, trt_oss)
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, InvalidGraph, RuntimeException

    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):  # the table below is the report
        try:
            results = Comparator.run([ra, rb], data_loader=feeds)
        except (Fail, InvalidArgument, InvalidGraph, RuntimeException) as e:  # a graph ONNX Runtime cannot run
            raise BertrtError(f"ONNX Runtime cannot run the graphs on these inputs: {str(e).strip().splitlines()[0]}",
                              path_a) from None
        acc = Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=atol, rtol=rtol))
    per_iter = next(iter(acc[0].values()))
    diffs = []
    for name in common:
        rs = [it[name] for it in per_iter if name in it]
        diffs.append(OutputDiff(name, max(r.max_absdiff for r in rs), max(r.max_reldiff for r in rs),
                                float(np.mean([r.mean_absdiff for r in rs])), all(bool(r) for r in rs)))
    only = {k: v for k, v in (("A", [n for n in names_a if n not in common]),
                              ("B", [n for n in names_b if n not in common])) if v}
    return CompareResult(all(d.passed for d in diffs), diffs, atol, rtol, precision, (ka, kb), len(feeds), only)


# ---------------------------------------------------------------- packed (var-seqlen) against padded


def is_packed(model: onnx.ModelProto) -> bool:
    """Whether a model takes the var-seqlen (packed) inputs."""
    return _find_input(model, ("cu_seqlens",)) is not None


@dataclass
class SequenceDiff:
    index: int
    length: int
    max_abs: float
    max_rel: float
    passed: bool


@dataclass
class PackedCompareResult:
    """Per sequence: the packed model's logits against the padded model's at the sequence's real tokens."""

    passed: bool
    sequences: list[SequenceDiff]
    tokens: object  # bertrt.run.packing.TokenCount over all iterations
    atol: float
    rtol: float
    precision: str
    backends: tuple[str, str]
    iterations: int

    def table(self) -> str:
        lines = [f"{'sequence':>8} {'tokens':>7} {'max abs':>12} {'max rel':>12}  verdict"]
        for s in self.sequences:
            lines.append(f"{s.index:>8} {s.length:>7} {s.max_abs:>12.4e} {s.max_rel:>12.4e}  "
                         f"{'PASS' if s.passed else 'FAIL'}")
        lines.append(self.tokens.describe())
        lines.append(f"{'PASS' if self.passed else 'FAIL'} ({self.precision}: atol {self.atol:g}, rtol {self.rtol:g}; "
                     f"padded on {self.backends[0]} vs packed on {self.backends[1]}; {self.iterations} iteration(s))")
        return "\n".join(lines)


def compare_packed(padded, packed, *, batch: int = 8, seq: int | None = None, seed: int = 0, iterations: int = 1,
                   precision: str | None = None, atol: float | None = None, rtol: float | None = None,
                   inputs: list[dict] | str | os.PathLike | None = None,
                   amax: dict[str, float] | None = None) -> PackedCompareResult:
    """Run the padded model on [B, S] feeds and the packed model on the same sequences packed; compare
    each sequence's logits at its real tokens (padding is not compared: the packed model has none).

    An element fails when it is off by more than atol and by more than rtol relative (Polygraphy's
    elementwise rule). Inputs and tolerances as in ``compare_models``.
    """
    from bertrt.run.packing import TokenCount, model_max_length, pack_varseqlen, unpack_varseqlen

    path_p = None if isinstance(padded, onnx.ModelProto) else padded
    path_k = None if isinstance(packed, onnx.ModelProto) else packed
    mp = padded if isinstance(padded, onnx.ModelProto) else load_model(padded)
    mk = packed if isinstance(packed, onnx.ModelProto) else load_model(packed)
    if is_packed(mp):
        raise BertrtError("is a packed (var-seqlen) model; the reference side must take padded [batch, seq] inputs",
                          path_p)
    if not is_packed(mk):
        raise BertrtError("is not a packed (var-seqlen) model: it has no cu_seqlens input", path_k)
    if precision is None:
        precision = max(plugin_precision(mp), plugin_precision(mk), key=list(TOLERANCES).index)
    if precision not in TOLERANCES:
        raise BertrtError(f"unknown precision '{precision}' (choose from {', '.join(TOLERANCES)})")
    atol = TOLERANCES[precision][0] if atol is None else atol
    rtol = TOLERANCES[precision][1] if rtol is None else rtol
    feeds = _feeds(inputs, mp, mp, batch, seq, seed, iterations, path_p, vocab_from=mk)
    max_len = model_max_length(mk)
    out_name = mp.graph.output[0].name  # logits, or an encoder's hidden_states
    if out_name not in [o.name for o in mk.graph.output]:
        raise BertrtError(f"has no output {out_name} (the padded model's)", path_k)
    from polygraphy.logger import G_LOGGER

    rp, kp = _runner(mp, "padded", amax)
    rk, kk = _runner(mk, "packed", amax)
    sequences, tokens = [], None
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL), rp, rk:  # the table is the report
        for feed in feeds:
            mask = feed["input_mask"]
            want = np.asarray(rp.infer(feed)[out_name], dtype=np.float32)
            got = unpack_varseqlen(rk.infer(pack_varseqlen(feed, max_len=max_len, path=path_p))[out_name], mask,
                                   per_token=want.shape[-1])
            count = TokenCount.of(mask)
            tokens = count if tokens is None else tokens + count
            for b, n in enumerate(mask.astype(bool).sum(axis=1)):
                w, g = want[b, :n].astype(np.float64), got[b, :n].astype(np.float64)
                absdiff = np.abs(g - w)
                reldiff = absdiff / np.maximum(np.abs(w), 1e-12)
                failed = bool(((absdiff > atol) & (reldiff > rtol)).any())
                sequences.append(SequenceDiff(len(sequences), int(n), float(absdiff.max(initial=0.0)),
                                              float(reldiff.max(initial=0.0)), not failed))
    return PackedCompareResult(all(s.passed for s in sequences), sequences, tokens, atol, rtol, precision,
                               (kp, kk), len(feeds))


def default_seq(model: onnx.ModelProto) -> int:
    """DEFAULT_SEQ, or fewer where the position table has fewer rows (positions past it do not exist)."""
    import onnx_graphsurgeon as gs

    from bertrt.convert.onnx_intake import position_rows

    for n in model.graph.node:
        if n.op_type == EMB_LAYER_NORM:
            attrs = {a.name: a.t for a in n.attribute if a.type == onnx.AttributeProto.TENSOR}
            pos, beta = attrs.get("bert_embeddings_position_embeddings"), attrs.get("bert_embeddings_layernorm_beta")
            if pos is not None and beta is not None:
                return min(DEFAULT_SEQ, int(np.prod(pos.dims)) // max(1, int(np.prod(beta.dims))))
    rows = position_rows(gs.import_onnx(model))
    return DEFAULT_SEQ if rows is None else min(DEFAULT_SEQ, rows)


def _feeds(inputs, model, other, batch, seq, seed, iterations, path, vocab_from=None) -> list[dict]:
    """Random valid feeds for ``model``, or the given ones (a list or a Polygraphy JSON) checked against both models."""
    if inputs is None:
        vocab = vocab_size(model) or vocab_size(vocab_from if vocab_from is not None else other)
        if seq is None and any(len(dims) == 2 and not dims[1] for _, _, dims in _input_specs(model)):
            seq = min(default_seq(model), default_seq(vocab_from if vocab_from is not None else other))
        return random_inputs(model, batch, seq, seed, iterations, vocab=vocab, path=path)
    source = inputs if isinstance(inputs, (str, os.PathLike)) else None
    feeds = load_inputs(inputs) if source is not None else list(inputs)
    _check_feeds(feeds, model, other, source)
    return feeds
