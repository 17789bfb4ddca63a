"""``bertrt compare A.onnx B.onnx``: per-output errors and PASS/FAIL (exit 0 / 1)."""

from __future__ import annotations

import json

import click

from bertrt.errors import BertrtError
from bertrt.run.compare import TOLERANCES


def _read_amax(path):
    """A calibration table as JSON {tensor: amax}; the calibrate stage writes caches it can convert."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise BertrtError(f"not a JSON amax table: {e}", path)
    if not isinstance(data, dict) or not all(isinstance(v, (int, float)) for v in data.values()):
        raise BertrtError("not a JSON amax table (expected {tensor name: amax})", path)
    return {k: float(v) for k, v in data.items()}


@click.command("compare")
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
@click.option("--precision", type=click.Choice(list(TOLERANCES)), default=None,
              help="Sets the default tolerances (fp32 1e-4, fp16 2e-2, int8 0.25 absolute) "
                   "[default: the plugin nodes' precision].")
@click.option("--atol", type=float, default=None, help="Absolute tolerance (overrides the precision's).")
@click.option("--rtol", type=float, default=None, help="Relative tolerance (overrides the precision's).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--seq", type=click.IntRange(min=1), default=None,
              help="Sequence length for dynamic inputs [default: the model's, else 128].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--iterations", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--load-inputs", type=click.Path(dir_okay=False), default=None,
              help="Inputs from a Polygraphy JSON (polygraphy run --save-inputs) instead of random ones.")
@click.option("--amax", "amax_path", type=click.Path(dir_okay=False), default=None,
              help="JSON {tensor: amax} for plugins running in INT8.")
@click.option("--varseqlen", is_flag=True,
              help="B is packed (var-seqlen): compare it per sequence against the padded A [default: when B takes "
                   "cu_seqlens].")
def compare(a, b, precision, atol, rtol, batch, seq, seed, iterations, load_inputs, amax_path, varseqlen):
    """Run A and B on the same inputs and compare their common outputs.

    Standard graphs run on ONNX Runtime; graphs with TensorRT plugin nodes on bertrt's CPU reference.
    A packed (var-seqlen) B runs on the same sequences packed, and each sequence's logits are compared
    at its real tokens. Exit 0 on PASS, 1 on FAIL.
    """
    from bertrt.onnx_io import load_model
    from bertrt.run.compare import compare_models, compare_packed, is_packed

    amax = _read_amax(amax_path) if amax_path else None
    mb = load_model(b)
    if varseqlen and not is_packed(mb):
        raise BertrtError("is not a packed (var-seqlen) model: it has no cu_seqlens input", b)
    if is_packed(mb):
        result = compare_packed(a, mb, batch=batch, seq=seq, seed=seed, iterations=iterations, precision=precision,
                                atol=atol, rtol=rtol, inputs=load_inputs, amax=amax)
        click.echo(result.table())
        raise SystemExit(0 if result.passed else 1)
    result = compare_models(a, mb, batch=batch, seq=seq, seed=seed, iterations=iterations, precision=precision,
                            atol=atol, rtol=rtol, inputs=load_inputs, amax=amax)
    for side, names in result.only_in.items():
        click.echo(f"note: only {side} has output(s) {', '.join(names)}; not compared", err=True)
    click.echo(result.table())
    raise SystemExit(0 if result.passed else 1)
