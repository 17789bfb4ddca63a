"""What infer, squad and perf share: which model (``--engine`` or ``--onnx``), its INT8 scales, its tokenizer."""

from __future__ import annotations

import functools

import click

from bertrt.contract import resolve_seq as _resolve_seq
from bertrt.options import amax_option, seq_option, vocab_option


def backend_options(func):
    """Adds --backend and --trt-oss; the command receives ``backend`` and ``trt_oss``."""
    func = click.option("--trt-oss", "trt_oss", type=click.Path(file_okay=False), default=None, envvar="BERTRT_TRT_OSS",
                        help="A TensorRT OSS checkout (github.com/NVIDIA/TensorRT) that --backend kernels builds the "
                             "plugin kernels from [default: $BERTRT_TRT_OSS].")(func)
    return click.option("--backend", type=click.Choice(["auto", "kernels"]), default="auto", show_default=True,
                        help="auto: ONNX Runtime for canonical models, bertrt's CPU reference for fused graphs, "
                             "TensorRT for engines; kernels: a fused graph's plugin nodes on NVIDIA's plugin kernels "
                             "and the rest on PyTorch CUDA (needs a GPU, nvcc and --trt-oss).")(func)


def model_options(func):
    """Adds --engine / --onnx (exactly one), --amax, --backend and --trt-oss; the command receives ``engine``,
    ``onnx``, ``amax`` and ``runtime`` (open_backend's backend and trt_oss)."""

    @click.option("--engine", type=click.Path(dir_okay=False), default=None,
                  help="A TensorRT engine (bertrt build); needs TensorRT and a GPU (exit status 3 without them).")
    @click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), default=None,
                  help="An ONNX model: canonical (ONNX Runtime) or fused (bertrt's CPU reference).")
    @amax_option("JSON {tensor: amax} (bertrt calibrate ranges, a TensorRT 10 calibration table): the CPU "
                 "reference runs the INT8 plugins and every GEMM with ranges in INT8, as TensorRT 10 would.")
    @backend_options
    @functools.wraps(func)
    def wrapper(*args, engine, onnx_path, amax_path, backend, trt_oss, **kwargs):
        if (engine is None) == (onnx_path is None):
            raise click.UsageError("give exactly one of --engine ENGINE or --onnx MODEL")
        return func(*args, engine=engine, onnx=onnx_path, amax=amax_path,
                    runtime={"backend": backend, "trt_oss": trt_oss}, **kwargs)

    return wrapper


def text_options(func):
    """Adds --vocab and --seq; the command receives ``vocab`` (None = BERT's uncased) and ``seq`` (None = auto)."""
    return vocab_option(seq_option(func))


def open_from_options(engine, onnx, amax, runtime=None):
    """The backend the options name (amax read from its ranges file)."""
    from bertrt.ranges import read_ranges
    from bertrt.run.backends import open_backend

    return open_backend(engine=engine, onnx=onnx, amax=read_ranges(amax) if amax else None, **(runtime or {}))


def tokenizer_for(vocab):
    """The WordPiece tokenizer of --vocab, or of BERT's uncased vocabulary."""
    from bertrt.run.tokenization import load_tokenizer, vocab_or_default

    return load_tokenizer(vocab_or_default(vocab))


def resolve_seq(backend, seq: int | None) -> int:
    """--seq, checked against a model with a fixed sequence length; else the model's, else 384."""
    return _resolve_seq(backend.input_shape.seq, seq, backend.path)
