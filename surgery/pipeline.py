"""Run a list of passes on a model: the target decides the list; reports, dumps and the full-or-nothing check."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

from bertrt import config
from bertrt.errors import BertrtError
from bertrt.onnx_io import save_model
from bertrt.plugins.nodes import EMB_LAYER_NORM, QKV_TO_CONTEXT, SKIP_LAYER_NORM, declare_plugin_domain
from bertrt.sanitize import import_with_shapes
from bertrt.surgery.framework import Context, PassReport, get_pass

DEFAULT_PASSES = ["sanitize", "layernorm", "attention", "embeddings", "skip_layernorm", "gelu", "layout", "precision"]
# Ops that must not be left in a fully fused encoder.
UNFUSED_OPS = ("Softmax", "LayerNormalization", "ReduceMean", "GlobalAveragePool", "Erf")
PRECISIONS = ("fp32", "fp16")


@dataclass
class SurgeryResult:
    model: onnx.ModelProto
    reports: list[PassReport]
    counts: dict
    leftover: dict
    complete: bool
    problems: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {"passes": [r.to_json() for r in self.reports], "plugins": self.counts,
                "unfused_ops": self.leftover, "complete": self.complete, "validator_problems": self.problems}


def passes_for(target: dict) -> list[str]:
    return list(target.get("passes", DEFAULT_PASSES))


def run(model: onnx.ModelProto, target: str = "trt10", precision: str = "fp32", passes: list[str] | None = None,
        dump_dir: str | os.PathLike | None = None, log=lambda msg: None) -> SurgeryResult:
    if precision not in PRECISIONS:
        raise BertrtError(f"precision {precision!r} is not supported by surgery yet; choose from {', '.join(PRECISIONS)}")
    tgt = config.target(target)
    names = passes or passes_for(tgt)
    pass_objs = [get_pass(n) for n in names]
    graph = import_with_shapes(model)
    ids = next((t for t in graph.inputs if t.name == "input_ids"), None)
    seq = ids.shape[1] if ids is not None and ids.shape and isinstance(ids.shape[1], int) else None
    ctx = Context(target=tgt, precision=precision, seq=seq)
    reports = []
    for i, p in enumerate(pass_objs, 1):
        log(f"[{i}/{len(pass_objs)}] {p.name}: {p.description}")
        reports.append(p(graph, ctx))
        if dump_dir is not None:
            save_model(_export(graph), Path(dump_dir) / f"{i:02d}-{p.name}.onnx")
    out = _export(graph)
    counts, leftover, problems = summarize(out)
    complete = _complete(counts, leftover, ctx)
    return SurgeryResult(out, reports, counts, leftover, complete, problems)


def _export(graph: gs.Graph) -> onnx.ModelProto:
    model = gs.export_onnx(graph.cleanup().toposort(), do_type_check=False)
    model.producer_name = "bertrt"
    return declare_plugin_domain(model)


def summarize(model: onnx.ModelProto):
    """(plugin counts by name and version, unfused encoder ops left, validator problems)."""
    from bertrt.plugins.specs import validate
    from bertrt.plugins.shapes import GraphInfo

    info = GraphInfo.of(model)
    counts = Counter()
    problems = []
    for n in model.graph.node:
        if n.op_type in (EMB_LAYER_NORM, QKV_TO_CONTEXT, SKIP_LAYER_NORM):
            version = next((a.s.decode() for a in n.attribute if a.name == "plugin_version"), "?")
            counts[f"{n.op_type} v{version}"] += 1
            problems += [f"{n.name}: {p}" for p in validate(n, info)]
    leftover = Counter(n.op_type for n in model.graph.node if n.op_type in UNFUSED_OPS)
    return dict(sorted(counts.items())), dict(sorted(leftover.items())), problems


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
