"""A fused ONNX graph → a TensorRT engine, through Polygraphy's loaders.

``make_plan`` turns the command's arguments and the target into a ``BuildPlan`` (plain data: precision
flags, optimization profiles, where INT8 ranges come from, strong typing, workspace, timing cache), with
no TensorRT involved, so each target and precision can be checked anywhere. ``make_loaders`` turns a plan
into Polygraphy's lazy loaders; only ``build_engine`` calls them, which needs TensorRT.

What follows the former demo/BERT (builder.py / builder_varseqlen.py): one profile per batch × sequence
length, min (1, S) and opt = max (B, S) on the three inputs; the packed var-seqlen profiles; workspace
2500 MiB (var-seqlen: unlimited); avg_timing_iterations 8; cuBLAS tactics on and cuDNN off; INT8 with
FP16 on, and CALIBRATE_BEFORE_FUSION when a calibration cache provides the scales.
"""

from __future__ import annotations

import functools
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from bertrt import config as bconfig
from bertrt.contract import CANONICAL_INPUTS, DEFAULT_SEQ, PRECISIONS, VARSEQLEN_INPUTS
from bertrt.errors import BertrtError
from bertrt.ranges import read_ranges

DEFAULT_WORKSPACE_MB = 2500
AVG_TIMING_ITERATIONS = 8
# Calibration-cache header algorithm -> the TensorRT calibrator class that reads it.
CALIBRATORS = {
    "EntropyCalibration2": "IInt8EntropyCalibrator2",
    "EntropyCalibration": "IInt8EntropyCalibrator",
    "MinMaxCalibration": "IInt8MinMaxCalibrator",
    "LegacyCalibration": "IInt8LegacyCalibrator",
}

Shape = tuple[int, ...]


