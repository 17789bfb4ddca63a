"""``bertrt calibrate``: INT8 ranges on the CPU, TensorRT 10 calibration caches, TensorRT 11 Q/DQ graphs."""

from __future__ import annotations

import time
from pathlib import Path

import click

from bertrt.calib_cache import ALGORITHMS, DEFAULT_ALGORITHM
from bertrt.errors import BertrtError
from bertrt.options import amax_option, batch_option
from bertrt.options import log as _log
from bertrt.options import out_option, report_option, reporter, seq_option, squad_json_option, vocab_option


def _name_map(path):
    if path is None:
        return None
    from bertrt.name_map import read_name_map

    return read_name_map(path)


def _groups(text):
    return [g.strip() for g in text.split(",") if g.strip()] if text else []


def _feed_options(purpose: str):
    """The options that choose the samples (see _feeds), shared by the commands that run the model on them."""
    options = [
        squad_json_option(f"Questions to {purpose}: the first feature of each; or --npz-dir", required=False),
        click.option("--npz-dir", type=click.Path(file_okay=False), default=None,
                     help="Folder of .npz feeds (one array per model input), instead of --squad-json."),
        click.option("--calib-num", type=click.IntRange(min=1), default=100, show_default=True,
                     help="Number of samples (first feature of each question, or .npz files); NVIDIA's BERT recipe "
                          "calibrates on 100."),
        vocab_option,
        seq_option,
    ]

    def apply(f):
        for option in reversed(options):
            f = option(f)
        return f

    return apply


def _one_source(squad_json, npz_dir):
    if (squad_json is None) == (npz_dir is None):
        raise click.UsageError("give exactly one of --squad-json and --npz-dir")


def _feeds(proto, model, squad_json, npz_dir, calib_num, vocab, seq):
    """The calibration feeds: the first feature of each SQuAD question, or the .npz files."""
    from bertrt.calibrate import data_source
    from bertrt.run.tokenization import vocab_or_default

    if npz_dir is not None:
        return data_source.npz_feeds(npz_dir, data_source.model_inputs(proto), calib_num)
    seq = data_source.model_seq(proto, model, seq)
    return data_source.squad_feeds(squad_json, vocab_or_default(vocab), seq, calib_num)


_FLOAT_GEMMS_HELP = ("Comma-separated GEMM groups to keep in float (mixed precision): qkv, attn_out, ffn1, ffn2, head. "
                     "MiniLM smoothed (`calibrate smooth`) with ffn2 in float stays within 0.999 cosine of FP32.")
_KEEP_UNMAPPED_HELP = "With --name-map: keep tensors the map does not name (default: drop them, they are not in the graph)."


@click.group("calibrate")
def calibrate():
    """INT8 ranges on the CPU: calibration cache (TensorRT 10) or Q/DQ graph (TensorRT 11).

    \b
    bertrt calibrate smooth model.onnx --squad-json train-v1.1.json -o model.smooth.onnx
    bertrt calibrate ranges model.onnx --squad-json train-v1.1.json -o ranges.json
    bertrt calibrate cache ranges.json --trt-version 10.16 -o calib.cache
    bertrt calibrate qdq model.onnx --ranges ranges.json -o model.qdq.onnx
    bertrt calibrate qat qat.onnx -o ranges.json
    bertrt calibrate evaluate model.onnx fused.onnx --amax fused_ranges.json --squad-json dev.json
    """


@calibrate.command("ranges")
@click.argument("model", type=click.Path(path_type=Path))
@_feed_options("calibrate on")
@click.option("--method", type=click.Choice(["percentile", "entropy", "minmax"]), default="percentile",
              show_default=True, help="percentile (NVIDIA's BERT recipe) clips the rarest largest values; minmax "
              "keeps them, which a model from `calibrate smooth` needs.")
@click.option("--percentile", type=click.FloatRange(0, 100, min_open=True), default=99.99, show_default=True,
              help="With --method percentile: the share of values (in %) each range keeps, NVIDIA's BERT recipe's.")
@click.option("--gelu-clamp", type=float, default=10.0, show_default=True,
              help="Fix every GELU output's range to +-this value (0: use the measured range).")
@click.option("--name-map", type=click.Path(dir_okay=False),
              help="JSON canonical tensor name -> fused tensor names (bertrt surgery run --name-map), to key the "
                   "ranges by the fused graph.")
