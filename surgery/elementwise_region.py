"""Find the small elementwise region that computes y = f(x), for passes that recognise decomposed ops.

Exporters write LayerNorm and GELU in many orders (``x*0.5*(1+erf(x/√2))`` or ``0.5*x*(...)``; the tf
``batch_normalization`` form or PyTorch's ``(x-mean)/sqrt(var+eps)``). Rather than one pattern per
order, a pass grows the region of allowed ops fed only by x and constants, lists its candidate
outputs in order, and lets a numeric check pick the one that computes the function.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from bertrt.surgery.graph_utils import is_const


def grow(x: gs.Tensor, seeds: list[gs.Node], allowed: set[str], limit: int = 24) -> list[gs.Node]:
    """Nodes reachable from ``seeds`` whose every non-constant input is x or made in the region."""
    region = list(seeds)
    in_region = {id(n) for n in region}
    made = {id(t) for n in region for t in n.outputs}
    changed = True
    while changed and len(region) < limit:
        changed = False
        for out in [x] + [o for n in region for o in n.outputs]:
            for c in out.outputs:
                if id(c) in in_region or c.op not in allowed:
                    continue
                if all(is_const(t) or t is x or id(t) in made for t in c.inputs):
                    region.append(c)
                    in_region.add(id(c))
                    made.update(id(t) for t in c.outputs)
                    changed = True
    return region


def candidate_outputs(x: gs.Tensor, region: list[gs.Node], must_contain: set[str]) -> list[tuple[gs.Tensor, list[gs.Node]]]:
    """(y, nodes computing y) for each output y of the region that closes: every tensor the sub-region
    makes, but y, is used only inside it. In topological order, smallest first."""
    ids = {id(n) for n in region}
    out = []
    for n in _topo(region):
        y = n.outputs[0]
        sub = _ancestors_within(y, ids)
        if not must_contain.issubset({m.op for m in sub}):
            continue
        sub_ids = {id(m) for m in sub}
        closed = all(all(id(c) in sub_ids for c in t.outputs) for m in sub for t in m.outputs if t is not y)
        if closed:
            out.append((y, sub))
    return out


def _ancestors_within(y: gs.Tensor, ids: set[int]) -> list[gs.Node]:
    found, stack = {}, [y]
    while stack:
        t = stack.pop()
        for p in t.inputs:
            if id(p) in ids and id(p) not in found:
                found[id(p)] = p
                stack.extend(p.inputs)
    return list(found.values())


def _topo(nodes: list[gs.Node]) -> list[gs.Node]:
    ids = {id(n) for n in nodes}
    done, order = set(), []

    def visit(n):
        if id(n) in done:
            return
        done.add(id(n))
        for t in n.inputs:
            for p in t.inputs:
                if id(p) in ids:
                    visit(p)
        order.append(n)

    for n in nodes:
        visit(n)
    return order
