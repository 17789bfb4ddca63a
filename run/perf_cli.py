"""``bertrt perf``: average, p50, p95, p99 latency and sequences per second per batch size."""

from __future__ import annotations

import json

import click

from bertrt.options import batch_option, int_list, log, report_option, reporter, seed_option, seq_option
from bertrt.run.cli_options import model_options, open_from_options, resolve_seq
from bertrt.run.perf import ITERATIONS, SEED, WARMUP


@click.command("perf")
@model_options
@batch_option(many=True, help="Batch sizes, comma-separated: one line each.")
@seq_option
@click.option("-w", "--warmup", type=click.IntRange(min=0), default=WARMUP, show_default=True,
              help="Untimed iterations per batch size.")
@click.option("-i", "--iterations", type=click.IntRange(min=1), default=ITERATIONS, show_default=True,
              help="Timed iterations per batch size (at least). The defaults are the demo's, meant for a GPU: "
                   "on a CPU backend use fewer for big models.")
@click.option("-d", "--duration", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Time each batch size for at least this many seconds.")
@seed_option(SEED)
@click.option("--cuda-graph/--no-cuda-graph", default=True, show_default=True,
              help="TensorRT: replay each execution from a CUDA graph.")
@report_option("Also write the results as JSON.")
def perf(engine, onnx, amax, runtime, batch, seq, warmup, iterations, duration, seed, cuda_graph, report_path):
    """Benchmark a model on random inputs, one line per batch size.

    TensorRT engines are timed with CUDA events around the execution only; ONNX Runtime and the CPU
    reference by wall clock around each call.
    """
    from bertrt.atomic import write_text
    from bertrt.run.perf import run_perf, table

    batches = int_list(batch, "--batch")
    with open_from_options(engine, onnx, amax, runtime) as backend:
        seq = resolve_seq(backend, seq)
        log(f"{backend!r}")
        results = run_perf(backend, batches, seq, warmup=warmup, iterations=iterations, duration_s=duration,
                           seed=seed, cuda_graph=cuda_graph, progress=reporter())
        timing = ("cuda events" + (", cuda graph" if cuda_graph else "")) if backend.name == "tensorrt" \
            else "wall clock"
        report = {"backend": backend.name, "model": backend.path, "seq": seq, "timing": timing, "seed": seed,
                  "results": [r.as_dict() for r in results]}
    click.echo(table(results))
    click.echo(f"({backend.name}; timing: {timing})")
    if report_path:
        write_text(report_path, json.dumps(report, indent=2) + "\n")
        log(f"wrote {report_path}")
