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

from bertrt.calibrate.qat import has_qdq
from bertrt.calibrate.qdq import QMAX
from bertrt.contract import DEFAULT_SEQ, INPUT_IDS, INPUT_MASK, SEGMENT_IDS, random_feeds
from bertrt.errors import BertrtError
from bertrt.onnx_io import load_model
from bertrt.plugins.nodes import EMB_LAYER_NORM, TYPE_FP16, TYPE_INT8, is_plugin_node
from bertrt.plugins.specs import spec_of
from bertrt.plugins.runner import has_plugin_nodes

# Default tolerances per precision: (atol, rtol, Polygraphy's check_error_stat). fp32 is the references' float32
# rounding and fp16 the plugins' FP16 rounding at their boundaries, element by element. INT8 cannot be checked
# element by element: a value that rounds to the neighbouring INT8 step moves everything after it, so two correct
# INT8 runs of one graph differ by about 1 in some logits. int8 bounds the mean absolute error of each output
# instead, in steps of that output's own INT8 grid (max |A's output| / 127; atol None): each INT8 run may sit on
# average one step off the exact computation, so two of them, A and B, INT8_STEPS = 2 apart (README, QAT).
INT8_STEPS = 2.0
TOLERANCES = {"fp32": (1e-4, 1e-3, "elemwise"), "fp16": (2e-2, 2e-2, "elemwise"), "int8": (None, 0.0, "mean")}
ERROR_STATS = ("elemwise", "max", "mean", "median")
SEG_NAMES = (SEGMENT_IDS, "token_type_ids")
MASK_NAMES = (INPUT_MASK, "attention_mask")


@dataclass
class OutputDiff:
    name: str
    max_abs: float
    max_rel: float
    mean_abs: float
    passed: bool
    median_abs: float = 0.0
    atol: float = 0.0  # the bound it was checked against (an INT8 step count resolved for this output)


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
    error_stat: str = "elemwise"
    notes: list[str] = field(default_factory=list)
    reference: str = "A"  # "A'": A with the scales B cannot have unified (compare_models)

    def table(self) -> str:
        lines = [f"{'output':<24} {'max abs':>12} {'max rel':>12} {'mean abs':>12} {'median abs':>12}  verdict"]
        for o in self.outputs:
            lines.append(f"{o.name:<24} {o.max_abs:>12.4e} {o.max_rel:>12.4e} {o.mean_abs:>12.4e} "
                         f"{o.median_abs:>12.4e}  {'PASS' if o.passed else 'FAIL'}")
        rule = tolerance_text(self.atol, self.rtol, self.error_stat, {o.name: o.atol for o in self.outputs})
        lines.append(f"{'PASS' if self.passed else 'FAIL'} ({self.precision}: {rule}; "
                     f"{self.reference} on {self.backends[0]} vs B on {self.backends[1]}; {self.iterations} "
                     "iteration(s))")
        return "\n".join(lines)


def tolerance_text(atol: float | None, rtol: float, stat: str, steps: dict[str, float] | None = None) -> str:
    """What passes, in words: Polygraphy's rule (fails where the error is above atol and above rtol relative).
    ``steps``: output -> the bound an atol of None resolved to."""
    what = "every element" if stat == "elemwise" else f"the {stat} absolute error"
    if atol is not None:
        bound = f"atol {atol:g}"
    else:
        resolved = ": " + ", ".join(f"{n} {v:.4g}" for n, v in steps.items()) if steps else ""
        bound = f"{INT8_STEPS:g} steps of the output's INT8 grid ({INT8_STEPS:g} x max |A| / {QMAX}{resolved})"
    return f"{what} within {bound}" + (f" or rtol {rtol:g}" if rtol else "")


def step_atol(reference: np.ndarray) -> float:
    """INT8_STEPS steps of a tensor's own symmetric INT8 grid: max |reference| / 127 each."""
    return INT8_STEPS * float(np.abs(reference).max(initial=0.0)) / QMAX


def tolerances(precision: str, atol: float | None = None, rtol: float | None = None,
               stat: str | None = None) -> tuple[float | None, float, str]:
    """(atol, rtol, error statistic): the precision's defaults (TOLERANCES) where not given; an atol of None
    is INT8_STEPS steps of each output's INT8 grid (``step_atol``), resolved once A has run."""
    if precision not in TOLERANCES:
        raise BertrtError(f"unknown precision '{precision}' (choose from {', '.join(TOLERANCES)})")
    if stat is not None and stat not in ERROR_STATS:
        raise BertrtError(f"unknown error statistic '{stat}' (choose from {', '.join(ERROR_STATS)})")
    d_atol, d_rtol, d_stat = TOLERANCES[precision]
    return (d_atol if atol is None else atol, d_rtol if rtol is None else rtol, d_stat if stat is None else stat)


