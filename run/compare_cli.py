"""``bertrt compare A.onnx B.onnx``: per-output errors and PASS/FAIL (exit 0 / 1)."""

from __future__ import annotations

import click

from bertrt.errors import BertrtError
from bertrt.options import amax_option, batch_option, precision_option, seed_option, seq_option
from bertrt.run.cli_options import backend_options
from bertrt.run.compare import ERROR_STATS, TOLERANCES, tolerance_text


@click.command("compare", epilog="Exit status: 0 PASS, 1 FAIL (or a bad input), 2 a usage error.")
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
@precision_option(tolerances=True, help="Precision whose default tolerances apply (" + "; ".join(
    f"{p}: {tolerance_text(*t)}" for p, t in TOLERANCES.items())
    + ") [default: int8 with --amax or for a graph with Q/DQ nodes, else the lowest the plugin nodes run in, so a "
      "fused FP16 graph gets FP16's]. INT8 is checked on the mean error: one value rounding to the neighbouring "
      "INT8 step moves every logit after it (README, QAT).")
@click.option("--atol", type=float, default=None, help="Absolute tolerance (overrides the precision's).")
@click.option("--rtol", type=float, default=None, help="Relative tolerance (overrides the precision's).")
@click.option("--check-error-stat", type=click.Choice(ERROR_STATS), default=None,
              help="What atol/rtol bound, as in Polygraphy: every element (elemwise), or the max, mean or median "
                   "error (overrides the precision's).")
@batch_option(default=1, help="Random sequences per input (a packed B takes them packed together); 1 by "
                              "default: a quick check, raise it (or --iterations) for a wider one.")
@seq_option
@seed_option()
@click.option("--iterations", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many random inputs to compare on.")
@click.option("--load-inputs", type=click.Path(dir_okay=False), default=None,
              help="Inputs from a Polygraphy JSON (polygraphy run --save-inputs) instead of random ones.")
@amax_option("JSON {tensor: amax} (bertrt calibrate ranges / qat), as a TensorRT 10 calibration table gives them: a "
             "fused B runs as TensorRT 10 implicit INT8 computes it (its INT8 plugins and the GEMMs whose input and "
             "output have a range), as `bertrt squad --amax` runs it.")
@click.option("--as-exported", is_flag=True,
              help="Compare a fused B with a Q/DQ (QAT) A as exported, even where A quantizes one tensor with "
                   "several scales (PyTorch's Q, K and V inputs) that B's one QKV GEMM cannot have [default: with "
                   "A' = A with those scales unified to the largest, the model B computes; A' against A is noted].")
@click.option("--varseqlen", is_flag=True,
              help="B is packed (var-seqlen): compare it per sequence against the padded A [default: when B takes "
                   "cu_seqlens].")
@backend_options
def compare(a, b, precision, atol, rtol, check_error_stat, batch, seq, seed, iterations, load_inputs, amax_path,
            as_exported, varseqlen, backend, trt_oss):
    """Run A and B on the same inputs and compare their common outputs.

    Standard graphs run on ONNX Runtime; graphs with TensorRT plugin nodes on bertrt's CPU reference.
    A packed (var-seqlen) B runs on the same sequences packed, and each sequence's logits are compared
    at its real tokens.
    """
    from bertrt.onnx_io import load_model
    from bertrt.ranges import read_ranges
    from bertrt.run.compare import compare_models, compare_packed, is_packed

    amax = read_ranges(amax_path) if amax_path else None
    mb = load_model(b)
    if varseqlen and not is_packed(mb):
        raise BertrtError("is not a packed (var-seqlen) model: it has no cu_seqlens input", b)
    if is_packed(mb):
        if backend == "kernels":
            raise BertrtError("compare --backend kernels takes padded graphs; run a packed one with 'bertrt squad "
                              "--backend kernels' (its backend packs the batches)", b)
        result = compare_packed(a, mb, batch=batch, seq=seq, seed=seed, iterations=iterations, precision=precision,
                                atol=atol, rtol=rtol, inputs=load_inputs, amax=amax, check_error_stat=check_error_stat)
        click.echo(result.table())
        raise SystemExit(0 if result.passed else 1)
    result = compare_models(a, mb, batch=batch, seq=seq, seed=seed, iterations=iterations, precision=precision,
                            atol=atol, rtol=rtol, inputs=load_inputs, amax=amax, check_error_stat=check_error_stat,
                            as_exported=as_exported, backend=backend, trt_oss=trt_oss, b_path=b)
    for side, names in result.only_in.items():
        click.echo(f"note: only {side} has output(s) {', '.join(names)}; not compared", err=True)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(result.table())
    raise SystemExit(0 if result.passed else 1)
