"""sanitize: fold constants, drop Identity/Dropout, clean up; rank every tensor shape inference left without one."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from bertrt.contract import CANONICAL_INPUTS, INPUT_IDS, INPUT_MASK
from bertrt.plugins.nodes import is_plugin_node
from bertrt.sanitize import QDQ_OPS, remove_noops
from bertrt.surgery.framework import Pass, register
from bertrt.surgery.region import RegionError, evaluate

# Two small batches, (batch, seq), for the shape probe: every dim that depends on them differs between the two.
PROBES = ((2, 8), (3, 5))


@register
class Sanitize(Pass):
    name = "sanitize"
    description = ("Fold constants, drop Identity and Dropout, clean up (Q/DQ kept), so one pattern fits every "
                   "exporter; shapes inference could not give are measured on ONNX Runtime.")

    def apply(self, graph: gs.Graph, ctx, report) -> None:
        before = len(graph.nodes)
        removed = remove_noops(graph)
        graph.fold_constants(should_exclude_node=lambda node: node.op in QDQ_OPS)
        graph.cleanup()
        report.rewrites = before - len(graph.nodes)
        report.notes.append(f"{before} -> {len(graph.nodes)} nodes (Identity {removed['Identity']}, "
                            f"Dropout {removed['Dropout']} removed)")
        measured = measure_shapes(graph)
        if measured:
            report.notes.append(f"the rank of {measured} tensor(s) measured on ONNX Runtime (shape inference gave none)")


def measure_shapes(graph: gs.Graph) -> int:
    """Give each computed tensor without a shape (opset-10/11 exports leave many: Reshapes to computed shapes)
    its rank and static last dim, by running the graph on two small batches: a dim that changes between them
    depends on batch or sequence and stays unnamed. Nothing is done for graphs with plugin nodes (ONNX Runtime
    cannot run those) or that do not run. Returns how many tensors got a shape."""
    missing = [t for t in graph.tensors().values()
               if isinstance(t, gs.Variable) and t.shape is None and t.inputs and t.name]
    inputs = {t.name: t for t in graph.inputs}
    if not missing or any(is_plugin_node(n) for n in graph.nodes) or set(inputs) != set(CANONICAL_INPUTS):
        return 0
    runs = []
    for B, S in PROBES:
        fixed = list(inputs[INPUT_IDS].shape or [None, None])
        B, S = (fixed[0] if isinstance(fixed[0], int) else B), (fixed[1] if isinstance(fixed[1], int) else S)
        feeds = [(t, (np.ones if name == INPUT_MASK else np.zeros)((B, S), np.dtype(t.dtype or np.int32)))
                 for name, t in inputs.items()]
        try:
            runs.append(evaluate(graph, missing, feeds))
        except RegionError:
            return 0
    for t, a, b in zip(missing, *runs):
        if a.ndim != b.ndim:
            continue
        t.shape = [None] * (a.ndim - 1) + [int(a.shape[-1]) if a.shape[-1] == b.shape[-1] else None] if a.ndim else []
        t.dtype = t.dtype or a.dtype
    return len(missing)
