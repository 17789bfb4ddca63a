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
@click.option("--trt-version", default=None, metavar="X.Y[.Z]",
              help="TensorRT version to plan and check for (the target's range, its plugin versions, the calibration "
                   "cache's header) [default: the installed one; with none installed the version checks are skipped]. "
                   "With TensorRT installed it must be that version.")
@click.option("--dry-run", is_flag=True, help="Check the graph, print the build plan and its command and stop (no "
                                              "TensorRT needed).")
def build(onnx_path, out, target, precision, batch, seq, ranges, calib_cache, timing_cache, workspace_mb, trt_version,
          dry_run):
    """Build a TensorRT engine from FUSED.onnx (bertrt surgery) for a target and precision.

    \b
    trt10-legacy, trt10: FP16/INT8 by builder flags; INT8 scales from --ranges or --calib-cache.
    trt11: strongly typed; FP16 and INT8 (Q/DQ) are in the graph.

    The plan is made from the graph without its weights and checked (the TensorRT version, the plugin nodes,
    the position table, the ranges or cache) before TensorRT is looked for, so a mistake shows on any machine;
    the whole graph is loaded only by TensorRT's parser.
    """
    from bertrt.graph_io import read_skeleton
    from bertrt.run.engine_build import (build_engine, check_graph, check_profiles, check_scales, installed_trt_version,
                                         make_plan, model_facts, same_version)

    model = read_skeleton(onnx_path)  # no weights read: the graph may be gigabytes
    facts = model_facts(model)
    installed = installed_trt_version()
    if trt_version and installed and not same_version(trt_version, installed):
        raise click.BadParameter(f"TensorRT {installed} is installed here, and it is what builds the engine",
                                 param_hint="--trt-version")
    batches = int_list(batch, "--batch")
    if seq is not None:
        seqs = int_list(seq, "--seq")
    else:
        ids = facts["dims"].get("input_ids", ())
        fixed = not facts["varseqlen"] and len(ids) == 2 and ids[1]
        seqs = (ids[1],) if fixed else (min(DEFAULT_SEQ, facts["max_seq"] or DEFAULT_SEQ),)
    plan = make_plan(onnx_path, out, target=target, precision=precision, batches=batches, seqs=seqs,
                     varseqlen=facts["varseqlen"], has_qdq=facts["has_qdq"], ranges=ranges, calib_cache=calib_cache,
                     timing_cache=timing_cache, workspace_mb=workspace_mb, trt_version=trt_version or installed,
                     max_seq=facts["max_seq"], positions=facts["positions"])
    check_profiles(plan, facts["dims"], onnx_path)
    check_graph(plan, model, onnx_path)
    check_scales(plan, facts["tensors"])
    click.echo(plan.describe(), err=True)
    if dry_run:
        click.echo(plan.command())
        return
    build_engine(plan, log=log)
    click.echo(f"wrote {out}")