def graph_precision(model: onnx.ModelProto) -> str:
    """int8 for a graph with Q/DQ nodes, else the lowest precision its plugin nodes run in."""
    return "int8" if has_qdq(model) else plugin_precision(model)


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
    import onnxruntime as ort
    from polygraphy.backend.onnxrt import OnnxrtRunner

    from bertrt.ort_check import quiet_options

    data = model.SerializeToString()
    # Polygraphy's SessionFromOnnx keeps ONNX Runtime's log on: a failure would print it beside the Error line.
    return OnnxrtRunner(lambda: ort.InferenceSession(data, quiet_options(), providers=["CPUExecutionProvider"]),
                        name=f"{label}:onnxrt"), "onnxrt"


def compare_models(a, b, *, batch: int = 1, seq: int | None = None, seed: int = 0, iterations: int = 1,
                   precision: str | None = None, atol: float | None = None, rtol: float | None = None,
                   inputs: list[dict] | str | os.PathLike | None = None,
                   amax: dict[str, float] | None = None, check_error_stat: str | None = None,
                   as_exported: bool = False, backend: str = "auto", trt_oss=None, b_path=None) -> CompareResult:
    """Run graphs ``a`` and ``b`` (paths or ModelProtos) on the same inputs and compare common outputs
    (``b_path``: the file a loaded ``b`` came from, which a refusal names).

    Inputs are random (see ``random_inputs``) unless ``inputs`` gives feed dicts or a Polygraphy JSON
    path. Tolerances and the error statistic checked default by precision (``TOLERANCES``); with no precision
    it is int8 for ranges or a graph with Q/DQ nodes, else read from the plugin nodes' types. ``amax`` (INT8
    ranges, as a TensorRT 10 calibration table gives them) runs a fused ``b`` as TensorRT 10 implicit INT8
    computes it (``implicit_int8_model``: its INT8 plugins and the GEMMs that have ranges), as `bertrt squad
    --amax` does.

    A Q/DQ (QAT) ``a`` that quantizes one tensor with several scales (PyTorch's Q, K and V inputs) cannot be
    what a fused ``b`` computes: its one QKV GEMM has one input scale, the largest (``calibrate qat``). Then
    ``b`` is compared with A' = ``unify_scales(a)``, A computing so, and A' against A is reported in the notes
    (``as_exported`` compares with ``a`` itself).

    ``backend="kernels"`` runs fused graphs on NVIDIA's plugin kernels (GPU, TensorRT OSS checkout ``trt_oss``).
    """
    from polygraphy.comparator import Comparator, CompareFunc
    from polygraphy.logger import G_LOGGER

    path_a = None if isinstance(a, onnx.ModelProto) else a
    path_b = b_path if isinstance(b, onnx.ModelProto) else b
    ma = a if isinstance(a, onnx.ModelProto) else load_model(a)
    mb = b if isinstance(b, onnx.ModelProto) else load_model(b)
    for m, p in ((ma, path_a), (mb, path_b)):
        _check_runnable(m, p)
        check_seq(m, seq, p)
    if is_packed(ma) or is_packed(mb):
        raise BertrtError("a packed (var-seqlen) model takes other inputs than a padded one: compare it with "
                          "compare_packed(padded, packed)", path_a if is_packed(ma) else None)
    if precision is None:
        precision = "int8" if amax else max(graph_precision(ma), graph_precision(mb), key=list(TOLERANCES).index)
    atol, rtol, stat = tolerances(precision, atol, rtol, check_error_stat)
    notes = []
    exported, unified = None, {}
    if has_qdq(ma) and has_plugin_nodes(mb) and not as_exported:
        from bertrt.calibrate.qat import unify_scales

        unified_model, unified = unify_scales(ma)
        if unified:
            exported, ma = ma, unified_model
    if amax and has_plugin_nodes(mb) and not has_qdq(mb):
        from bertrt.calibrate.evaluate import implicit_int8_model

        mb, report = implicit_int8_model(mb, amax)
        notes.append(f"B runs as TensorRT 10 implicit INT8 with the ranges: {len(report.quantized)} GEMMs in INT8"
                     + (f", {len(report.skipped)} in float (no range on their input or output)" if report.skipped
                        else ""))
    names_a = [o.name for o in ma.graph.output]
    names_b = [o.name for o in mb.graph.output]
    common = [n for n in names_a if n in names_b]
    if not common:
        raise BertrtError(f"the graphs share no output name ({', '.join(names_a)} vs {', '.join(names_b)})", path_a)
    feeds = _feeds(inputs, ma, mb, batch, seq, seed, iterations, path_a)
    ra, ka = _runner(ma, "A'" if exported is not None else "A", amax, backend, trt_oss)
    rb, kb = _runner(mb, "B", amax, backend, trt_oss)
    runners = [(ra, ka, path_a), (rb, kb, path_b)] + ([(*_runner(exported, "A", amax, backend, trt_oss), path_a)]
                                                      if exported is not None else [])
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, InvalidGraph, RuntimeException
    from polygraphy.exception import PolygraphyException

    from bertrt.ort_check import ort_message

    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):  # the table below is the report
        results = None
        for runner, kind, path in runners:  # one at a time: a failure names its graph
            try:
                one = Comparator.run([runner], data_loader=feeds)
            except (Fail, InvalidArgument, InvalidGraph, RuntimeException, PolygraphyException) as e:  # cannot run
                who = {"onnxrt": "ONNX Runtime", "bertrt-ref": "bertrt's reference"}.get(kind, kind)
                first = next(iter(feeds[0].values()), None) if feeds else None
                shape = "x".join(map(str, np.shape(first))) if first is not None else "no inputs"
                raise BertrtError(f"{who} cannot run it on these inputs ({shape}): {ort_message(e)}",
                                  path) from None
            if results is None:
                results = one
            else:
                results.extend(one)  # RunResults: a list of (runner name, iteration results)
        bounds = atol
        if atol is None:  # INT8 steps of each output of the reference, over every iteration
            bounds = {n: max(step_atol(it[n]) for it in results[0][1]) for n in common}
        acc = Comparator.compare_accuracy(
            results, comparisons=[(0, i) for i in range(1, len(runners))],
            compare_func=CompareFunc.simple(atol=bounds, rtol=rtol, check_error_stat=stat))
    per_pair = list(acc[0].values())
    diffs = [_output_diff(name, per_pair[0], bounds) for name in common]
    if exported is not None:
        tensor = min(unified)
        moved = ", ".join(f"{d.name} max {d.max_abs:.4g} mean {d.mean_abs:.4g}"
                          for d in (_output_diff(n, per_pair[1], bounds) for n in common))
        notes.insert(0, f"A quantizes {len(unified)} tensors with several scales (the Q, K and V inputs, e.g. {tensor}); "
                        f"B's one QKV GEMM reads each with one, the largest, so B is compared with A' = A with those "
                        f"scales unified to the largest (calibrate qat's ranges). A' against A as exported: {moved}")
    only = {k: v for k, v in (("A", [n for n in names_a if n not in common]),
                              ("B", [n for n in names_b if n not in common])) if v}
    return CompareResult(all(d.passed for d in diffs), diffs, atol, rtol, precision, (ka, kb), len(feeds), only,
                         stat, notes, reference="A'" if exported is not None else "A")