@dataclass(frozen=True)
class BuildPlan:
    onnx: str
    engine: str
    target: str
    precision: str
    strongly_typed: bool
    fp16: bool  # TensorRT's FP16 builder flag
    int8: bool  # TensorRT's INT8 builder flag
    profiles: tuple[dict[str, tuple[Shape, Shape, Shape]], ...]  # per profile: input -> (min, opt, max)
    batches: tuple[int, ...]
    seqs: tuple[int, ...]
    varseqlen: bool = False
    ranges: str | None = None  # JSON {tensor: amax}, applied as dynamic ranges
    calib_cache: str | None = None  # TensorRT calibration cache, read by a cache-only calibrator
    timing_cache: str | None = None  # loaded if present, saved after the build
    workspace_mb: int | None = DEFAULT_WORKSPACE_MB  # None: TensorRT's default (the device's memory)
    avg_timing_iterations: int = AVG_TIMING_ITERATIONS
    tactic_sources: tuple[str, ...] = ()  # "+NAME" enables, "-NAME" disables a trt.TacticSource
    calibrate_before_fusion: bool = False
    notes: tuple[str, ...] = field(default=())

    def command(self) -> str:
        """The ``bertrt build`` command line that makes this plan."""
        args = ["bertrt", "build", self.onnx, "-o", self.engine, "--target", self.target,
                "--precision", self.precision, "--batch", ",".join(map(str, self.batches)),
                "--seq", ",".join(map(str, self.seqs))]
        if self.ranges:
            args += ["--ranges", self.ranges]
        if self.calib_cache:
            args += ["--calib-cache", self.calib_cache]
        if self.timing_cache:
            args += ["--timing-cache", self.timing_cache]
        if self.workspace_mb is not None and self.workspace_mb != DEFAULT_WORKSPACE_MB:
            args += ["--workspace", str(self.workspace_mb)]
        return shlex.join(args)

    def describe(self) -> str:
        flags = [f for f, on in (("FP16", self.fp16), ("INT8", self.int8)) if on] or ["none"]
        lines = [f"target {self.target}, precision {self.precision}, "
                 f"{'strongly typed' if self.strongly_typed else 'weakly typed'}, builder flags: {', '.join(flags)}",
                 "INT8 scales: " + (f"dynamic ranges from {self.ranges}" if self.ranges else
                                     f"calibration cache {self.calib_cache}" if self.calib_cache else
                                     "Q/DQ nodes in the graph" if self.precision == "int8" else "none"),
                 f"workspace: {f'{self.workspace_mb} MiB' if self.workspace_mb else 'unlimited'}, "
                 f"timing cache: {self.timing_cache or 'none'}"]
        for i, profile in enumerate(self.profiles):
            shapes = "; ".join(f"{n} min {lo} opt {opt} max {hi}" for n, (lo, opt, hi) in profile.items())
            lines.append(f"profile {i}: {shapes}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def fixed_profiles(batches, seqs) -> tuple[dict, ...]:
    """One profile per (B, S), S the inner loop's sorted order as the demo made them: min (1,S), opt=max (B,S)."""
    return tuple({name: ((1, S), (B, S), (B, S)) for name in CANONICAL_INPUTS}
                 for B in sorted(set(batches)) for S in sorted(set(seqs)))


def varseqlen_profiles(batches, seqs) -> tuple[dict, ...]:
    """One profile per B for packed inputs, up to B sequences of the largest S (builder_varseqlen.py)."""
    S = max(seqs)
    return tuple({"input_ids": ((1,), (S * B,), (S * B,)), "segment_ids": ((1,), (S * B,), (S * B,)),
                  "cu_seqlens": ((1,), (B + 1,), (B + 1,)), "max_seqlen": ((1,), (S,), (S,))}
                 for B in sorted(set(batches)))


def make_plan(onnx, engine, *, target: str, precision: str, batches=(1,), seqs=(DEFAULT_SEQ,), varseqlen: bool = False,
              has_qdq: bool = False, ranges=None, calib_cache=None, timing_cache=None,
              workspace_mb: int | None = None) -> BuildPlan:
    """The build configuration for a target and precision; a BertrtError for a combination that cannot work."""
    if precision not in PRECISIONS:
        raise BertrtError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    batches, seqs = tuple(sorted(set(batches))), tuple(sorted(set(seqs)))
    if not batches or not seqs or min(batches) < 1 or min(seqs) < 1:
        raise BertrtError("batch sizes and sequence lengths must be positive integers")
    spec = bconfig.target(target)
    strongly_typed = bool(spec.get("strongly_typed", False))
    if ranges and calib_cache:
        raise BertrtError("give either INT8 ranges or a calibration cache, not both")
    notes = []
    if strongly_typed:
        # Strongly typed: the graph's own types decide; FP16 is casts and fp16 weights, INT8 is Q/DQ.
        if ranges or calib_cache:
            raise BertrtError(f"target {target} is strongly typed: INT8 scales come from Q/DQ nodes in the graph "
                              "(bertrt calibrate qdq), not from ranges or a calibration cache")
        if precision == "int8" and not has_qdq:
            raise BertrtError(f"target {target} takes INT8 only as Q/DQ nodes in the graph, and the graph has none; "
                              "make one with 'bertrt calibrate qdq'", onnx)
        fp16 = int8 = False
        notes.append(f"{precision} comes from the graph's types (strongly typed network)")
    else:
        fp16 = precision in ("fp16", "int8")  # INT8 builds keep the non-quantized layers in FP16, as the demo ran
        int8 = precision == "int8"
        if not int8 and (ranges or calib_cache):
            raise BertrtError(f"ranges and calibration caches are INT8 scales; precision {precision} does not use them")
        if int8 and not (ranges or calib_cache or has_qdq):
            raise BertrtError(f"INT8 on target {target} needs scales", onnx,
                              hint="give ranges (bertrt calibrate ranges) or a calibration cache (bertrt calibrate "
                                   "cache), or a graph with Q/DQ nodes")
        if int8 and has_qdq and (ranges or calib_cache):
            notes.append("the graph has Q/DQ nodes; TensorRT uses their scales (explicit quantization)")
    if workspace_mb is None:
        workspace_mb = None if varseqlen else DEFAULT_WORKSPACE_MB
    profiles = varseqlen_profiles(batches, seqs) if varseqlen else fixed_profiles(batches, seqs)
    return BuildPlan(
        onnx=os.fspath(onnx), engine=os.fspath(engine), target=target, precision=precision,
        strongly_typed=strongly_typed, fp16=fp16, int8=int8, profiles=profiles, batches=batches, seqs=seqs,
        varseqlen=varseqlen, ranges=None if ranges is None else os.fspath(ranges),
        calib_cache=None if calib_cache is None else os.fspath(calib_cache),
        timing_cache=None if timing_cache is None else os.fspath(timing_cache), workspace_mb=workspace_mb,
        tactic_sources=() if strongly_typed else ("+CUBLAS", "-CUDNN"),
        calibrate_before_fusion=bool(calib_cache) and int8, notes=tuple(notes))


# ------------------------------------------------------------------ inputs the plan reads


def model_facts(model) -> dict:
    """What make_plan needs from the graph: var-seqlen or not, Q/DQ or not, each input's dims (None = dynamic)."""
    inits = {t.name for t in model.graph.initializer}
    dims = {}
    for vi in model.graph.input:
        if vi.name not in inits:
            dims[vi.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                                  for d in vi.type.tensor_type.shape.dim)
    has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    return {"varseqlen": "cu_seqlens" in dims, "has_qdq": has_qdq, "dims": dims}


def check_profiles(plan: BuildPlan, dims: dict[str, tuple], path=None) -> None:
    """Every profile shape must fit the graph's fixed dimensions (a seq-128 graph has no seq-384 profile)."""
    expected = VARSEQLEN_INPUTS if plan.varseqlen else CANONICAL_INPUTS
    missing = [n for n in expected if n not in dims]
    if missing:
        raise BertrtError(f"the graph has no input '{missing[0]}' (inputs: {', '.join(dims)})", path)
    for profile in plan.profiles:
        for name, shapes in profile.items():
            graph_dims = dims[name]
            for shape in shapes:
                if len(shape) != len(graph_dims):
                    raise BertrtError(f"input '{name}' has rank {len(graph_dims)}, the profile gives {shape}", path)
                for axis, (want, have) in enumerate(zip(shape, graph_dims)):
                    if have is not None and want != have:
                        what = ("sequence length" if axis == 1 else "batch size") if not plan.varseqlen \
                            else "batch size and sequence length"
                        raise BertrtError(f"input '{name}' has fixed dimension {axis} = {have}, but the profiles "
                                          f"need {want}", path,
                                          hint=f"build for {what} {have}, or from a graph with a dynamic dimension")


def read_calib_cache(path) -> tuple[str, bytes]:
    """(algorithm, bytes) of a TensorRT calibration cache: header ``TRT-<version>-<algorithm>``, then ``name: hex``."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise BertrtError("calibration cache not found", path) from None
    except OSError as e:
        raise BertrtError(f"cannot read the calibration cache: {e.strerror}", path) from None
    lines = data.decode("ascii", errors="replace").splitlines()
    header = lines[0].strip().split("-") if lines else []
    if len(header) != 3 or header[0] != "TRT" or header[2] not in CALIBRATORS:
        raise BertrtError("not a TensorRT calibration cache (first line must be TRT-<version>-<algorithm>, "
                          f"algorithm one of {', '.join(CALIBRATORS)})", path)
    for number, line in enumerate(lines[1:], start=2):
        name, sep, value = line.rpartition(":")
        try:
            int(value.strip(), 16)
        except ValueError:
            sep = ""
        if line.strip() and (not sep or not name):
            raise BertrtError(f"line {number} is not '<tensor>: <hex scale>'", path)
    return header[2], data


# ------------------------------------------------------------------ Polygraphy loaders


@dataclass
class Loaders:
    """The lazy Polygraphy loaders of a plan; calling ``save()`` parses, builds and writes the engine."""

    parse: object  # NetworkFromOnnxPath
    network: object  # parse, or PostprocessNetwork applying dynamic ranges
    create_config: object  # CreateConfig
    config: object  # PostprocessConfig over create_config
    engine: object  # EngineFromNetwork
    save: object  # SaveEngine
    profiles: list  # polygraphy Profile objects


def polygraphy_profiles(plan: BuildPlan) -> list:
    from polygraphy.backend.trt import Profile

    out = []
    for spec in plan.profiles:
        profile = Profile()
        for name, (lo, opt, hi) in spec.items():
            profile.add(name, min=lo, opt=opt, max=hi)
        out.append(profile)
    return out


def apply_ranges(network, ranges: dict[str, float]) -> tuple[int, list[str]]:
    """Set each named tensor's dynamic range to ±amax; (how many were set, names the network lacks)."""
    tensors = {}
    for i in range(network.num_inputs):
        tensors[network.get_input(i).name] = network.get_input(i)
    for layer in network:
        for j in range(layer.num_outputs):
            t = layer.get_output(j)
            tensors[t.name] = t
    applied, missing = 0, []
    for name, amax in ranges.items():
        if name in tensors:
            tensors[name].set_dynamic_range(-amax, amax)
            applied += 1
        else:
            missing.append(name)
    return applied, missing


def cache_only_calibrator(trt, algorithm: str, cache: bytes):
    """A calibrator that hands TensorRT the cache and has no data, so TensorRT only reads the scales.

    Polygraphy's Calibrator would write TensorRT's copy of the cache back over the user's file; this one
    never writes.
    """
    base = getattr(trt, CALIBRATORS[algorithm])

    class CacheOnlyCalibrator(base):
        def __init__(self):
            base.__init__(self)

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            return None  # no data: every scale must come from the cache

        def read_calibration_cache(self):
            return cache

        def write_calibration_cache(self, data):
            pass

        # IInt8LegacyCalibrator's extra methods, with the demo's values (quantile 0.9999, cutoff 1.0).
        def get_quantile(self):
            return 0.9999

        def get_regression_cutoff(self):
            return 1.0

        def read_histogram_cache(self, length):
            return None

        def write_histogram_cache(self, data, length):
            pass

    return CacheOnlyCalibrator()


def tactic_source_bits(default_bits: int, changes: tuple[str, ...], members: dict[str, int]) -> int:
    """TensorRT's tactic-source bit mask after "+NAME" / "-NAME" changes to its default (``members``: name ->
    bit index, as ``trt.TacticSource`` has them). A source this TensorRT no longer has is nothing to switch."""
    bits = default_bits
    for item in changes:
        index = members.get(item[1:])
        if index is not None:
            bits = bits | (1 << index) if item[0] == "+" else bits & ~(1 << index)
    return bits


@functools.lru_cache(maxsize=1)
def _plan_config_class():
    from polygraphy.backend.trt import CreateConfig

    class PlanConfig(CreateConfig):
        """Polygraphy's CreateConfig for a plan. The arguments that are TensorRT enums or objects (workspace
        pool, tactic sources, CALIBRATE_BEFORE_FUSION, the cache-only calibrator, whose profile CreateConfig makes
        the last one, as the demo calibrated) are given when the config is made, because they need TensorRT."""

        def __init__(self, plan: BuildPlan, profiles: list):
            super().__init__(fp16=plan.fp16, int8=plan.int8, profiles=profiles, load_timing_cache=plan.timing_cache)
            self.plan = plan

        def __call__(self, builder, network):
            from polygraphy.mod.trt_importer import lazy_import_trt

            trt, plan = lazy_import_trt(), self.plan
            if plan.workspace_mb:
                self.memory_pool_limits = {trt.MemoryPoolType.WORKSPACE: plan.workspace_mb << 20}
            if plan.tactic_sources:
                members = {name: int(v) for name, v in trt.TacticSource.__members__.items()}
                bits = tactic_source_bits(builder.create_builder_config().get_tactic_sources(), plan.tactic_sources,
                                          members)
                self.tactic_sources = [v for v in trt.TacticSource.__members__.values() if bits >> int(v) & 1]
            if plan.calib_cache:
                algorithm, cache = read_calib_cache(plan.calib_cache)
                self.calibrator = cache_only_calibrator(trt, algorithm, cache)
                if plan.calibrate_before_fusion:
                    self.quantization_flags = [trt.QuantizationFlag.CALIBRATE_BEFORE_FUSION]
            return super().__call__(builder, network)

    return PlanConfig


def _set_timing_iterations(plan: BuildPlan):
    """The one setting CreateConfig has no argument for: the demo's 8 timing iterations per tactic."""

    def configure(builder, network, config):
        config.avg_timing_iterations = plan.avg_timing_iterations

    return configure


def make_loaders(plan: BuildPlan, out_path=None, log=None) -> Loaders:
    """Polygraphy's loaders for the plan (lazy: constructing them imports no TensorRT)."""
    from polygraphy.backend.trt import (EngineFromNetwork, NetworkFromOnnxPath, PostprocessConfig,
                                        PostprocessNetwork, SaveEngine)

    log = log or (lambda _msg: None)
    # The parser registers TensorRT's plugin library (trt.init_libnvinfer_plugins) before parsing.
    parse = NetworkFromOnnxPath(plan.onnx, strongly_typed=plan.strongly_typed)
    network = parse
    if plan.ranges:
        ranges = read_ranges(plan.ranges)

        def set_ranges(network):
            applied, missing = apply_ranges(network, ranges)
            if not applied:
                raise BertrtError(f"none of the {len(ranges)} tensors in the ranges file is in the network",
                                  plan.ranges)
            log(f"dynamic ranges set on {applied} tensors" + (f"; {len(missing)} not in the network (first: "
                                                             f"{missing[0]})" if missing else ""))

        network = PostprocessNetwork(parse, set_ranges, name="set INT8 dynamic ranges")
    profiles = polygraphy_profiles(plan)
    create_config = _plan_config_class()(plan, profiles)
    config = PostprocessConfig(create_config, _set_timing_iterations(plan))
    engine = EngineFromNetwork(network, config, save_timing_cache=plan.timing_cache)
    save = SaveEngine(engine, os.fspath(out_path or plan.engine))
    return Loaders(parse, network, create_config, config, engine, save, profiles)


def build_engine(plan: BuildPlan, log=None) -> Path:
    """Build and write the engine (atomically). Needs TensorRT: without it, ToolMissing (exit 3)."""
    from bertrt.atomic import atomic_path
    from bertrt.run.backends import require_tensorrt

    # Bad inputs are reported before a missing TensorRT, so they can be fixed on any machine.
    if not Path(plan.onnx).is_file():
        raise BertrtError("ONNX model not found", plan.onnx)
    if plan.ranges:
        read_ranges(plan.ranges)
    if plan.calib_cache:
        read_calib_cache(plan.calib_cache)
    require_tensorrt("build an engine", plan.command())
    log = log or (lambda _msg: None)
    log("building the engine (TensorRT times tactics per profile: minutes for BERT-Large)")
    with atomic_path(plan.engine) as tmp:
        make_loaders(plan, tmp, log).save()
    return Path(plan.engine)