@click.option("--keep-unmapped", is_flag=True, help=_KEEP_UNMAPPED_HELP)
@click.option("--float-gemms", "float_groups", default=None,
              help=_FLOAT_GEMMS_HELP + " Here (TensorRT 10 implicit INT8): leaves out the ranges that would let "
                   "TensorRT run them in INT8; only ffn1, ffn2 and head can be.")
@out_option("Ranges JSON {tensor: amax} to write.")
def ranges_cmd(model, squad_json, npz_dir, calib_num, method, percentile, gelu_clamp, vocab, seq, name_map,
               keep_unmapped, float_groups, out):
    """Measure per-tensor INT8 ranges (amax) of a canonical MODEL with ONNX Runtime."""
    from bertrt.calibrate.stats import calibrate as run_calibration
    from bertrt.onnx_io import load_model
    from bertrt.ranges import write_ranges

    _one_source(squad_json, npz_dir)
    names = _name_map(name_map)
    proto = load_model(model, load_external_data=False)
    _log(f"calibrate ranges: {model}, {calib_num} samples, {method}")
    drops = set()
    if float_groups:
        from bertrt.calibrate.mixed import float_gemm_drops

        try:
            drops = float_gemm_drops(proto, _groups(float_groups))
        except BertrtError as e:
            raise e.at(model) from None
    feeds = _feeds(proto, model, squad_json, npz_dir, calib_num, vocab, seq)
    del proto
    start = time.perf_counter()
    result = run_calibration(model, feeds, method=method, percentile=percentile, gelu_clamp=gelu_clamp or None,
                             progress=reporter())
    for note in result.notes:
        _log(f"note: {note}")
    amax = {k: v for k, v in result.amax.items() if k not in drops}
    if drops:
        _log(f"left out {len(drops)} ranges so the {float_groups} GEMMs run in float")
    written = write_ranges(out, amax, names, drop_unmapped=names is not None and not keep_unmapped)
    _log(f"{len(written)} tensor ranges from {result.samples} samples ({method}) in "
         f"{time.perf_counter() - start:.1f} s -> {out}")


@calibrate.command("smooth")
@click.argument("model", type=click.Path(path_type=Path))
@_feed_options("measure on")
@click.option("--float-gemms", "float_groups", default=None,
              help="Comma-separated GEMM groups that will stay in float (qkv, attn_out, ffn1, ffn2, head): "
                   "not smoothed. Give the same groups to `ranges` / `qdq`.")
@report_option("Write what was chosen per GEMM input (alpha, INT8 error before and after) as JSON.")
@out_option("Smoothed ONNX model to write.")
def smooth_cmd(model, squad_json, npz_dir, calib_num, vocab, seq, float_groups, report_path, out):
    """Smooth the outlier channels of a canonical MODEL's GEMM inputs into the weights (SmoothQuant).

    \b
    The output computes the same function (a Mul by 1/s before each GEMM, the weight rows times s, s per
    channel); take it through surgery and calibration in place of MODEL. Per-tensor INT8 then fits the GEMM
    inputs: on MiniLM it is what brings INT8 within 0.99 cosine of FP32 (benchmarks/int8_accuracy.py).
    \b
    bertrt calibrate smooth model.onnx --squad-json train-v1.1.json -o model.smooth.onnx
    bertrt surgery run model.smooth.onnx --precision int8 --name-map map.json -o fused.onnx
    bertrt calibrate ranges model.smooth.onnx --squad-json train-v1.1.json --name-map map.json -o ranges.json
    """
    import json

    import numpy as np

    from bertrt.atomic import write_text
    from bertrt.calibrate import smooth
    from bertrt.calibrate.qat import has_qdq
    from bertrt.onnx_io import load_model, save_model

    _one_source(squad_json, npz_dir)
    proto = load_model(model)
    if has_qdq(proto):
        raise BertrtError("a Q/DQ (QAT) model is quantized already; its ranges come from `bertrt calibrate qat`",
                          model)
    skip = []
    try:
        if float_groups:
            from bertrt.calibrate.mixed import float_gemms

            skip = float_gemms(proto, _groups(float_groups))
        feeds = _feeds(proto, model, squad_json, npz_dir, calib_num, vocab, seq)
        _log(f"calibrate smooth: {model}, {len(feeds)} samples")
        start = time.perf_counter()
        plan = smooth.plan(proto, feeds, skip_gemms=skip, progress=reporter())
    except BertrtError as e:
        raise e.at(model) from None
    if not plan:
        raise BertrtError("no weight GEMM input to smooth (no MatMul/Gemm with a constant weight"
                          + (", or all of them left in float)" if skip else ")"), model)
    chosen = [p for p in plan if p.alpha is not None]
    _log(f"{'GEMM input':<40} {'GEMMs':>5} {'alpha':>5} {'INT8 error':>10} {'smoothed':>9}")
    for p in plan:
        alpha = "-" if p.alpha is None else f"{p.alpha:.1f}"
        _log(f"{p.activation[:40]:<40} {len(p.gemms):>5} {alpha:>5} {p.error_before:>10.4f} {p.error_after:>9.4f}"
             + (f"  left as it is: {p.reason}" if p.reason else ""))
    _log(f"{len(chosen)} of {len(plan)} GEMM inputs smoothed ({len(feeds)} samples, "
         f"{time.perf_counter() - start:.1f} s); error = relative error of the INT8 GEMM on sampled tokens")
    save_model(smooth.apply(proto, plan), out)
    if report_path:
        rows = [{"activation": p.activation, "gemms": p.gemms, "alpha": p.alpha,
                 "int8_error_before": None if np.isnan(p.error_before) else p.error_before,
                 "int8_error_after": None if np.isnan(p.error_after) else p.error_after, "reason": p.reason or None}
                for p in plan]
        write_text(report_path, json.dumps({"model": str(model), "samples": len(feeds), "smoothing": rows},
                                           indent=1) + "\n")
    _log(f"-> {out}")