def _output_diff(name: str, per_iter, bounds) -> OutputDiff:
    """One output's errors over the iterations of one comparison (Polygraphy's per-iteration results)."""
    rs = [it[name] for it in per_iter if name in it]
    return OutputDiff(name, max(r.max_absdiff for r in rs), max(r.max_reldiff for r in rs),
                      float(np.mean([r.mean_absdiff for r in rs])), all(bool(r) for r in rs),
                      float(np.mean([r.median_absdiff for r in rs])),
                      bounds[name] if isinstance(bounds, dict) else bounds)


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
    atol: float | None  # None: INT8 steps of each sequence's padded output (step_atol)
    rtol: float
    precision: str
    backends: tuple[str, str]
    iterations: int
    error_stat: str = "elemwise"

    def table(self) -> str:
        lines = [f"{'sequence':>8} {'tokens':>7} {'max abs':>12} {'max rel':>12}  verdict"]
        for s in self.sequences:
            lines.append(f"{s.index:>8} {s.length:>7} {s.max_abs:>12.4e} {s.max_rel:>12.4e}  "
                         f"{'PASS' if s.passed else 'FAIL'}")
        lines.append(self.tokens.describe())
        rule = tolerance_text(self.atol, self.rtol, self.error_stat)
        lines.append(f"{'PASS' if self.passed else 'FAIL'} ({self.precision}: {rule} per sequence; "
                     f"padded on {self.backends[0]} vs packed on {self.backends[1]}; {self.iterations} iteration(s))")
        return "\n".join(lines)


