"""layernorm: decomposed LayerNorm forms -> the LayerNormalization op.

Covers tf2onnx's 12-node ``moments`` + ``batch_normalization`` form (ReduceMean or GlobalAveragePool
for the means), PyTorch's ``(x - mean) / sqrt(var + eps) * g + b`` and other orders of the same sums.
Each candidate is checked numerically before it is rewritten. Graphs that already use the op pass through.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from bertrt.plugins.reference import layer_norm
from bertrt.surgery import adapters
from bertrt.surgery.elementwise_region import candidate_outputs, grow
from bertrt.surgery.framework import FusionPass, Match, NoMatch, register
from bertrt.surgery.graph_utils import const_value, last_dim, replace_uses, unique_name
from bertrt.surgery.region import RegionError, evaluate, max_rel_err

MEAN_OPS = {"ReduceMean", "GlobalAveragePool"}
LN_OPS = MEAN_OPS | {"Sub", "Mul", "Div", "Add", "Pow", "Sqrt", "Reciprocal", "Cast"}


def _params(nodes: list[gs.Node], E: int):
    """gamma, beta, eps from the constants of a LayerNorm region."""
    gammas, betas, eps = [], [], []
    for n in nodes:
        for t in n.inputs:
            v = const_value(t)
            if v is None:
                continue
            if v.size == E:
                (gammas if n.op in ("Mul", "Div") else betas).append(v.reshape(E).astype(np.float32))
            elif v.size == 1 and n.op == "Add" and any(p.op in MEAN_OPS for i in n.inputs for p in i.inputs):
                eps.append(float(v.reshape(())))
    if len(gammas) > 1 or len(betas) > 1 or len(eps) > 1:
        return None
    return (gammas[0] if gammas else np.ones(E, np.float32), betas[0] if betas else np.zeros(E, np.float32),
            eps[0] if eps else 0.0)


def _hidden_from_constants(nodes: list[gs.Node]) -> int | None:
    """The hidden size from the region's gamma/beta vectors, when shape inference did not give it."""
    sizes = {int(v.size) for n in nodes for t in n.inputs if (v := const_value(t)) is not None and v.size > 1}
    return sizes.pop() if len(sizes) == 1 else None


@register
class LayerNormPass(FusionPass):
    name = "layernorm"
    description = "Decomposed LayerNorm (tf2onnx's 12 nodes, GlobalAveragePool means, PyTorch forms) -> LayerNormalization."
    what = "LayerNorm nodes"
    reference = "LayerNormalization"

    def candidates(self, graph, ctx, report):
        if graph.opset < 17:
            report.notes.append(f"opset {graph.opset} has no LayerNormalization (needs 17; `bertrt convert onnx` "
                                "upgrades the model); nothing done")
            return []
        self._rng = np.random.default_rng(0)
        return [(f"{n.op} {n.name}", n) for n in graph.nodes if n.op in MEAN_OPS]

    def match(self, graph, ctx, mean) -> Match:
        """The smallest output of the elementwise region around the mean that computes a LayerNorm of its
        input (the numeric check picks it among the region's outputs: exporters order the sums many ways)."""
        x = mean.inputs[0]
        r = adapters.model_rank(graph, x, ctx)
        closest = failed = None
        for y, sub in candidate_outputs(x, grow(x, [mean], LN_OPS), must_contain={mean.op}):
            E = last_dim(x) or _hidden_from_constants(sub)
            if E is None or sum(m.op in MEAN_OPS for m in sub) < 2 or (params := _params(sub, E)) is None:
                continue
            shape = (2, 3, E) if r == 3 else (3, E)
            x0 = (self._rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
            try:
                (got,) = evaluate(graph, [y], [(x, x0)])
            except RegionError as e:
                failed = e
                continue
            err = max_rel_err(got, layer_norm(x0, *params))
            if err <= self.tolerance:
                return Match([x], [y], params)
            closest = err if closest is None else min(closest, err)
        if closest is None and failed is not None:  # not a mismatch: the region could not be run at all
            raise NoMatch(f"cannot evaluate the region around it: {failed}")
        raise NoMatch("no output of the region around it computes a LayerNorm of its input over the last axis"
                      + ("" if closest is None else f" (closest differs by {closest:.2g})"))

    def rewrite(self, graph, ctx, m: Match) -> list:
        (x,), (y,), (gamma, beta, eps) = m.inputs, m.outputs, m.data
        name = f"{y.name}/LayerNormalization"
        out = gs.Variable(unique_name(graph, name, tensor=True), dtype=np.float32, shape=y.shape)
        graph.nodes.append(gs.Node(
            op="LayerNormalization", name=unique_name(graph, name), attrs={"axis": -1, "epsilon": eps},
            inputs=[x, gs.Constant(unique_name(graph, f"{y.name}/ln_gamma", tensor=True), gamma),
                    gs.Constant(unique_name(graph, f"{y.name}/ln_beta", tensor=True), beta)],
            outputs=[out]))
        replace_uses(graph, y, out)
        ctx.alias([out], [y])
        return [out]

    def finish(self, graph, ctx, report, matches) -> None:
        existing = sum(n.op == "LayerNormalization" for n in graph.nodes) - len(matches)
        if existing:
            report.notes.append(f"{existing} LayerNormalization op(s) were already there")