@calibrate.command("cache")
@click.argument("ranges", type=click.Path(path_type=Path))
@click.option("--trt-version", required=True, help="TensorRT version the cache is for, e.g. 10.16 or 8.6.1.")
@click.option("--algorithm", type=click.Choice(list(ALGORITHMS)), default=DEFAULT_ALGORITHM, show_default=True,
              help="Algorithm named in the header; TensorRT reuses a cache only for the same calibrator type.")
@click.option("--name-map", type=click.Path(dir_okay=False),
              help="JSON canonical tensor name -> fused tensor names (bertrt surgery run --name-map).")
@click.option("--keep-unmapped", is_flag=True, help=_KEEP_UNMAPPED_HELP)
@out_option("TensorRT calibration cache to write.")
def cache_cmd(ranges, trt_version, algorithm, name_map, keep_unmapped, out):
    """Write RANGES (a ranges JSON, bertrt calibrate ranges) as a TensorRT calibration cache (scale = amax / 127)."""
    from bertrt.calib_cache import write_cache
    from bertrt.ranges import read_ranges

    amax = read_ranges(ranges)
    names = _name_map(name_map)
    text = write_cache(out, amax, trt_version, algorithm, names,
                       drop_unmapped=names is not None and not keep_unmapped)
    _log(f"{text.splitlines()[0]}: {len(text.splitlines()) - 1} tensors -> {out}")


@calibrate.command("qdq")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--ranges", "ranges_path", type=click.Path(dir_okay=False), required=True,
              help="Ranges JSON {tensor: amax} keyed by MODEL's tensor names (bertrt calibrate ranges).")
