"""The ``bertrt`` command. Stage groups are imported only when used, so ``--help`` stays fast.

This is the click boundary: a library error (``bertrt.errors.BertrtError``) raised anywhere below becomes one
line, ``Error: <file>: <problem>; <hint>``, and the error's exit code.
"""

from __future__ import annotations

import importlib
import os
import signal

import click

from bertrt.errors import BertrtError


class CommandError(click.ClickException):
    """A library error as click shows it: one line on stderr, the error's exit code."""

    def __init__(self, error: BertrtError):
        super().__init__(error.message)
        self.exit_code = error.exit_code


# name -> (module, attribute, one-line help). Order is the pipeline's order.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "zoo": ("bertrt.convert.zoo_cli", "zoo", "Make BERT checkpoints to work on (seeded random, or real minilm)."),
    "convert": ("bertrt.convert.cli", "convert", "TF checkpoint or any exporter's ONNX -> the canonical model."),
    "surgery": ("bertrt.surgery.cli", "surgery", "Fuse the encoder into TensorRT BERT plugin nodes, pass by pass."),
    "calibrate": ("bertrt.calibrate.cli", "calibrate", "INT8 ranges on the CPU: calibration cache or Q/DQ graph."),
    "build": ("bertrt.run.build_cli", "build", "Build a TensorRT engine from a fused graph (needs TensorRT)."),
    "infer": ("bertrt.run.infer_cli", "infer", "Answer questions about a passage."),
    "squad": ("bertrt.run.squad_cli", "squad", "Predict a SQuAD v1.1 file and score EM/F1."),
    "perf": ("bertrt.run.perf_cli", "perf", "Latency (average, p50, p95, p99) and throughput per batch size."),
    "compare": ("bertrt.run.compare_cli", "compare", "Compare two graphs' outputs (ONNX Runtime or the CPU reference)."),
}


class StageGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, help_text = COMMANDS[name]
        cmd = getattr(importlib.import_module(module), attr)
        cmd.short_help = cmd.short_help or help_text
        return cmd

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BertrtError as e:
            raise CommandError(e) from None
        except OSError as e:  # the machine's refusal (no space, no permission), never a bug to trace back
            raise CommandError(BertrtError(e.strerror or str(e), e.filename)) from None

    def format_commands(self, ctx, formatter):
        with formatter.section("Stages"):  # from the registry: listing them imports nothing heavy
            formatter.write_dl([(name, help_text) for name, (_m, _a, help_text) in COMMANDS.items()])


@click.group(cls=StageGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="bertrt")
def cli():
    """bertrt: put BERT question answering on TensorRT.

    \b
    checkpoint --convert--> model.onnx --surgery--> fused.onnx --build--> engine
                                           calibrate (INT8)  compare (CPU reference vs ONNX Runtime)

    Every stage reads files and writes files; run `bertrt STAGE --help` for its commands.

    \b
    Exit status: 0 done; 1 a problem with an input or a failed check (one line naming the file);
    2 a usage error; 3 a tool the command needs (TensorRT) is not installed here.
    """


def _terminated(signum, _frame):
    # As on Ctrl-C, unwind: every atomic write removes its hidden temporary file or folder on the way out.
    raise SystemExit(128 + signum)


def main():
    # TensorFlow's C++ logging is noise for a command-line user.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # numpy's BLAS threads spin between calls and starve ONNX Runtime's, which run beside them in the CPU
    # reference (30x slower attention on a busy machine); one BLAS thread leaves the cores to ONNX Runtime.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    signal.signal(signal.SIGTERM, _terminated)
    cli(prog_name="bertrt")


if __name__ == "__main__":
    main()
