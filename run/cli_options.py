"""Options infer, squad and perf share: which model (``--engine`` or ``--onnx``), vocabulary, sequence length."""

from __future__ import annotations

import functools

import click

from bertrt.errors import BertrtError

DEFAULT_SEQ = 384  # the former demo's SQuAD sequence length, for models that take any


def model_options(func):
    """Adds --engine / --onnx (exactly one) and --amax; the command receives ``engine``, ``onnx``, ``amax``."""

    @click.option("--engine", type=click.Path(dir_okay=False), default=None,
                  help="A TensorRT engine (bertrt build); needs TensorRT and a GPU.")
    @click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), default=None,
                  help="An ONNX model: canonical (ONNX Runtime) or fused (bertrt's CPU reference).")
    @click.option("--amax", "amax_path", type=click.Path(dir_okay=False), default=None,
                  help="JSON {tensor: amax} (a TensorRT 10 calibration table): the CPU reference runs the INT8 "
                       "plugins and every GEMM with ranges in INT8, as TensorRT 10 would.")
    @functools.wraps(func)
    def wrapper(*args, engine, onnx_path, amax_path, **kwargs):
        if (engine is None) == (onnx_path is None):
            raise click.UsageError("give exactly one of --engine ENGINE or --onnx MODEL")
        return func(*args, engine=engine, onnx=onnx_path, amax=amax_path, **kwargs)

    return wrapper


def text_options(func):
    """Adds --vocab and --seq; the command receives ``vocab`` (None = BERT's uncased) and ``seq`` (None = auto)."""

    func = click.option("-s", "--seq", type=click.IntRange(min=8), default=None,
                        help=f"Sequence length [default: the model's if fixed, else {DEFAULT_SEQ}].")(func)
    return click.option("--vocab", type=click.Path(dir_okay=False), default=None,
                        help="WordPiece vocab.txt [default: BERT's uncased vocabulary].")(func)


def open_from_options(engine, onnx, amax):
    """The backend the options name (amax read from its JSON)."""
    from bertrt.run.backends import open_backend

    return open_backend(engine=engine, onnx=onnx, amax=read_amax(amax) if amax else None)


def read_amax(path) -> dict[str, float]:
    import json

    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise BertrtError(f"cannot read: {e.strerror}", path) from None
    except json.JSONDecodeError as e:
        raise BertrtError(f"not JSON: {e.msg} at line {e.lineno}", path) from None
    if not isinstance(data, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                             for v in data.values()):
        raise BertrtError("not an amax table (expected JSON {tensor name: amax})", path)
    return {k: float(v) for k, v in data.items()}


def tokenizer_for(vocab):
    """The WordPiece tokenizer of --vocab, or of BERT's uncased vocabulary."""
    from bertrt.run.tokenization import load_tokenizer

    if vocab is None:
        from bertrt.convert.zoo import vocab_path

        vocab = vocab_path()
    return load_tokenizer(vocab)


def resolve_seq(backend, seq: int | None) -> int:
    """--seq, checked against a model with a fixed sequence length; else the model's, else 384."""
    fixed = backend.input_shape.seq
    if seq is None:
        return fixed or DEFAULT_SEQ
    if fixed is not None and seq != fixed:
        raise BertrtError(f"the model takes sequence length {fixed}; --seq {seq} does not fit", backend.path)
    return seq
