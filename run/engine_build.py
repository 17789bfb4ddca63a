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
from bertrt.calib_cache import ALGORITHMS, parse_version, read_cache, trt_version_number, version_text
from bertrt.contract import CANONICAL_INPUTS, DEFAULT_SEQ, PRECISIONS, VARSEQLEN_INPUTS
from bertrt.errors import BertrtError
from bertrt.plugins.nodes import EMB_LAYER_NORM, QKV_TO_CONTEXT, SKIP_LAYER_NORM
from bertrt.ranges import read_ranges

DEFAULT_WORKSPACE_MB = 2500
AVG_TIMING_ITERATIONS = 8
# The target files' plugin keys.
TARGET_PLUGINS = {"emb_layernorm": EMB_LAYER_NORM, "qkv_to_context": QKV_TO_CONTEXT, "skip_layernorm": SKIP_LAYER_NORM}

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
    trt_version: str | None = None  # the TensorRT the plan was checked against (installed, or --trt-version)
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
        if self.trt_version:
            args += ["--trt-version", self.trt_version]
        return shlex.join(args)

    def describe(self) -> str:
        flags = [f for f, on in (("FP16", self.fp16), ("INT8", self.int8)) if on] or ["none"]
        lines = [f"target {self.target}, precision {self.precision}, "
                 f"{'strongly typed' if self.strongly_typed else 'weakly typed'}, builder flags: {', '.join(flags)}",
                 "INT8 scales: " + (f"dynamic ranges from {self.ranges}" if self.ranges else
                                     f"calibration cache {self.calib_cache}" if self.calib_cache else
                                     "Q/DQ nodes in the graph" if self.precision == "int8" else "none"),
                 f"workspace: {f'{self.workspace_mb} MiB' if self.workspace_mb else 'unlimited'}, "
                 f"timing cache: {self.timing_cache or 'none'}",
                 f"TensorRT: {self.trt_version}" if self.trt_version else
                 "TensorRT: no version known (none installed, no --trt-version): the version checks were skipped"]
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


def tensorrt_range(target: str) -> tuple[tuple[int, int, int], tuple[int, int, int] | None]:
    """(oldest, first unsupported or None) TensorRT release of a target: its own bounds (configs/targets), and
    no older than the release that added its plugin versions (plugins/specs.py)."""
    from bertrt.plugins.specs import get_spec

    spec = bconfig.target(target)
    bounds = spec.get("tensorrt") or {}
    oldest = parse_version(bounds.get("min", "0.0"))
    for layout in spec["plugins"].values():
        for key, version in layout.items():
            oldest = max(oldest, parse_version(get_spec(TARGET_PLUGINS[key], version).since))
    below = bounds.get("below")
    return oldest, None if below is None else parse_version(below)


def _in_range(target: str, have: tuple[int, int, int]) -> bool:
    oldest, below = tensorrt_range(target)
    return have >= oldest and (below is None or have < below)


def check_trt_version(target: str, trt_version: str, path=None) -> None:
    """A BertrtError unless TensorRT ``trt_version`` is in the target's range; its hint names the targets that
    are for that TensorRT, or says that none is."""
    have = parse_version(trt_version)
    if _in_range(target, have):
        return
    oldest, below = tensorrt_range(target)
    span = f"{_text(oldest)} or newer" if below is None else f"{_text(oldest)} to {below[0] - 1}.x" \
        if below[1:] == (0, 0) else f"{_text(oldest)} up to (not including) {_text(below)}"
    fits = [name for name in bconfig.names("targets") if _in_range(name, have)]
    if fits:
        hint = (f"for TensorRT {trt_version} use --target {' or '.join(fits)} (bertrt surgery run --target, then "
                "build with the same one)")
    else:
        first = min(bconfig.names("targets"), key=lambda name: tensorrt_range(name)[0])
        hint = f"no target of bertrt is for TensorRT {trt_version} (the oldest, {first}, needs " \
               f"{_text(tensorrt_range(first)[0])})"
    raise BertrtError(f"target {target} is for TensorRT {span}, not {trt_version}", path, hint=hint)


def _text(version: tuple[int, int, int]) -> str:
    return f"{version[0]}.{version[1]}" + (f".{version[2]}" if version[2] else "")


def make_plan(onnx, engine, *, target: str, precision: str, batches=(1,), seqs=(DEFAULT_SEQ,), varseqlen: bool = False,
              has_qdq: bool = False, ranges=None, calib_cache=None, timing_cache=None,
              workspace_mb: int | None = None, trt_version: str | None = None,
              max_seq: int | None = None, positions: int | None = None) -> BuildPlan:
    """The build configuration for a target and precision; a BertrtError for a combination that cannot work.

    ``trt_version``: the TensorRT to build with (checked against the target's range, and the calibration
    cache's header against it); ``max_seq``: the longest sequence the graph computes (its position table;
    the var-seqlen plugins' limit), which no profile may pass; ``positions``: the rows of its position table.
    """
    if precision not in PRECISIONS:
        raise BertrtError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    batches, seqs = tuple(sorted(set(batches))), tuple(sorted(set(seqs)))
    if not batches or not seqs or min(batches) < 1 or min(seqs) < 1:
        raise BertrtError("batch sizes and sequence lengths must be positive integers")
    spec = bconfig.target(target)
    strongly_typed = bool(spec.get("strongly_typed", False))
    if trt_version is not None:
        check_trt_version(target, trt_version, onnx)
    if max_seq is not None and max(seqs) > max_seq:
        # TensorRT's kernels read the position table without a bound: a longer profile reads past it on the GPU.
        what = f"the model's {max_seq} positions" if positions == max_seq else \
            f"the {max_seq} tokens a var-seqlen plugin computes"
        raise BertrtError(f"seq {max(seqs)} is longer than {what}", onnx,
                          hint=f"build for sequences of {max_seq} tokens or fewer")
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
    if calib_cache and trt_version is not None and not strongly_typed and precision == "int8":
        cache = read_cache(calib_cache)
        if cache.version != trt_version_number(trt_version):
            notes.append(f"the calibration cache's header is TensorRT {version_text(cache.version)}'s; TensorRT "
                         f"{trt_version} gets it with its own header (the scales do not depend on the version)")
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
        calibrate_before_fusion=bool(calib_cache) and int8, trt_version=trt_version, notes=tuple(notes))