@click.option("--skip", multiple=True, help="GEMM node to leave in float (repeatable).")
@click.option("--float-gemms", "float_groups", default=None, help=_FLOAT_GEMMS_HELP)
@click.option("--allow-missing", is_flag=True, help="Leave GEMMs whose input has no range in float.")
@out_option("Q/DQ ONNX model to write.")
def qdq_cmd(model, ranges_path, skip, float_groups, allow_missing, out):
    """Explicit INT8 for TensorRT 11: Q/DQ on the inputs of MODEL's weight GEMMs.

    A fused QAT model (`surgery run --target trt11 --precision int8`) has its weights on their own int8 grid
    already: they are kept as they are, its activations get Q/DQ from the ranges (`calibrate qat`), and its
    GEMMs with a float weight (the QA head) stay in float, as in the model.
    """
    from bertrt.calibrate.qdq import MissingRanges, insert_qdq
    from bertrt.onnx_io import load_model, save_model
    from bertrt.plugins.specs import graph_typing_problems
    from bertrt.ranges import read_ranges

    amax = read_ranges(ranges_path)
    proto = load_model(model)
    typing = graph_typing_problems(proto)  # a Q/DQ graph is for TensorRT 11, whose networks are strongly typed
    if typing:
        more = f" (and {len(typing) - 1} more)" if len(typing) > 1 else ""
        raise BertrtError(f"its plugin nodes are typed for a weakly typed TensorRT 10 build, and TensorRT 11 (strongly "
                          f"typed) would find no implementation: {typing[0]}{more}", model,
                          hint="quantize the graph of `bertrt surgery run --target trt11` instead")
    try:
        if float_groups:
            from bertrt.calibrate.mixed import float_gemms

            skip = [*skip, *float_gemms(proto, _groups(float_groups))]
        quantized, report = insert_qdq(proto, amax, skip_nodes=skip, allow_missing=allow_missing)
    except MissingRanges as e:  # the ranges file's problem, not the model's
        raise e.at(ranges_path) from None
    except BertrtError as e:
        raise e.at(model) from None
    if not report.quantized:
        raise BertrtError("no GEMM with a constant weight to quantize", model)
    for node, why in report.skipped.items():
        _log(f"left in float: {node}: {why}")
    save_model(quantized, out)
    _log(f"{len(report.quantized)} GEMMs quantized ({len(report.activations)} activations) -> {out}")


@calibrate.command("qat")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--name-map", type=click.Path(dir_okay=False),
              help="JSON tensor name -> names in the fused graph (bertrt surgery run --name-map).")
@click.option("--fill", "fill_path", type=click.Path(dir_okay=False),
              help="Measured ranges (`calibrate ranges` with the same --name-map) to take for the outputs of the GEMMs "
                   "the model quantizes where it has no scale of its own: TensorRT 10 runs a GEMM in INT8 only if its "
                   "output has a range too, which a model quantizing only the GEMM inputs does not give.")
@out_option("Ranges JSON {tensor: amax} to write.")
def qat_cmd(model, name_map, fill_path, out):
    """Ranges of a Q/DQ (QAT) MODEL from its own scales: amax = scale x 127, no recalibration.

    \b
    bertrt surgery run model.onnx -o fused.onnx --precision int8 --name-map map.json   [--target trt11]
    bertrt calibrate qat model.onnx --name-map map.json -o ranges.json
    TensorRT 10: bertrt build fused.onnx --ranges ranges.json ...; TensorRT 11:
    bertrt calibrate qdq fused.onnx --ranges ranges.json -o fused.qdq.onnx (keeps the QAT weights' own scales)
    """
    from bertrt.calibrate.qat import fill_ranges, qat_ranges
    from bertrt.onnx_io import load_model
    from bertrt.name_map import apply_name_map
    from bertrt.ranges import read_ranges, write_ranges

    proto = load_model(model)
    result = qat_ranges(proto, model)
    for note in result.notes:
        _log(f"note: {note}")
    names = _name_map(name_map)
    # With a map, only the tensors the fused graph has: a cache must name nothing else.
    own = apply_name_map(result.amax, names, drop_unmapped=names is not None)
    fill = fill_ranges(proto, own, read_ranges(fill_path), names) if fill_path else {}
    write_ranges(out, {**fill, **own})
    filled = f", {len(fill)} measured ones on the outputs of its quantized GEMMs" if fill_path else ""
    _log(f"{len(own)} activation ranges from the model's scales{filled} -> {out}")


@calibrate.command("evaluate")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@squad_json_option("Questions with answers to evaluate on (dev questions the ranges were not calibrated on)")
@amax_option("Ranges keyed by CANDIDATE's tensor names: scales of its INT8 plugins, and INT8 for its weight GEMMs "
             "that have ranges on their input and output (as TensorRT 10 implicit INT8 runs them) unless "
             "--plugins-only.")
@click.option("--plugins-only", is_flag=True, help="With --amax: only INT8 plugins read it; GEMMs stay as they are.")
@click.option("--num", type=click.IntRange(min=1), default=100, show_default=True, help="Number of questions.")
@click.option("--spread", is_flag=True, help="Take the --num questions evenly spaced through the file, not the "
              "first ones: SQuAD's dev set runs article by article (its first 500 questions are one article), and "
              "a gate's sample should speak for the whole set.")
