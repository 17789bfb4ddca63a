"""Latency and throughput per batch size, measured as the former demo's perf.py did.

Inputs are random (ids in [0, vocab), segments in [0, 2), mask all ones, seed 12345; the demo's RandomState
drew other values of the same kind). Each batch size runs ``warmup`` untimed iterations, then at least
``iterations`` timed ones and at least ``duration`` seconds. Percentiles are ``sorted[int(n·p)]``. A TensorRT
engine is timed with CUDA events around the execution only (inputs stay on the device), replayed from a CUDA
graph by default; the other backends by wall clock around ``Backend.run``.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import asdict, dataclass

import numpy as np

from bertrt import contract
from bertrt.progress import Progress, task

SEED = 12345
WARMUP = 10  # the demo's perf.py defaults; its benchmark script used 100 and 1000
ITERATIONS = 200


@dataclass
class PerfResult:
    batch: int
    seq: int
    iterations: int
    warmup: int
    total_s: float
    avg_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    sequences_per_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def random_feeds(batch: int, seq: int, vocab: int, seed: int = SEED) -> dict[str, np.ndarray]:
    """The benchmark inputs for one batch size: every position a real token, as the demo timed them."""
    return contract.random_feeds(batch, seq, vocab, seed=seed, lengths="full")


def percentile(sorted_times: list[float], p: float) -> float:
    """sorted[int(n·p)], the demo's percentile (clamped to the last element)."""
    return sorted_times[min(int(len(sorted_times) * p), len(sorted_times) - 1)]


def summarize(times_s: list[float], batch: int, seq: int, warmup: int) -> PerfResult:
    """Statistics of per-iteration times (seconds)."""
    if not times_s:
        raise ValueError("no timed iterations")
    ordered = sorted(times_s)
    total = float(sum(times_s))
    avg = total / len(times_s)
    return PerfResult(batch=batch, seq=seq, iterations=len(times_s), warmup=warmup, total_s=total,
                      avg_ms=avg * 1e3, p50_ms=percentile(ordered, 0.50) * 1e3,
                      p95_ms=percentile(ordered, 0.95) * 1e3, p99_ms=percentile(ordered, 0.99) * 1e3,
                      sequences_per_s=batch / avg)


def time_loop(step, warmup: int, iterations: int, duration_s: float = 0.0, progress=None) -> list[float]:
    """Seconds per call of ``step()`` (which returns its own time, or None to use the wall clock)."""
    for _ in range(warmup):
        step()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < iterations or time.perf_counter() - start < duration_s:
        t0 = time.perf_counter()
        measured = step()
        times.append(time.perf_counter() - t0 if measured is None else measured)
        if progress is not None:
            progress(1)
    return times


class CudaRuntime:
    """The few CUDA runtime calls the timing needs (events, stream capture, graphs), on the libcudart
    that Polygraphy already loads, so no other CUDA binding is required."""

    CAPTURE_MODE_THREAD_LOCAL = 1

    def __init__(self):
        from polygraphy import cuda

        self.lib = cuda.wrapper().handle

    def _check(self, status, what):
        if status != 0:
            from bertrt.errors import BertrtError

            raise BertrtError(f"CUDA error {status} in {what}")

    def event(self) -> ctypes.c_void_p:
        ev = ctypes.c_void_p()
        self._check(self.lib.cudaEventCreate(ctypes.byref(ev)), "cudaEventCreate")
        return ev

    def record(self, event, stream_ptr: int):
        self._check(self.lib.cudaEventRecord(event, ctypes.c_void_p(stream_ptr)), "cudaEventRecord")

    def elapsed_s(self, start, end) -> float:
        self._check(self.lib.cudaEventSynchronize(end), "cudaEventSynchronize")
        ms = ctypes.c_float()
        self._check(self.lib.cudaEventElapsedTime(ctypes.byref(ms), start, end), "cudaEventElapsedTime")
        return ms.value / 1e3

    def capture(self, launch, stream_ptr: int) -> ctypes.c_void_p:
        """An executable CUDA graph of what ``launch()`` enqueues on the stream."""
        stream = ctypes.c_void_p(stream_ptr)
        self._check(self.lib.cudaStreamBeginCapture(stream, self.CAPTURE_MODE_THREAD_LOCAL), "cudaStreamBeginCapture")
        launch()
        graph = ctypes.c_void_p()
        self._check(self.lib.cudaStreamEndCapture(stream, ctypes.byref(graph)), "cudaStreamEndCapture")
        graph_exec = ctypes.c_void_p()
        self._check(self.lib.cudaGraphInstantiateWithFlags(ctypes.byref(graph_exec), graph, ctypes.c_ulonglong(0)),
                    "cudaGraphInstantiateWithFlags")
        self.lib.cudaGraphDestroy(graph)
        return graph_exec

    def launch_graph(self, graph_exec, stream_ptr: int):
        self._check(self.lib.cudaGraphLaunch(graph_exec, ctypes.c_void_p(stream_ptr)), "cudaGraphLaunch")


