"""``bertrt build``: a fused graph → a TensorRT engine (needs TensorRT; without it, exit 3 and what would run)."""

from __future__ import annotations

import click

from bertrt.contract import DEFAULT_SEQ
from bertrt.options import (EXIT_TENSORRT, batch_option, int_list, log, out_option, precision_option, seq_option,
                            target_option)


@click.command("build", epilog=EXIT_TENSORRT)
@click.argument("onnx_path", metavar="FUSED.onnx", type=click.Path(dir_okay=False))
@out_option("Engine file to write.")
@target_option
@precision_option
@batch_option(many=True, help="Batch sizes, comma-separated: one optimization profile per batch × sequence "
                              "length (packed graphs: one per batch size).")
@seq_option(many=True)
@click.option("--ranges", type=click.Path(dir_okay=False), default=None,
              help="INT8 (trt10 targets): JSON {tensor: amax} applied as dynamic ranges.")
@click.option("--calib-cache", type=click.Path(dir_okay=False), default=None,
              help="INT8 (trt10 targets): a TensorRT calibration cache (bertrt calibrate cache).")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="Tactic timing cache: read if present, updated after the build.")
@click.option("--workspace", "workspace_mb", type=click.IntRange(min=1), default=None,
              help="Workspace limit in MiB [default: 2500, the former demo's; var-seqlen graphs: unlimited].")
@click.option("--dry-run", is_flag=True, help="Print the build plan and its command and stop (no TensorRT needed).")
def build(onnx_path, out, target, precision, batch, seq, ranges, calib_cache, timing_cache, workspace_mb, dry_run):
    """Build a TensorRT engine from FUSED.onnx (bertrt surgery) for a target and precision.

    \b
    trt10-legacy, trt10: FP16/INT8 by builder flags; INT8 scales from --ranges or --calib-cache.
    trt11: strongly typed; FP16 and INT8 (Q/DQ) are in the graph.

    The plan is made from the graph's inputs alone and checked with the ranges or cache before TensorRT is
    looked for, so a mistake shows on any machine; the graph itself is loaded only by TensorRT's parser.
    """
    from bertrt.graph_io import read_skeleton
    from bertrt.run.engine_build import build_engine, check_profiles, make_plan, model_facts

    facts = model_facts(read_skeleton(onnx_path))  # no weights read: the graph may be gigabytes
    batches = int_list(batch, "--batch")
    if seq is not None:
        seqs = int_list(seq, "--seq")
    else:
        ids = facts["dims"].get("input_ids", ())
        seqs = (ids[1],) if not facts["varseqlen"] and len(ids) == 2 and ids[1] else (DEFAULT_SEQ,)
    plan = make_plan(onnx_path, out, target=target, precision=precision, batches=batches, seqs=seqs,
                     varseqlen=facts["varseqlen"], has_qdq=facts["has_qdq"], ranges=ranges, calib_cache=calib_cache,
                     timing_cache=timing_cache, workspace_mb=workspace_mb)
    check_profiles(plan, facts["dims"], onnx_path)
    click.echo(plan.describe(), err=True)
    if dry_run:
        click.echo(plan.command())
        return
    build_engine(plan, log=log)
    click.echo(f"wrote {out}")
