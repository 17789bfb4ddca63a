"""``bertrt perf``: average, p50, p95, p99 latency and sequences per second per batch size."""

from __future__ import annotations

import json

import click

from bertrt.run.build_cli import int_list
from bertrt.run.cli_options import model_options, open_from_options, resolve_seq
from bertrt.run.perf import ITERATIONS, SEED, WARMUP


@click.command("perf")
@model_options
@click.option("-b", "--batch", "batch", default="1", show_default=True, help="Batch sizes, comma-separated.")
@click.option("-s", "--seq", type=click.IntRange(min=1), default=None,
              help="Sequence length [default: the model's if fixed, else 384].")
@click.option("-w", "--warmup", type=click.IntRange(min=0), default=WARMUP, show_default=True,
              help="Untimed iterations per batch size.")
@click.option("-i", "--iterations", type=click.IntRange(min=1), default=ITERATIONS, show_default=True,
              help="Timed iterations per batch size (at least). The defaults are the demo's, meant for a GPU: "
                   "on a CPU backend use fewer for big models.")
@click.option("-d", "--duration", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Time each batch size for at least this many seconds.")
@click.option("-r", "--seed", type=int, default=SEED, show_default=True, help="Seed of the random inputs.")
@click.option("--cuda-graph/--no-cuda-graph", default=True, show_default=True,
              help="TensorRT: replay each execution from a CUDA graph.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the results as JSON.")
def perf(engine, onnx, amax, batch, seq, warmup, iterations, duration, seed, cuda_graph, json_out):
    """Benchmark a model on random inputs, one line per batch size.

    TensorRT engines are timed with CUDA events around the execution only; ONNX Runtime and the CPU
    reference by wall clock around each call.
    """
    from bertrt.atomic import write_text
    from bertrt.run.perf import run_perf, table

    batches = int_list(batch, "--batch")
    with open_from_options(engine, onnx, amax) as backend:
        seq = resolve_seq(backend, seq)
        click.echo(f"{backend!r}", err=True)
        results = run_perf(backend, batches, seq, warmup=warmup, iterations=iterations, duration_s=duration,
                           seed=seed, cuda_graph=cuda_graph, progress=True)
        timing = ("cuda events" + (", cuda graph" if cuda_graph else "")) if backend.name == "tensorrt" \
            else "wall clock"
        report = {"backend": backend.name, "model": backend.path, "seq": seq, "timing": timing, "seed": seed,
                  "results": [r.as_dict() for r in results]}
    click.echo(table(results))
    click.echo(f"({backend.name}; timing: {timing})")
    if json_out:
        write_text(json_out, json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {json_out}", err=True)