def compare_packed(padded, packed, *, batch: int = 8, seq: int | None = None, seed: int = 0, iterations: int = 1,
                   precision: str | None = None, atol: float | None = None, rtol: float | None = None,
                   inputs: list[dict] | str | os.PathLike | None = None,
                   amax: dict[str, float] | None = None, check_error_stat: str | None = None) -> PackedCompareResult:
    """Run the padded model on [B, S] feeds and the packed model on the same sequences packed; compare
    each sequence's logits at its real tokens (padding is not compared: the packed model has none).

    A sequence fails as in Polygraphy: an element off by more than atol and by more than rtol relative
    (elemwise), or the error statistic above both. Inputs and tolerances as in ``compare_models``.
    """
    from bertrt.run.packing import TokenCount, model_max_length, pack_varseqlen, unpack_varseqlen

    path_p = None if isinstance(padded, onnx.ModelProto) else padded
    path_k = None if isinstance(packed, onnx.ModelProto) else packed
    mp = padded if isinstance(padded, onnx.ModelProto) else load_model(padded)
    mk = packed if isinstance(packed, onnx.ModelProto) else load_model(packed)
    _check_runnable(mp, path_p)
    check_seq(mp, seq, path_p)
    check_seq(mk, seq, path_k)
    if is_packed(mp):
        raise BertrtError("is a packed (var-seqlen) model; the reference side must take padded [batch, seq] inputs",
                          path_p)
    if not is_packed(mk):
        raise BertrtError("is not a packed (var-seqlen) model: it has no cu_seqlens input", path_k)
    if precision is None:
        precision = max(graph_precision(mp), graph_precision(mk), key=list(TOLERANCES).index)
    atol, rtol, stat = tolerances(precision, atol, rtol, check_error_stat)
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
                bound = step_atol(w) if atol is None else atol  # INT8: the steps of this sequence's own output
                failed = _failed(absdiff, reldiff, bound, rtol, stat)
                sequences.append(SequenceDiff(len(sequences), int(n), float(absdiff.max(initial=0.0)),
                                              float(reldiff.max(initial=0.0)), not failed))
    return PackedCompareResult(all(s.passed for s in sequences), sequences, tokens, atol, rtol, precision,
                               (kp, kk), len(feeds), stat)


def _failed(absdiff: np.ndarray, reldiff: np.ndarray, atol: float, rtol: float, stat: str) -> bool:
    """Polygraphy's rule on one sequence: elemwise, any element off by more than atol and rtol; otherwise the
    statistic of the absolute and of the relative errors."""
    if stat == "elemwise":
        return bool(((absdiff > atol) & (reldiff > rtol)).any())
    reduce = {"max": np.max, "mean": np.mean, "median": np.median}[stat]
    return bool(reduce(absdiff) > atol and reduce(reldiff) > rtol) if absdiff.size else False


def default_seq(model: onnx.ModelProto) -> int:
    """DEFAULT_SEQ, or fewer where the position table has fewer rows (positions past it do not exist)."""
    from bertrt.run.packing import position_rows

    rows = position_rows(model)
    return DEFAULT_SEQ if rows is None else min(DEFAULT_SEQ, rows)


def check_seq(model: onnx.ModelProto, seq: int | None, path=None) -> None:
    """A BertrtError if ``seq`` is longer than the model's position table (ONNX Runtime's error would name a
    broadcast in an Add; the CPU reference would read past the table)."""
    from bertrt.run.packing import position_rows

    rows = position_rows(model) if seq is not None else None
    if rows is not None and seq > rows:
        raise BertrtError(f"seq {seq} is longer than the model's {rows} positions", path,
                          hint=f"compare at {rows} tokens or fewer")


def _check_runnable(model: onnx.ModelProto, path) -> None:
    """A graph without plugin nodes must load into ONNX Runtime, and every graph take numbers for its inputs:
    a refusal names the file, not the pair."""
    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        elem = vi.type.tensor_type.elem_type
        if vi.name not in inits and elem not in _NUMERIC:
            kind = onnx.TensorProto.DataType.Name(elem) if elem in onnx.TensorProto.DataType.values() else elem
            raise BertrtError(f"input '{vi.name}' is of type {kind}, which no BERT input is", path)
    if path is not None and not has_plugin_nodes(model):
        from bertrt.ort_check import check_loads

        check_loads(path)


_NUMERIC = {onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
            onnx.TensorProto.BOOL, onnx.TensorProto.UINT8, onnx.TensorProto.INT8, onnx.TensorProto.DOUBLE}


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
