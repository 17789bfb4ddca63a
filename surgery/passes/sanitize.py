"""sanitize: fold constants, infer shapes, drop Identity/Dropout, clean up."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from bertrt.sanitize import QDQ_OPS, remove_noops
from bertrt.surgery.framework import Pass, register


@register
class Sanitize(Pass):
    name = "sanitize"
    description = "Fold constants, drop Identity and Dropout, clean up (Q/DQ kept), so one pattern fits every exporter."

    def apply(self, graph: gs.Graph, ctx, report) -> None:
        before = len(graph.nodes)
        removed = remove_noops(graph)
        graph.fold_constants(should_exclude_node=lambda node: node.op in QDQ_OPS)
        graph.cleanup()
        report.rewrites = before - len(graph.nodes)
        report.notes.append(f"{before} -> {len(graph.nodes)} nodes (Identity {removed['Identity']}, "
                            f"Dropout {removed['Dropout']} removed)")
