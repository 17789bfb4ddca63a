"""Where a QA model runs: ONNX Runtime, bertrt's CPU reference (plugin graphs) or a TensorRT engine.

Every backend takes the canonical feeds (``input_ids``, ``segment_ids``, ``input_mask`` int32 [B, S]) and
returns the logits [B, S, 2] (start, end). Var-seqlen models (inputs ``cu_seqlens`` / ``max_seqlen``) are
packed and unpacked here, so callers never see the packed layout. Batches larger than a model or engine
takes are split; smaller ones are padded to a fixed batch.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertrt.contract import CANONICAL_INPUTS, VARSEQLEN_INPUTS, VOCAB_SIZE
from bertrt.errors import BertrtError, ToolMissing
from bertrt.run.packing import MAX_SEQLEN, NO_LOGIT, model_max_length, pack_varseqlen, unpack_varseqlen  # noqa: F401

TENSORRT_INSTALL = ("pip install tensorrt --extra-index-url https://pypi.nvidia.com "
                    "(NVIDIA's index; needs an NVIDIA GPU with a CUDA driver)")


def current_command() -> str:
    """The bertrt command line being run (rebuilt from click's parsed parameters), for messages; the process's
    own arguments when the library runs without the command line."""
    try:
        import click
    except ImportError:  # the library needs no click
        return shlex.join(sys.argv)
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return shlex.join(sys.argv)
    args = ["bertrt", *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value is False or value == () or (value == param.default and not param.required):
            continue
        if isinstance(param, click.Argument):
            args.append(str(value))
            continue
        opt = max(param.opts, key=len)
        for v in (value if param.multiple else [value]):
            args += [opt] if getattr(param, "is_flag", False) else [opt, str(v)]
    return shlex.join(args)


def require_tensorrt(action: str, command: str | None = None):
    """The ``tensorrt`` module, or ToolMissing (exit 3) saying what is missing, how to get it, what would run."""
    try:
        import tensorrt
    except ImportError as e:
        cmd = command or current_command()
        raise ToolMissing(f"TensorRT is needed to {action} but the Python module 'tensorrt' cannot be imported "
                          f"({e}); install it with: {TENSORRT_INSTALL}; the command that would have run: {cmd}"
                          ) from None
    return tensorrt


@dataclass(frozen=True)
class InputShape:
    """What inputs a backend takes: a fixed batch and sequence length, or None where any fits."""

    batch: int | None
    seq: int | None
    varseqlen: bool = False
    max_batch: int | None = None  # the largest batch it takes at once (engines: the profiles' max)
    max_seqlen: int = MAX_SEQLEN  # var-seqlen: the longest sequence the model computes
    positions: int | None = None  # a free sequence axis: the position table's rows, which no sequence may pass

    def describe(self) -> str:
        b = self.batch if self.batch is not None else (f"1..{self.max_batch}" if self.max_batch else "any")
        s = self.seq if self.seq is not None else "any"
        return f"batch {b}, seq {s}" + (" (var-seqlen, packed)" if self.varseqlen else "")


def check_feeds(feeds: dict[str, np.ndarray], path=None) -> tuple[int, int]:
    """(B, S) of canonical feeds; a BertrtError for a missing name or a shape that differs."""
    shape = None
    for name in CANONICAL_INPUTS:
        if name not in feeds:
            raise BertrtError(f"no value given for input '{name}'", path)
        arr = np.asarray(feeds[name])
        if arr.ndim != 2:
            raise BertrtError(f"input '{name}' must be [batch, seq], got shape {arr.shape}", path)
        if shape is not None and arr.shape != shape:
            raise BertrtError(f"input '{name}' has shape {arr.shape}, the others {shape}", path)
        shape = arr.shape
    return shape


class Backend:
    """One model on one runtime. Subclasses implement ``_run`` on a batch it takes as it is."""

    name = "backend"

    def __init__(self, path, input_shape: InputShape, vocab_size: int | None = None):
        self.path = None if path is None else os.fspath(path)
        self.input_shape = input_shape
        self.vocab_size = vocab_size or VOCAB_SIZE
        self.model_vocab = vocab_size  # the embedding table's rows, where the model says

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Logits float32 [B, S, 2] for canonical int32 [B, S] feeds."""
        B, S = check_feeds(feeds, self.path)
        shape = self.input_shape
        if shape.seq is not None and S != shape.seq:
            raise BertrtError(f"the model takes sequence length {shape.seq}, got {S}",
                              self.path)
        if shape.positions is not None and S > shape.positions:
            raise BertrtError(f"seq {S} is longer than the model's {shape.positions} positions", self.path)
        feeds = {n: np.ascontiguousarray(feeds[n], dtype=np.int32) for n in CANONICAL_INPUTS}
        top = int(feeds["input_ids"].max(initial=0))
        if self.model_vocab and top >= self.model_vocab:
            raise BertrtError(f"token id {top} is past the model's {self.model_vocab} embedding rows (a vocabulary "
                              "other than the model's?)", self.path)
        step = shape.batch or shape.max_batch or B
        outs = []
        for start in range(0, B, step):
            chunk = {n: a[start:start + step] for n, a in feeds.items()}
            n = chunk["input_ids"].shape[0]
            if shape.batch is not None and n < shape.batch:  # a fixed batch: pad with empty rows
                chunk = {k: np.concatenate([a, np.zeros((shape.batch - n, S), np.int32)]) for k, a in chunk.items()}
            if shape.varseqlen:
                packed = pack_varseqlen(chunk, max_len=shape.max_seqlen, path=self.path)
                logits = unpack_varseqlen(self._guarded(packed), chunk["input_mask"], fill=NO_LOGIT)
            else:
                logits = np.asarray(self._guarded(chunk), dtype=np.float32).reshape(chunk["input_ids"].shape + (2,))
            outs.append(logits[:n])
        return np.concatenate(outs).astype(np.float32, copy=False)

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def _guarded(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """_run, with the runtime's own failure on this model as one line naming it and the cause."""
        try:
            return self._run(feeds)
        except BertrtError:
            raise
        except Exception as e:  # ONNX Runtime, the reference or TensorRT failing on the model: not a bug here
            from bertrt.ort_check import ort_message

            shapes = ", ".join(f"{k} {list(np.shape(v))}" for k, v in feeds.items())
            raise BertrtError(f"{self.name} cannot run it on {shapes}: {ort_message(e)}", self.path) from None

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"{self.name} backend on {self.path} ({self.input_shape.describe()})"


def onnx_input_shape(model, path=None) -> InputShape:
    """InputShape from an ONNX model's graph inputs (canonical or var-seqlen)."""
    inits = {t.name for t in model.graph.initializer}
    inputs = {vi.name: vi for vi in model.graph.input if vi.name not in inits}
    if "cu_seqlens" in inputs:
        missing = [n for n in VARSEQLEN_INPUTS if n not in inputs]
        if missing:
            raise BertrtError(f"var-seqlen model has no input '{missing[0]}'", path)
        return InputShape(None, None, varseqlen=True, max_seqlen=model_max_length(model))
    missing = [n for n in CANONICAL_INPUTS if n not in inputs]
    if missing:
        raise BertrtError(f"model has no input '{missing[0]}' (inputs: {', '.join(inputs)}); "
                          "convert it to the canonical model with 'bertrt convert' first", path)
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in inputs["input_ids"].type.tensor_type.shape.dim]
    if len(dims) != 2:
        raise BertrtError(f"input 'input_ids' must be [batch, seq], has rank {len(dims)}", path)
    from bertrt.run.packing import position_rows

    return InputShape(dims[0], dims[1], positions=position_rows(model) if dims[1] is None else None)


def _output_name(model, path) -> str:
    names = [o.name for o in model.graph.output]
    if "logits" in names:
        return "logits"
    raise BertrtError(f"model has no output 'logits' (outputs: {', '.join(names)}); bertrt runs QA models", path)


class OrtBackend(Backend):
    """Standard ONNX graphs on ONNX Runtime's CPU provider."""

    name = "onnxruntime"

    def __init__(self, path, model=None, threads: int = 0):
        import onnxruntime as ort

        from bertrt.onnx_io import load_model
        from bertrt.run.compare import vocab_size

        model = model if model is not None else load_model(path)
        super().__init__(path, onnx_input_shape(model, path), vocab_size(model))
        self.output = _output_name(model, path)
        del model  # the session reads the file itself: a model loaded here is not kept beside it
        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # a failure's reason is in its error (one line); its log would be a second
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for unloadable graphs
            raise BertrtError(f"ONNX Runtime cannot load the model: {str(e).splitlines()[0]}", path) from None
        self._inputs = [i.name for i in self.session.get_inputs()]

    def _run(self, feeds):
        return self.session.run([self.output], {n: feeds[n] for n in self._inputs})[0]

    def close(self):
        self.session = None  # its weights and arena go now, not when the backend object does


class ReferenceBackend(Backend):
    """Graphs with TensorRT plugin nodes on bertrt's CPU reference (ONNX Runtime between the plugins)."""

    name = "reference"

    def __init__(self, path, model=None, amax: dict[str, float] | None = None, threads: int = 0):
        from bertrt.onnx_io import load_model
        from bertrt.plugins.runner import ReferenceRunner
        from bertrt.run.compare import vocab_size

        model = model if model is not None else load_model(path)
        super().__init__(path, onnx_input_shape(model, path), vocab_size(model))
        self.output = _output_name(model, path)
        self.runner = ReferenceRunner(model, amax=amax, threads=threads)
        self.runner.path = self.path
        self.int8_gemms = 0  # weight GEMMs simulated in INT8 (implicit_int8_backend)

    def _run(self, feeds):
        return self.runner.run(feeds)[self.output]

    def __repr__(self):
        int8 = f", {self.int8_gemms} GEMMs in INT8" if self.int8_gemms else ""
        return super().__repr__()[:-1] + int8 + ")"


class KernelsBackend(Backend):
    """Graphs with TensorRT plugin nodes on the GPU: NVIDIA's plugin kernels (built from a TensorRT OSS checkout)
    for the plugin nodes, PyTorch CUDA for the rest. Not a TensorRT engine: TensorRT's own layer fusions and
    GEMM tactics are not there."""

    name = "kernels"

    def __init__(self, path, model=None, amax: dict[str, float] | None = None, trt_oss=None):
        from bertrt.onnx_io import load_model
        from bertrt.plugins.kernels.lib import require_gpu
        from bertrt.plugins.kernels.tree import find_checkout
        from bertrt.run.compare import vocab_size

        find_checkout(trt_oss)  # the plain refusals first: no checkout, then no GPU
        require_gpu()
        from bertrt.plugins.kernels.runner import KernelRunner

        model = model if model is not None else load_model(path)
        super().__init__(path, onnx_input_shape(model, path), vocab_size(model))
        self.output = _output_name(model, path)
        self.runner = KernelRunner(model, amax=amax, trt_oss=trt_oss)
        self.runner.path = self.path
        self.int8_gemms = 0

    def _run(self, feeds):
        return self.runner.run(feeds)[self.output]

    def close(self):
        if getattr(self, "runner", None) is not None:
            self.runner.close()
            self.runner = None


BACKENDS = ("auto", "kernels")  # --backend: auto = ONNX Runtime / CPU reference / TensorRT as the model asks


def engine_profiles(engine, input_name: str) -> list[tuple[tuple, tuple, tuple]]:
    """(min, opt, max) shapes of one input in each of an engine's optimization profiles."""
    return [tuple(tuple(s) for s in engine.get_tensor_profile_shape(input_name, i))
            for i in range(engine.num_optimization_profiles)]


def profile_max_seqlen(profiles) -> int:
    """The longest sequence a var-seqlen engine was built for: the least of its profiles' largest max_seqlen
    (``bertrt build`` caps that at the model's position table; packing past it would read past the table)."""
    return min(hi[0] for _lo, _opt, hi in profiles)


def engine_input_shape(profiles_of, varseqlen: bool) -> InputShape:
    """What an engine takes, from its optimization profiles (``profiles_of(input name)`` -> (min, opt, max) per
    profile). A var-seqlen engine packs no sequence past its max_seqlen profile, not the plugins' 384."""
    if varseqlen:
        cu = profiles_of("cu_seqlens")
        return InputShape(None, None, varseqlen=True, max_batch=max(hi[0] for _, _, hi in cu) - 1,
                          max_seqlen=profile_max_seqlen(profiles_of("max_seqlen")))
    profiles = profiles_of("input_ids")
    seqs = {s for lo, _, hi in profiles for s in (lo[1], hi[1])}
    return InputShape(None, seqs.pop() if len(seqs) == 1 else None, max_batch=max(hi[0] for _, _, hi in profiles))


def pick_profile(profiles, shape: tuple[int, ...]) -> int | None:
    """The first profile whose min ≤ shape ≤ max in every dimension (the former demo's rule), else None."""
    for index, (lo, _opt, hi) in enumerate(profiles):
        if len(lo) == len(shape) and all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return index
    return None


class TrtBackend(Backend):
    """A serialized TensorRT engine through Polygraphy's TrtRunner (needs TensorRT, CUDA and a GPU)."""

    name = "tensorrt"

    def __init__(self, path):
        path = Path(path)
        if not path.is_file():
            raise BertrtError("no such engine file", path)
        trt = require_tensorrt("run a TensorRT engine")
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        self.runner = TrtRunner(EngineFromBytes(BytesFromPath(os.fspath(path))))
        self.runner.activate()
        engine = self.runner.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        varseqlen = "cu_seqlens" in inputs
        self.profiles = engine_profiles(engine, "input_ids")
        super().__init__(path, engine_input_shape(lambda name: engine_profiles(engine, name), varseqlen))
        self.output = "logits" if "logits" in names else next(n for n in names if n not in inputs)
        self._profile = 0

    def _run(self, feeds):
        key = "cu_seqlens" if self.input_shape.varseqlen else "input_ids"
        profiles = self.profiles if key == "input_ids" else engine_profiles(self.runner.engine, key)
        index = pick_profile(profiles, feeds[key].shape)
        if index is None:
            raise BertrtError(f"no optimization profile of the engine takes {key} of shape {feeds[key].shape} "
                              f"(profiles: {profiles})", self.path)
        if index != self._profile:
            self.runner.set_profile(index)
            self._profile = index
        return self.runner.infer(feeds)[self.output]

    def close(self):
        if getattr(self, "runner", None) is not None and self.runner.is_active:
            self.runner.deactivate()


def open_backend(engine=None, onnx=None, *, amax: dict[str, float] | None = None, threads: int = 0,
                 backend: str = "auto", trt_oss=None) -> Backend:
    """The backend for a TensorRT engine, or for an ONNX model (reference if it has plugin nodes; with
    ``backend="kernels"`` a fused graph runs on NVIDIA's plugin kernels on the GPU instead).

    With ``amax`` (a TensorRT 10 calibration table) an ONNX model runs as TensorRT 10 implicit INT8 runs it:
    see ``implicit_int8_backend``.
    """
    if (engine is None) == (onnx is None):
        raise BertrtError("give exactly one of an engine or an ONNX model")
    if backend == "kernels" and engine is not None:
        raise BertrtError("--backend kernels runs fused ONNX graphs (--onnx), not TensorRT engines", engine)
    if engine is not None:
        return TrtBackend(engine)
    from bertrt.onnx_io import load_model
    from bertrt.plugins.runner import has_plugin_nodes

    if backend not in BACKENDS:
        raise BertrtError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
    model = load_model(onnx)
    if backend == "kernels":
        if not has_plugin_nodes(model):
            raise BertrtError("--backend kernels runs fused graphs (ONNX models with TensorRT plugin nodes)", onnx)
        if amax is not None:
            from bertrt.calibrate.evaluate import implicit_int8_model

            model, _ = implicit_int8_model(model, amax)
        return KernelsBackend(onnx, model, amax=amax, trt_oss=trt_oss)
    if amax is not None:
        return implicit_int8_backend(onnx, model, amax)
    if has_plugin_nodes(model):
        return ReferenceBackend(onnx, model)
    return OrtBackend(onnx, model, threads=threads)


def implicit_int8_backend(path, model, amax: dict[str, float], threads: int = 0) -> ReferenceBackend:
    """``model`` as a TensorRT 10 engine built with the calibration table ``amax`` computes it, on the CPU
    reference: INT8 plugins read their scales from it, and every weight GEMM whose input and output have a
    range runs in INT8. The one simulation `bertrt squad --amax` and `bertrt calibrate evaluate` both run."""
    from bertrt.calibrate.evaluate import implicit_int8_model  # INT8 knowledge lives in calibrate

    simulated, report = implicit_int8_model(model, amax)
    backend = ReferenceBackend(path, simulated, amax=amax, threads=threads)
    backend.int8_gemms = len(report.quantized)
    return backend
