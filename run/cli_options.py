"""What infer, squad and perf share: which model (``--engine`` or ``--onnx``), its INT8 scales, its tokenizer."""

from __future__ import annotations

import functools

import click

from bertrt.contract import resolve_seq as _resolve_seq
from bertrt.options import amax_option, seq_option, vocab_option


def model_options(func):
    """Adds --engine / --onnx (exactly one) and --amax; the command receives ``engine``, ``onnx``, ``amax``."""

    @click.option("--engine", type=click.Path(dir_okay=False), default=None,
                  help="A TensorRT engine (bertrt build); needs TensorRT and a GPU (exit status 3 without them).")
    @click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), default=None,
                  help="An ONNX model: canonical (ONNX Runtime) or fused (bertrt's CPU reference).")
    @amax_option("JSON {tensor: amax} (bertrt calibrate ranges, a TensorRT 10 calibration table): the CPU "
                 "reference runs the INT8 plugins and every GEMM with ranges in INT8, as TensorRT 10 would.")
    @functools.wraps(func)
    def wrapper(*args, engine, onnx_path, amax_path, **kwargs):
        if (engine is None) == (onnx_path is None):
            raise click.UsageError("give exactly one of --engine ENGINE or --onnx MODEL")
        return func(*args, engine=engine, onnx=onnx_path, amax=amax_path, **kwargs)

    return wrapper


def text_options(func):
    """Adds --vocab and --seq; the command receives ``vocab`` (None = BERT's uncased) and ``seq`` (None = auto)."""
    return vocab_option(seq_option(func))


def open_from_options(engine, onnx, amax):
    """The backend the options name (amax read from its ranges file)."""
    from bertrt.ranges import read_ranges
    from bertrt.run.backends import open_backend

    return open_backend(engine=engine, onnx=onnx, amax=read_ranges(amax) if amax else None)


def tokenizer_for(vocab):
    """The WordPiece tokenizer of --vocab, or of BERT's uncased vocabulary."""
    from bertrt.run.tokenization import load_tokenizer, vocab_or_default

    return load_tokenizer(vocab_or_default(vocab))


def resolve_seq(backend, seq: int | None) -> int:
    """--seq, checked against a model with a fixed sequence length; else the model's, else 384."""
    return _resolve_seq(backend.input_shape.seq, seq, backend.path)
