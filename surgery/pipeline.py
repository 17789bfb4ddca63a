"""Run a list of passes on a model: the target decides the list; reports, dumps and the full-or-nothing check."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from bertrt import config
from bertrt.contract import PRECISIONS
from bertrt.errors import BertrtError
from bertrt.graph_io import detach_weights, full_model, import_streaming, save_graph
from bertrt.onnx_io import check_written, fit_ir_version
from bertrt.plugins.nodes import EMB_LAYER_NORM, QKV_TO_CONTEXT, SKIP_LAYER_NORM, declare_plugin_domain
from bertrt.sanitize import import_with_shapes
from bertrt.surgery.framework import Context, PassReport, get_pass

DEFAULT_PASSES = ["sanitize", "dequantize", "layernorm", "attention", "embeddings", "skip_layernorm", "gelu", "layout",
                  "precision", "qat_weights"]
# Ops that must not be left in a fully fused encoder.
UNFUSED_OPS = ("Softmax", "LayerNormalization", "ReduceMean", "GlobalAveragePool", "Erf")
VARSEQLEN_PASS = "pack-varseqlen"


@dataclass
class SurgeryResult:
    graph: gs.Graph
    reports: list[PassReport]
    counts: dict
    leftover: dict
    complete: bool
    problems: list = field(default_factory=list)
    tensor_map: dict = field(default_factory=dict)  # fused tensor -> the original tensors it carries

    def name_map(self) -> dict[str, list[str]]:
        """original tensor -> the fused tensors carrying its values (how INT8 ranges move to the fused graph)."""
        inverse: dict[str, list[str]] = {}
        for fused, originals in self.tensor_map.items():
            for o in originals:
                inverse.setdefault(o, []).append(fused)
        return {k: sorted(v) for k, v in sorted(inverse.items())}

    @property
    def model(self) -> onnx.ModelProto:
        """The fused model in memory (its weights copied in)."""
        return full_model(self.graph, _finish)

    def save(self, path, source=None) -> None:
        """Write the fused graph; onnx.checker must accept it before it takes its name (``source`` names the input
        in the refusal)."""
        save_graph(self.graph, path, _finish, check=lambda staged: check_written(staged, source))

    def to_json(self) -> dict:
        return {"passes": [r.to_json() for r in self.reports], "plugins": self.counts,
                "unfused_ops": self.leftover, "complete": self.complete, "validator_problems": self.problems,
                "name_map": self.name_map()}


def run(model: onnx.ModelProto, target: str = "trt10", precision: str = "fp32", passes: list[str] | None = None,
        dump_dir: str | os.PathLike | None = None, log=lambda msg: None, consume: bool = False,
        varseqlen: bool = False) -> SurgeryResult:
    """Run the passes on an in-memory model. With ``consume`` the weights move out of ``model`` (which is
    left without them), so that a large model is held once, not twice. ``varseqlen`` appends the
    pack-varseqlen pass and runs in FP16 (the var-seqlen plugins have no FP32)."""
    _check_options(target, precision, passes)
    graph = import_with_shapes(model)
    detach_weights(graph, free_source=consume)
    return run_graph(graph, target, precision, passes, dump_dir, log, varseqlen)


def run_file(path, target: str = "trt10", precision: str = "fp32", passes: list[str] | None = None,
             dump_dir=None, log=lambda msg: None, varseqlen: bool = False) -> SurgeryResult:
    """Run the passes on the model at path, reading its weights one at a time (peak memory near one copy)."""
    _check_options(target, precision, passes)
    return run_graph(import_streaming(path), target, precision, passes, dump_dir, log, varseqlen)


def _check_options(target, precision, passes) -> None:
    if precision not in PRECISIONS:
        raise BertrtError(f"precision {precision!r} is not supported by surgery yet; choose from {', '.join(PRECISIONS)}")
    config.target(target)
    for name in passes or ():
        get_pass(name)


def run_graph(graph: gs.Graph, target: str = "trt10", precision: str = "fp32", passes: list[str] | None = None,
              dump_dir=None, log=lambda msg: None, varseqlen: bool = False) -> SurgeryResult:
    tgt = config.target(target)
    names = passes or DEFAULT_PASSES
    if varseqlen:
        names = [n for n in names if n != VARSEQLEN_PASS] + [VARSEQLEN_PASS]
        precision = "fp16"
    pass_objs = [get_pass(n) for n in names]
    originals = set(graph.tensors())
    ids = next((t for t in graph.inputs if t.name == "input_ids"), None)
    dims = list(ids.shape) if ids is not None and ids.shape is not None and len(ids.shape) == 2 else [None, None]
    batch, seq = (d if isinstance(d, int) and d > 0 else None for d in dims)
    ctx = Context(target=tgt, precision=precision, seq=seq, batch=batch)
    reports = []
    for i, p in enumerate(pass_objs, 1):
        log(f"[{i}/{len(pass_objs)}] {p.name}: {p.description}")
        reports.append(p(graph, ctx))
        if dump_dir is not None:
            save_graph(graph.cleanup().toposort(), Path(dump_dir) / f"{i:02d}-{p.name}.onnx", _finish)
    graph.cleanup().toposort()
    counts, leftover, problems = summarize(graph, strongly_typed=bool(tgt.get("strongly_typed")))
    complete = _complete(counts, leftover, ctx)
    return SurgeryResult(graph, reports, counts, leftover, complete, problems,
                         _resolve(ctx.tensor_map, graph, originals))


def _resolve(tensor_map: dict, graph: gs.Graph, originals: set[str]) -> dict[str, list[str]]:
    """For each float tensor of the final graph, the original tensors whose values it carries."""
    def follow(name, depth=0):
        if name in originals and name not in tensor_map:
            return {name}
        if depth > 64 or name not in tensor_map:
            return set()
        return set().union(*(follow(o, depth + 1) for o in tensor_map[name]))

    out = {}
    for name, t in graph.tensors().items():
        if isinstance(t, gs.Variable) and (t.dtype is None or np.dtype(t.dtype).kind == "f"):
            found = follow(name)
            if found:
                out[name] = sorted(found)
    return dict(sorted(out.items()))


def _finish(model: onnx.ModelProto) -> None:
    model.producer_name = "bertrt"
    declare_plugin_domain(model)
    fit_ir_version(model)  # the gelu pass raises the opset to 20, which needs IR 9


def summarize(graph, strongly_typed: bool = False):
    """(plugin counts by name and version, unfused encoder ops left, validator problems) of a gs graph or model;
    ``strongly_typed``: validated for a strongly typed network (the trt11 target)."""
    from bertrt.plugins.nodes import read_attrs
    from bertrt.plugins.shapes import GraphInfo
    from bertrt.plugins.specs import validate

    info = GraphInfo.of(graph)
    nodes = graph.nodes if isinstance(graph, gs.Graph) else graph.graph.node
    op = (lambda n: n.op) if isinstance(graph, gs.Graph) else (lambda n: n.op_type)
    counts = Counter()
    problems = []
    for n in nodes:
        if op(n) in (EMB_LAYER_NORM, QKV_TO_CONTEXT, SKIP_LAYER_NORM):
            version = read_attrs(n).get("plugin_version")
            counts[f"{op(n)} v{version.value if version else '?'}"] += 1
            problems += [f"{n.name}: {p}" for p in validate(n, info, strongly_typed)]
    encoder = _feeding_plugins(nodes, op)
    leftover = Counter(op(n) for n in nodes if op(n) in UNFUSED_OPS and (encoder is None or id(n) in encoder))
    return dict(sorted(counts.items())), dict(sorted(leftover.items())), problems


def _feeding_plugins(nodes, op) -> set[int] | None:
    """id() of every node a plugin node reads from, directly or not: the encoder, as far as it is fused. Ops
    after the last plugin are a head (an MLM head has its own LayerNorm), not an unfused part of the encoder.
    None where there is no plugin node (then every op counts)."""
    plugins = [n for n in nodes if op(n) in (EMB_LAYER_NORM, QKV_TO_CONTEXT, SKIP_LAYER_NORM)]
    if not plugins:
        return None
    if isinstance(plugins[0], gs.Node):
        producer_of = {id(t): p for p in nodes for t in p.outputs}
        inputs_of = lambda n: [id(t) for t in n.inputs]  # noqa: E731
    else:
        producer_of = {t: p for p in nodes for t in p.output if t}
        inputs_of = lambda n: list(n.input)  # noqa: E731
    seen, work = set(), list(plugins)
    while work:
        n = work.pop()
        for t in inputs_of(n):
            p = producer_of.get(t)
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                work.append(p)
    return seen


def plugin_totals(counts: dict) -> dict:
    tot = Counter()
    for key, n in counts.items():
        tot[key.split(" v")[0]] += n
    return {"EmbLayerNorm": tot[EMB_LAYER_NORM], "QKVToContext": tot[QKV_TO_CONTEXT], "SkipLayerNorm": tot[SKIP_LAYER_NORM]}


def _complete(counts, leftover, ctx) -> bool:
    tot = plugin_totals(counts)
    layers = ctx.layers_expected
    return (not leftover and layers is not None and tot["EmbLayerNorm"] == 1 and tot["QKVToContext"] == layers
            and tot["SkipLayerNorm"] == 2 * layers)


def report_table(result: SurgeryResult) -> str:
    lines = [f"{'pass':<16} {'rewrites':>8} {'misses':>6} {'seconds':>8}  notes"]
    for r in result.reports:
        lines.append(f"{r.name:<16} {r.rewrites:>8} {len(r.misses):>6} {r.seconds:>8.2f}  {'; '.join(r.notes)}")
        for m in r.misses:
            lines.append(f"{'':<16} miss: {m.where}: {m.reason}")
    tot = plugin_totals(result.counts)
    lines.append("plugins: " + ", ".join(f"{k} x{v}" for k, v in result.counts.items()) if result.counts else "plugins: none")
    lines.append(f"fused: EmbLayerNorm {tot['EmbLayerNorm']}, QKVToContext {tot['QKVToContext']}, "
                 f"SkipLayerNorm {tot['SkipLayerNorm']}")
    if result.leftover:
        lines.append("left unfused: " + ", ".join(f"{k} x{v}" for k, v in result.leftover.items()))
    for p in result.problems:
        lines.append(f"validator: {p}")
    lines.append("complete: every encoder op fused" if result.complete else "INCOMPLETE: the encoder is only partly fused")
    return "\n".join(lines)


def write_report(result: SurgeryResult, path) -> None:
    from bertrt.atomic import write_text

    write_text(path, json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n")
