"""``bertrt build``: a fused graph → a TensorRT engine (needs TensorRT; without it, exit 3 and what would run)."""

from __future__ import annotations

import click

from bertrt import config
from bertrt.run.engine_build import PRECISIONS


def int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=what) from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"expected positive integers, got {text!r}", param_hint=what)
    return values


@click.command("build")
@click.argument("onnx_path", metavar="FUSED.onnx", type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Engine file to write.")
@click.option("--target", type=click.Choice(config.names("targets")), default="trt10", show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp16", show_default=True)
@click.option("-b", "--batch", "batch", default="1", show_default=True,
              help="Batch sizes, comma-separated: one optimization profile per batch × sequence length.")
@click.option("-s", "--seq", "seq", default=None,
              help="Sequence lengths, comma-separated [default: the graph's if fixed, else 384].")
@click.option("--ranges", type=click.Path(dir_okay=False), default=None,
              help="INT8 (trt10 targets): JSON {tensor: amax} applied as dynamic ranges.")
@click.option("--calib-cache", type=click.Path(dir_okay=False), default=None,
              help="INT8 (trt10 targets): a TensorRT calibration cache (bertrt calibrate cache).")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="Tactic timing cache: read if present, updated after the build.")
@click.option("--workspace", "workspace_mb", type=click.IntRange(min=1), default=None,
              help="Workspace limit in MiB [default: 2500; var-seqlen graphs: unlimited].")
@click.option("--dry-run", is_flag=True, help="Print the build plan and stop (no TensorRT needed).")
def build(onnx_path, out, target, precision, batch, seq, ranges, calib_cache, timing_cache, workspace_mb, dry_run):
    """Build a TensorRT engine from a fused graph (bertrt surgery) for a target and precision.

    \b
    trt10-legacy, trt10: FP16/INT8 by builder flags; INT8 scales from --ranges or --calib-cache.
    trt11: strongly typed; FP16 and INT8 (Q/DQ) are in the graph.
    """
    from bertrt.onnx_io import load_model
    from bertrt.run.engine_build import build_engine, check_profiles, make_plan, model_facts

    facts = model_facts(load_model(onnx_path, load_external_data=False))
    batches = int_list(batch, "--batch")
    if seq is not None:
        seqs = int_list(seq, "--seq")
    else:
        ids = facts["dims"].get("input_ids", ())
        seqs = (ids[1],) if not facts["varseqlen"] and len(ids) == 2 and ids[1] else (384,)
    plan = make_plan(onnx_path, out, target=target, precision=precision, batches=batches, seqs=seqs,
                     varseqlen=facts["varseqlen"], has_qdq=facts["has_qdq"], ranges=ranges, calib_cache=calib_cache,
                     timing_cache=timing_cache, workspace_mb=workspace_mb)
    check_profiles(plan, facts["dims"], onnx_path)
    click.echo(plan.describe(), err=True)
    if dry_run:
        click.echo(plan.command())
        return
    click.echo("building the engine (TensorRT times tactics per profile: minutes for BERT-Large)", err=True)
    build_engine(plan, log=lambda msg: click.echo(msg, err=True))
    click.echo(f"wrote {out}")
