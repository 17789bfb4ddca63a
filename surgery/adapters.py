"""Layout adapters between a model's token layout and the plugins' sequence-major layout.

Exporters lay hidden states out batch-major: [B, S, E] (PyTorch) or [B*S, E] (tf2onnx). TensorRT's
BERT plugins want [S, B, E, 1, 1]. A fusion pass wraps each plugin in adapters so that the graph stays
valid and runnable after every pass; the ``layout`` pass then cancels adapter pairs, leaving transposes
only at the graph's edges. Adapter nodes carry the name prefixes below so ``layout`` can find them.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from bertrt.contract import INPUT_MASK
from bertrt.errors import BertrtError
from bertrt.surgery.graph_utils import graph_input, rank, replace_uses

TO_SB = "bertrt_to_sb"
FROM_SB = "bertrt_from_sb"


def fresh(graph: gs.Graph, prefix: str) -> str:
    """A new node-name prefix, numbered in creation order (deterministic)."""
    counters = graph.__dict__.setdefault("_bertrt_names", {})
    counters[prefix] = counters.get(prefix, 0) + 1
    return f"{prefix}_{counters[prefix]}"


def node(graph, op, name, inputs, attrs=None, dtype=np.float32, shape=None):
    """Append a one-output node named ``name`` (its output has the same name) and return the output."""
    out = gs.Variable(name, dtype=dtype, shape=shape)
    graph.nodes.append(gs.Node(op=op, name=name, attrs=attrs or {}, inputs=inputs, outputs=[out]))
    return out


def _batch_seq_shape(graph: gs.Graph) -> gs.Variable:
    """Shape(input_ids) as int64 [2] = [B, S], made once per graph."""
    cache = graph.__dict__.setdefault("_bertrt_cache", {})
    if "bs" not in cache:
        ids = graph_input(graph, "input_ids")
        if ids is None:
            raise BertrtError("the graph has no input 'input_ids': run `bertrt convert` first to get the "
                              "canonical model")
        cache["bs"] = node(graph, "Shape", f"{TO_SB}/batch_seq_shape", [ids], dtype=np.int64, shape=[2])
    return cache["bs"]


def to_sb(graph: gs.Graph, x: gs.Tensor, rank: int, E: int) -> gs.Variable:
    """Model layout ([B,S,E] or [B*S,E]) -> [S,B,E]."""
    name = fresh(graph, TO_SB)
    if rank == 2:
        shape = node(graph, "Concat", f"{name}/shape", [_batch_seq_shape(graph), gs.Constant(f"{name}/E", np.array([E], np.int64))],
                      attrs={"axis": 0}, dtype=np.int64, shape=[3])
        x = node(graph, "Reshape", f"{name}/Reshape", [x, shape], shape=None)
    elif rank != 3:
        raise ValueError(f"unexpected rank {rank}")
    return node(graph, "Transpose", f"{name}/Transpose", [x], attrs={"perm": [1, 0, 2]}, shape=["seq", "batch", E])


def from_sb(graph: gs.Graph, y: gs.Tensor, rank: int, E: int) -> gs.Variable:
    """[S,B,E] -> model layout of the given rank."""
    name = fresh(graph, FROM_SB)
    out = node(graph, "Transpose", f"{name}/Transpose", [y], attrs={"perm": [1, 0, 2]}, shape=["batch", "seq", E])
    if rank == 2:
        out = node(graph, "Reshape", f"{name}/Reshape", [out, gs.Constant(f"{name}/shape", np.array([-1, E], np.int64))],
                    shape=["tokens", E])
    return out


def to_5d(graph: gs.Graph, y: gs.Tensor, C: int, prefix: str) -> gs.Variable:
    """[S,B,C] -> [S,B,C,1,1], the plugins' fixed-length form."""
    return node(graph, "Reshape", f"{prefix}/to_5d", [y, gs.Constant(f"{prefix}/to_5d/shape", np.array([0, 0, C, 1, 1], np.int64))],
                 shape=["seq", "batch", C, 1, 1])


def from_5d(graph: gs.Graph, p: gs.Tensor, C: int, prefix: str) -> gs.Variable:
    return node(graph, "Reshape", f"{prefix}/from_5d", [p, gs.Constant(f"{prefix}/from_5d/shape", np.array([0, 0, C], np.int64))],
                 shape=["seq", "batch", C])


def plugin_output(graph: gs.Graph, ctx, out: gs.Tensor, C: int, prefix: str, replaces: gs.Tensor,
                  model_rank: int) -> gs.Variable:
    """A plugin's [S,B,C,1,1] output back in the model's layout (rank 2 or 3), taking the place of ``replaces``:
    every use of that tensor reads the plugin's values instead, and the INT8 name map knows they are its."""
    sb = from_5d(graph, out, C, prefix)
    model = from_sb(graph, sb, model_rank, C)
    replace_uses(graph, replaces, model)
    ctx.alias([out, sb, model], [replaces])
    return model


def model_rank(graph: gs.Graph, t: gs.Tensor, ctx) -> int:
    """The rank of a hidden-state tensor: from its shape or its producers, else by running what computes it
    once on a small valid batch (opset-10/11 exports leave many Reshape targets that inference cannot follow).
    Raises NoMatch where it is neither 2 nor 3."""
    from bertrt.surgery.framework import NoMatch
    from bertrt.surgery.region import RegionError, evaluate

    r = rank(t)
    if r is None:
        B, S = ctx.proof_shape(seq=8)
        feeds = [(i, (np.ones if i.name == INPUT_MASK else np.zeros)((B, S), np.dtype(i.dtype or np.int32)))
                 for i in graph.inputs]
        try:
            (value,) = evaluate(graph, [t], feeds)
        except RegionError as e:
            raise NoMatch(f"the rank of {t.name} is unknown and it cannot be computed: {e}") from None
        r = value.ndim
    if r not in (2, 3):
        raise NoMatch(f"{t.name} has rank {r}; hidden states are [batch, seq, hidden] or [batch*seq, hidden]")
    return r