@vocab_option
@seq_option
@batch_option
@click.option("--check", is_flag=True, help="Exit 1 unless both cosines are >= --min-cos, both agreements "
              ">= --min-agree and (with --max-f1-drop) the F1 drop is within it.")
@click.option("--max-f1-drop", type=click.FloatRange(min=0), default=None,
              help="With --check: the largest SQuAD F1 drop (FP32 F1 - CANDIDATE's F1, in points) that passes.")
@click.option("--min-cos", type=click.FloatRange(-1, 1), default=0.99, show_default=True,
              help="Cosine target for --check.")
@click.option("--min-agree", type=click.FloatRange(0, 1), default=0.90, show_default=True,
              help="Argmax agreement target for --check (a share: 0.9 = 90%).")
@out_option("Scores JSON to write (EM/F1 of both, F1 drop, cosines, agreements, counts).", required=False)
def evaluate_cmd(model, candidate, squad_json, amax_path, plugins_only, num, spread, vocab, seq, batch, check,
                 max_f1_drop, min_cos, min_agree, out):
    """Accuracy of CANDIDATE (a fused INT8 or Q/DQ graph, on the CPU reference) against the FP32 canonical
    MODEL (on ONNX Runtime) on --num questions (the first, or --spread through the file): SQuAD v1.1 exact match
    and F1 of both (every feature of each question) and the F1 drop, with its standard error over the questions
    (how far the drop on all of the file's questions may lie); as diagnostics, the cosine of the start and end
    logits over the first feature's valid tokens (mean over questions) and the share of questions whose start
    (end) argmax over the passage tokens agrees."""
    import json

    from bertrt.atomic import write_text
    from bertrt.calibrate import data_source
    from bertrt.calibrate.evaluate import eval_samples, evaluate, implicit_int8_model, table
    from bertrt.onnx_io import load_model
    from bertrt.ranges import read_ranges
    from bertrt.run.tokenization import vocab_or_default

    from bertrt.calibrate.qat import has_qdq

    graph = load_model(model, load_external_data=False)
    seq = data_source.model_seq(graph, model, seq)
    reference = "QAT, Q/DQ on ONNX Runtime" if has_qdq(graph) else "FP32"  # a QAT model is its own reference
    samples = eval_samples(squad_json, vocab_or_default(vocab), seq, num, answers=True, spread=spread)
    which = ("all" if len(samples) == samples.in_file else "spread through the file" if spread else "the first")
    which += f" of {samples.in_file}"
    _log(f"calibrate evaluate: {candidate} against {model} on {len(samples)} questions ({which})")
    amax = read_ranges(amax_path) if amax_path else None
    kind = ["as given"]

    def make_candidate():  # after the FP32 pass, so the two models are never in memory together
        cand = load_model(candidate)
        if amax is None or plugins_only:
            return cand
        cand, report = implicit_int8_model(cand, amax)
        kind[0] = f"{len(report.quantized)} GEMMs INT8"
        for node, why in report.skipped.items():
            _log(f"GEMM left in float: {node}: {why}")
        return cand

    try:
        result = evaluate(model, make_candidate, samples, amax=amax, batch=batch, progress=reporter())
    except BertrtError as e:
        raise e.at(candidate) from None
    targets = (min_cos, min_agree, max_f1_drop) if check else ()  # the table's 'meets' is the check's verdict
    click.echo(table([(Path(candidate).name, kind[0], result)], *targets))
    if out:
        write_text(out, json.dumps(result.summary(), indent=1, sort_keys=True) + "\n")
    if check and not result.meets(min_cos, min_agree, max_f1_drop):
        bound = f" and an F1 drop <= {max_f1_drop}" if max_f1_drop is not None else ""
        _log(f"below the targets: cosine >= {min_cos} and agreement >= {min_agree:.0%} (start and end){bound}; "
             f"F1 {result.fp32_f1:.2f} ({reference}) -> {result.f1:.2f}, drop {_drop(result)}")
        raise SystemExit(1)
    if max_f1_drop is not None:
        _log(f"F1 {result.fp32_f1:.2f} ({reference}) -> {result.f1:.2f} on {result.questions} questions: drop "
             f"{_drop(result)} <= {max_f1_drop}")


def _drop(result) -> str:
    return f"{result.f1_drop:.2f} (standard error {result.f1_drop_se:.2f} over the questions)"