def trt_times(backend, feeds, warmup: int, iterations: int, duration_s: float = 0.0, cuda_graph: bool = True,
              progress=None) -> list[float]:
    """Seconds per execution of a TensorRT engine: CUDA events around execute_async_v3 (or the graph launch).

    Its own execution context with device buffers for every I/O tensor, so host copies stay out of the
    timing, as in the demo.
    """
    from polygraphy import cuda
    from polygraphy.datatype import DataType

    from bertrt.errors import BertrtError
    from bertrt.run.backends import pack_varseqlen, pick_profile

    import tensorrt as trt

    engine = backend.runner.engine
    if backend.input_shape.varseqlen:
        feeds = pack_varseqlen(feeds)
    key = "cu_seqlens" if backend.input_shape.varseqlen else "input_ids"
    profiles = [engine.get_tensor_profile_shape(key, i) for i in range(engine.num_optimization_profiles)]
    index = pick_profile([tuple(tuple(s) for s in p) for p in profiles], feeds[key].shape)
    if index is None:
        raise BertrtError(f"no optimization profile takes {key} of shape {feeds[key].shape}", backend.path)
    stream = cuda.Stream()
    context = engine.create_execution_context()
    context.set_optimization_profile_async(index, stream.ptr)
    buffers = []
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    for name in names:
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            context.set_input_shape(name, feeds[name].shape)
    for name in names:
        dtype = DataType.from_dtype(engine.get_tensor_dtype(name), source_module="tensorrt")
        buf = cuda.DeviceArray(shape=tuple(context.get_tensor_shape(name)), dtype=dtype)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            buf.copy_from(np.ascontiguousarray(feeds[name]), stream=stream)
        context.set_tensor_address(name, buf.ptr)
        buffers.append(buf)
    cu = CudaRuntime()
    try:
        context.execute_async_v3(stream.ptr)  # TensorRT wants one enqueue before a capture
        stream.synchronize()
        if cuda_graph:
            graph = cu.capture(lambda: context.execute_async_v3(stream.ptr), stream.ptr)
            launch = lambda: cu.launch_graph(graph, stream.ptr)  # noqa: E731
        else:
            launch = lambda: context.execute_async_v3(stream.ptr)  # noqa: E731
        start, end = cu.event(), cu.event()

        def step():
            cu.record(start, stream.ptr)
            launch()
            cu.record(end, stream.ptr)
            return cu.elapsed_s(start, end)

        return time_loop(step, warmup, iterations, duration_s, progress)
    finally:
        stream.synchronize()
        for buf in buffers:
            buf.free()
        stream.free()


def run_perf(backend, batches, seq: int, *, warmup: int = WARMUP, iterations: int = ITERATIONS,
             duration_s: float = 0.0, seed: int = SEED, cuda_graph: bool = True,
             progress: Progress | None = None) -> list[PerfResult]:
    """One PerfResult per batch size, in the order given."""
    results = []
    for batch in batches:
        feeds = random_feeds(batch, seq, backend.vocab_size, seed)
        with task(progress, f"perf batch {batch}", iterations, "iterations") as advance:
            if backend.name == "tensorrt":
                times = trt_times(backend, feeds, warmup, iterations, duration_s, cuda_graph, advance)
            else:
                def step():
                    backend.run(feeds)  # wall clock: time_loop measures the call

                times = time_loop(step, warmup, iterations, duration_s, advance)
        results.append(summarize(times, batch, seq, warmup))
    return results


def table(results: list[PerfResult]) -> str:
    head = f"{'batch':>5} {'seq':>5} {'iters':>6} {'avg ms':>10} {'p50 ms':>10} {'p95 ms':>10} {'p99 ms':>10} {'seq/s':>10}"
    rows = [head] + [f"{r.batch:>5} {r.seq:>5} {r.iterations:>6} {r.avg_ms:>10.3f} {r.p50_ms:>10.3f} "
                     f"{r.p95_ms:>10.3f} {r.p99_ms:>10.3f} {r.sequences_per_s:>10.1f}" for r in results]
    return "\n".join(rows)