# ------------------------------------------------------------------ inputs the plan reads


def model_facts(model) -> dict:
    """What make_plan needs from the graph: var-seqlen or not, Q/DQ or not, each input's dims (None = dynamic)."""
    inits = {t.name for t in model.graph.initializer}
    dims = {}
    for vi in model.graph.input:
        if vi.name not in inits:
            dims[vi.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                                  for d in vi.type.tensor_type.shape.dim)
    from bertrt.run.packing import model_max_length, position_rows

    has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    varseqlen = "cu_seqlens" in dims
    tensors = set(dims) | {o for n in model.graph.node for o in n.output if o}
    # The longest sequence it computes: the position table's rows (and the var-seqlen plugins' own limit).
    max_seq = model_max_length(model) if varseqlen else position_rows(model)
    return {"varseqlen": varseqlen, "has_qdq": has_qdq, "dims": dims, "max_seq": max_seq,
            "positions": position_rows(model), "tensors": tensors}


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


def check_scales(plan: BuildPlan, tensors: set[str] | None = None) -> None:
    """Read the plan's ranges file or calibration cache (a BertrtError naming it for anything malformed); with
    the graph's ``tensors``, one that names none of them is refused too (TensorRT would get no scale)."""
    if plan.ranges:
        names, path = read_ranges(plan.ranges), plan.ranges
    elif plan.calib_cache:
        names, path = read_cache(plan.calib_cache).scales, plan.calib_cache
    else:
        return
    if tensors is not None and not set(names) & tensors:
        raise BertrtError(f"none of its {len(names)} tensors is in the graph (first: {next(iter(names))})", path,
                          hint="key them by the fused graph's names (bertrt surgery run --name-map, then "
                               "bertrt calibrate ranges --name-map)")


def installed_trt_version() -> str | None:
    """tensorrt.__version__ of the TensorRT installed here, or None."""
    try:
        import tensorrt
    except Exception:  # not installed, or installed without the libraries it loads
        return None
    return getattr(tensorrt, "__version__", None)


def same_version(given: str, installed: str) -> bool:
    """Whether ``installed`` is the ``given`` version, to the parts given ("10.16" is any 10.16.x)."""
    parts = len(given.strip().split("."))
    return parse_version(given)[:parts] == parse_version(installed)[:parts]


def graph_problems(plan: BuildPlan, model) -> list[str]:
    """What TensorRT would trip on in this graph with this plan, read from the graph without its weights
    (``graph_io.read_skeleton``): plugin versions the TensorRT has not, and, in a strongly typed network,
    plugin fields that disagree with the tensor types (``plugins.specs.typing_problems``)."""
    from bertrt.plugins.nodes import is_plugin_node
    from bertrt.plugins.specs import graph_typing_problems, spec_of

    problems = []
    for node in model.graph.node:
        spec = spec_of(node) if is_plugin_node(node) else None
        if spec is not None and plan.trt_version and parse_version(plan.trt_version) < parse_version(spec.since):
            problems.append(f"{node.name}: {spec.plugin} v{spec.version} is in TensorRT's plugin library from "
                            f"{spec.since}, not in {plan.trt_version}")
    if plan.strongly_typed:
        problems += graph_typing_problems(model)
    return problems


def check_graph(plan: BuildPlan, model, path=None) -> None:
    problems = graph_problems(plan, model)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        hint = (f"make the graph for this target: bertrt surgery run --target {plan.target}"
                + (" (then bertrt calibrate qdq for INT8)" if plan.strongly_typed else ""))
        raise BertrtError(f"TensorRT cannot build it as planned: {problems[0]}{more}", path, hint=hint)


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
    base = getattr(trt, ALGORITHMS[algorithm])

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
                cache = read_cache(plan.calib_cache)
                # TensorRT skips a cache whose header names another version; the scales are the same in any.
                text, _rewritten = cache.for_version(trt.__version__)
                self.calibrator = cache_only_calibrator(trt, cache.algorithm, text.encode("ascii"))
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
    check_scales(plan)
    trt = require_tensorrt("build an engine", plan.command())
    check_trt_version(plan.target, trt.__version__, plan.onnx)
    if plan.trt_version and not same_version(plan.trt_version, trt.__version__):
        raise BertrtError(f"the plan is for TensorRT {plan.trt_version}, but TensorRT {trt.__version__} is installed",
                          plan.onnx)
    log = log or (lambda _msg: None)
    log("building the engine (TensorRT times tactics per profile: minutes for BERT-Large)")
    with atomic_path(plan.engine) as tmp:
        make_loaders(plan, tmp, log).save()
    return Path(plan.engine)
