"""``bertrt surgery``: fuse a canonical BERT into TensorRT plugin nodes, and inspect each pass."""

from __future__ import annotations

import click

from bertrt import config
from bertrt.options import log as _log
from bertrt.options import out_option, precision_option, report_option, target_option, writable, writable_folder


@click.group()
def surgery():
    """Fuse the encoder into TensorRT BERT plugin nodes; run, debug and inspect each pass.

    \b
    bertrt surgery run model.onnx -o fused.onnx --target trt10 --precision fp16
    bertrt surgery run model.onnx -o fused.onnx --dump-dir dumps --report report.json
    bertrt surgery run model.onnx -o packed.onnx --varseqlen
    bertrt surgery pass attention model.onnx -o attn.onnx
    bertrt surgery inspect fused.onnx
    """


@surgery.command("list")
def list_cmd():
    """The passes, in the order `surgery run` applies them, and what each does."""
    from bertrt.surgery.framework import all_passes
    from bertrt.surgery.pipeline import DEFAULT_PASSES, VARSEQLEN_PASS

    passes = all_passes()
    width = max(map(len, passes))
    for name in DEFAULT_PASSES:
        click.echo(f"{name:<{width}}  {passes[name].description}")
    click.echo(f"{VARSEQLEN_PASS:<{width}}  {passes[VARSEQLEN_PASS].description} Added by --varseqlen.")
    click.echo("\ntargets: " + ", ".join(config.names("targets")))


@surgery.command("run")
@click.argument("src", type=click.Path())
@out_option("Fused ONNX file to write.")
@target_option
@precision_option(help="Precision of the plugin nodes. int8: trt10 targets run QKVToContext/SkipLayerNorm in INT8 "
                       "where the plugins allow it (ranges from `bertrt calibrate`); trt11 gets the FP16 graph that "
                       "`bertrt calibrate qdq` quantizes (a QAT model's weights already on their own int8 grid).")
@click.option("--passes", default=None, help="Comma-separated pass names instead of the default list "
                                             "(`bertrt surgery list`).")
@click.option("--dump-dir", type=click.Path(), metavar="DIR", default=None, callback=writable_folder,
              help="Write the graph after each pass (01-sanitize.onnx, 02-layernorm.onnx, ...).")
@report_option("Write the report (per pass: rewrites, misses and why, notes) as JSON.")
@click.option("--allow-partial", is_flag=True, help="Write the graph even if the encoder is only partly fused.")
@click.option("--name-map", "name_map_path", type=click.Path(), metavar="FILE", default=None, callback=writable,
              help="Write original tensor -> fused tensors as JSON, to name INT8 ranges after the fused graph "
                   "(bertrt calibrate ranges/cache --name-map).")
@click.option("--varseqlen", is_flag=True,
              help="Pack: var-seqlen plugins on packed tokens (inputs [T] + cu_seqlens + max_seqlen); forces fp16.")
def run_cmd(src, out, target, precision, passes, dump_dir, report_path, allow_partial, name_map_path, varseqlen):
    """Fuse SRC (a canonical model from `bertrt convert`) into plugin nodes and write the fused graph.

    Prints a table of what each pass rewrote and, for every place that looked like its pattern but did
    not match, why. A partly fused encoder is an error unless --allow-partial.
    """
    from bertrt.ort_check import check_model_file

    # What onnx.checker refuses or ONNX Runtime cannot run is no model to fuse (duplicate names, a tensor nothing
    # makes, a wrong dtype, an op its opset lacks).
    check_model_file(src, hint="surgery takes the canonical model that `bertrt convert` writes")
    if varseqlen and precision != "fp16":
        _log(f"--varseqlen: precision fp16, not {precision} (the var-seqlen plugins have no FP32 and no INT8 here)")
    _run(src, out, target, precision, passes.split(",") if passes else None, dump_dir, report_path,
         allow_partial, varseqlen, name_map_path)


@surgery.command("pass")
@click.argument("name")
@click.argument("src", type=click.Path())
@out_option("ONNX file to write: SRC after the pass.")
@target_option
@precision_option(help="Precision the pass works for (the precision pass sets it; the others read it).")
@report_option("Write the pass's report as JSON.")
def pass_cmd(name, src, out, target, precision, report_path):
    """Run one pass NAME alone on SRC (see `bertrt surgery list`); a partial result is written as it is."""
    from bertrt.surgery.framework import get_pass

    get_pass(name)  # a clear error for an unknown name before reading the model
    _run(src, out, target, precision, [name], None, report_path, allow_partial=True)


@surgery.command("inspect")
@click.argument("src", type=click.Path())
def inspect_cmd(src):
    """What SRC holds: plugin nodes by name and version, encoder ops left unfused, and validator problems."""
    from bertrt.onnx_io import load_model
    from bertrt.surgery.inspect_model import inspect

    click.echo(inspect(load_model(src)))


def _run(src, out, target, precision, passes, dump_dir, report_path, allow_partial, varseqlen=False,
         name_map_path=None):
    from bertrt.errors import BertrtError
    from bertrt.surgery import pipeline

    try:
        result = pipeline.run_file(src, target=target, precision=precision, passes=passes, dump_dir=dump_dir,
                                   log=_log, varseqlen=varseqlen)
    except BertrtError as e:  # a pass refusing the model (a plugin limit) names the model
        raise e.at(src) from None
    click.echo(pipeline.report_table(result))
    if report_path:
        pipeline.write_report(result, report_path)
    totals = pipeline.plugin_totals(result.counts)
    if passes is None and not any(totals.values()):
        raise BertrtError("not a BERT encoder: no embedding, attention or residual LayerNorm could be fused "
                          "(see the report above)", src)
    if result.problems:
        raise BertrtError(f"{len(result.problems)} plugin node(s) fail the spec validator (see above); "
                          "nothing written", src)
    if varseqlen and not any(r.rewrites for r in result.reports if r.name == pipeline.VARSEQLEN_PASS):
        raise BertrtError("the fused graph could not be packed for var-seqlen (see the misses above); "
                          "nothing written", src)
    if passes is None and not result.complete and not allow_partial:
        raise BertrtError("the encoder is only partly fused (see the misses above); nothing written. "
                          "Use --allow-partial to write it anyway", src)
    result.save(out, source=src)
    if name_map_path:
        from bertrt.name_map import write_name_map

        write_name_map(name_map_path, result.name_map())
    click.echo(f"wrote {out}")
