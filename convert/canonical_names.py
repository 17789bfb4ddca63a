"""Give a converted graph the same node order and names every time.

tf2onnx's output varies between runs of the same conversion: it merges duplicate constants and shape
subgraphs keeping whichever copy it met first, and numbers the names it invents from a global counter.
Here every node gets a key computed from its structure alone (op, attributes, and the keys of what feeds
it), the nodes are laid out in (depth, key) order, and internal names are renumbered in that order.
Graph inputs, outputs and the checkpoint's weight names are kept.
"""

from __future__ import annotations

import hashlib
import heapq

import onnx


def canonicalize(model: onnx.ModelProto, keep_names=lambda name: False) -> None:
    """Reorder and rename in place. ``keep_names(initializer_name)`` marks initializers whose names are
    stable (e.g. checkpoint variables); other initializers are identified by their content."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    source: dict[str, bytes] = {i.name: _h(b"input", i.name.encode()) for i in g.input}
    for name, t in inits.items():
        source[name] = _h(b"init", name.encode()) if keep_names(name) else _h(b"const", _tensor_bytes(t))

    producer, depth, key = {}, {}, {}
    for idx, node in enumerate(g.node):  # the input is topologically sorted (tf2onnx, graphsurgeon)
        ins = [source.get(n, b"") if n not in producer else key[producer[n][0]] + bytes([producer[n][1]])
               for n in node.input]
        attrs = b"".join(a.SerializeToString(deterministic=True) for a in sorted(node.attribute, key=lambda a: a.name))
        key[idx] = _h(node.op_type.encode(), node.domain.encode(), attrs, *ins)
        depth[idx] = 1 + max([depth[producer[n][0]] for n in node.input if n in producer], default=0)
        for j, out in enumerate(node.output):
            producer[out] = (idx, j)

    consumers: dict[int, list[int]] = {i: [] for i in range(len(g.node))}
    pending = {}
    for idx, node in enumerate(g.node):
        deps = {producer[n][0] for n in node.input if n in producer}
        pending[idx] = len(deps)
        for d in deps:
            consumers[d].append(idx)
    ready = [(depth[i], key[i], i) for i, n in pending.items() if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, _, i = heapq.heappop(ready)
        order.append(i)
        for c in consumers[i]:
            pending[c] -= 1
            if pending[c] == 0:
                heapq.heappush(ready, (depth[c], key[c], c))

    keep = {i.name for i in g.input} | {o.name for o in g.output} | {n for n in inits if keep_names(n)}
    rename: dict[str, str] = {}
    counts: dict[str, int] = {}
    nodes = [g.node[i] for i in order]
    for node in nodes:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
        node.name = f"{node.op_type}_{counts[node.op_type]}"
        for j, out in enumerate(node.output):
            if out and out not in keep:
                rename[out] = node.name if j == 0 else f"{node.name}:{j}"
    n_const = 0
    for node in nodes:
        for n in node.input:
            if n in inits and n not in keep and n not in rename:
                n_const += 1
                rename[n] = f"const_{n_const}"
    for node in nodes:
        for j, n in enumerate(node.input):
            node.input[j] = rename.get(n, n)
        for j, n in enumerate(node.output):
            node.output[j] = rename.get(n, n)
    for t in g.initializer:
        t.name = rename.get(t.name, t.name)
    sorted_inits = sorted(g.initializer, key=lambda t: t.name)
    new_nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in nodes]
    del g.node[:]
    g.node.extend(new_nodes)
    del g.initializer[:]
    g.initializer.extend(sorted_inits)
    infos = [vi for vi in g.value_info if vi.name in rename or vi.name in keep]
    for vi in infos:
        vi.name = rename.get(vi.name, vi.name)
    infos = sorted((onnx.ValueInfoProto.FromString(vi.SerializeToString()) for vi in infos), key=lambda v: v.name)
    del g.value_info[:]
    g.value_info.extend(infos)


def _tensor_bytes(t: onnx.TensorProto) -> bytes:
    nameless = onnx.TensorProto()
    nameless.CopyFrom(t)
    nameless.name = ""
    return nameless.SerializeToString(deterministic=True)


def _h(*parts: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.digest()
