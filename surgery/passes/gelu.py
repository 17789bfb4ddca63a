"""gelu: decomposed GELU (erf and tanh forms) -> the Gelu op.

The Gelu op is ONNX opset 20, so the graph's opset is raised to 20 when one is written. That is safe only
when no op whose meaning changed between the graph's opset and 20 is left (ReduceMean's axes became an
input in 18, for instance); run this pass after layernorm and the fusions.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from bertrt.surgery.elementwise_region import candidate_outputs, grow
from bertrt.surgery.framework import FusionPass, Match, NoMatch, register
from bertrt.surgery.graph_utils import ancestors, is_const, producer, replace_uses, unique_name
from bertrt.surgery.region import RegionError, evaluate

GELU_OPS = {"Add", "Mul", "Div", "Sub", "Pow", "Erf", "Tanh", "Cast"}
GELU_OPSET = 20
# Ops whose meaning changed between opset 17 and 20 in a way this pass does not rewrite.
CHANGED_BY_20 = {"DFT", "GridSample"}
# Reductions whose axes moved from an attribute to an input in opset 18.
REDUCE_18 = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
             "ReduceLogSumExp", "ReduceSumSquare"}
TOLERANCE = 2e-5


def gelu_erf(x):
    x = x.astype(np.float64)
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def gelu_tanh(x):
    x = x.astype(np.float64)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _sources(u: gs.Tensor, depth: int = 6) -> list[gs.Tensor]:
    """Tensors that u is an elementwise function of alone, nearest first."""
    found, frontier = [], [u]
    for _ in range(depth):
        nxt = []
        for t in frontier:
            p = producer(t)
            if p is None or p.op not in GELU_OPS - {"Erf", "Tanh"}:
                continue
            live = [i for i in p.inputs if not is_const(i)]
            for i in live:
                if i not in found:
                    found.append(i)
                    nxt.append(i)
        frontier = nxt
    return found


@register
class GeluPass(FusionPass):
    name = "gelu"
    description = "Decomposed GELU (erf form, tanh form) -> Gelu (raises the opset to 20)."
    what = "GELU nodes"
    reference = "Gelu"

    def candidates(self, graph, ctx, report):
        anchors = [n for n in graph.nodes if n.op in ("Erf", "Tanh")]
        blockers = sorted({n.op for n in graph.nodes if n.op in CHANGED_BY_20 and (n.domain or "") in ("", "ai.onnx")})
        if anchors and graph.opset < GELU_OPSET and blockers:
            for a in anchors:
                report.miss(f"{a.op} {a.name}", f"the Gelu op needs opset {GELU_OPSET}, and the graph still has "
                                                f"{', '.join(blockers)}, whose meaning changes there; run the fusions first")
            return []
        return [(f"{a.op} {a.name}", a) for a in anchors]

    def match(self, graph, ctx, a) -> Match:
        """The smallest region output that is GELU of one tensor (erf or tanh form), found numerically."""
        xs = np.linspace(-6, 6, 97, dtype=np.float32).reshape(1, 97)
        ran, failed = False, None
        for x in _sources(a.inputs[0]):
            between = ancestors([a.inputs[0]], stop=[x])
            if any(n.op not in GELU_OPS for n in between):
                continue
            for y, sub in candidate_outputs(x, grow(x, between + [a], GELU_OPS), must_contain={a.op}):
                try:
                    (got,) = evaluate(graph, [y], [(x, xs)])
                except RegionError as e:
                    failed = e
                    continue
                ran = True
                for approx, fn in (("none", gelu_erf), ("tanh", gelu_tanh)):
                    if np.max(np.abs(got - fn(xs))) <= TOLERANCE:
                        return Match([x], [y], approx)
        if not ran and failed is not None:  # not a mismatch: the region could not be run at all
            raise NoMatch(f"cannot evaluate the region around it: {failed}")
        raise NoMatch("no region around it computes GELU (erf or tanh form) of a single input")

    def rewrite(self, graph, ctx, m: Match) -> list:
        (x,), (y,) = m.inputs, m.outputs
        out = gs.Variable(unique_name(graph, f"{y.name}/Gelu", tensor=True), dtype=y.dtype or np.float32, shape=y.shape)
        attrs = {"approximate": "tanh"} if m.data == "tanh" else {}
        graph.nodes.append(gs.Node(op="Gelu", name=unique_name(graph, f"{y.name}/Gelu"), attrs=attrs, inputs=[x],
                                   outputs=[out]))
        replace_uses(graph, y, out)
        ctx.alias([out], [y])
        return [out]

    def finish(self, graph, ctx, report, matches) -> None:
        if matches and graph.opset < GELU_OPSET:
            report.notes.append(f"opset raised from {graph.opset} to {GELU_OPSET} for Gelu")
            upgraded = upgrade_to_18(graph)
            if upgraded:
                report.notes.append(f"{upgraded} node(s) rewritten in their opset-18 form")
            set_opset(graph, GELU_OPSET)


def upgrade_to_18(graph: gs.Graph) -> int:
    """Rewrite the ops whose form changed in opset 18 (reduction axes as an input, Split's num_outputs)."""
    n = 0
    if graph.opset >= 18:
        return 0
    for node in graph.nodes:
        if (node.domain or "") not in ("", "ai.onnx"):
            continue
        if node.op in REDUCE_18 and "axes" in node.attrs:
            axes = np.asarray(node.attrs.pop("axes"), np.int64)
            node.inputs.append(gs.Constant(unique_name(graph, f"{node.name or node.op}/axes", tensor=True), axes))
            n += 1
        elif node.op == "Split" and (len(node.inputs) < 2 or not node.inputs[1].name):
            node.attrs["num_outputs"] = len(node.outputs)
            n += 1
    return n


def set_opset(graph: gs.Graph, version: int) -> None:
    """The default domain's opset, both where graphsurgeon keeps it and in the imports it exports."""
    graph.opset = version
    # New entries: graphsurgeon keeps the source model's own OperatorSetIdProtos, which must not change.
    graph.import_domains = [onnx.helper.make_opsetid(imp.domain, version if imp.domain in ("", "ai.onnx") else imp.version)
                            for imp in graph.import_domains or []] or None
