"""skip_layernorm: residual Add + LayerNormalization -> SkipLayerNorm.

The bias of the dense layer feeding the residual (an Add of a constant [E] to a MatMul output, used
nowhere else) moves into the plugin's ``bias`` field, as the former demo did. Each candidate is run
against the plugin's numpy reference on random inputs before it is rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from bertrt.plugins import reference as ref
from bertrt.plugins.nodes import SKIP_LAYER_NORM, make_plugin_node
from bertrt.plugins.specs import get_spec
from bertrt.surgery import adapters
from bertrt.surgery.framework import FusionPass, Match, NoMatch, register
from bertrt.surgery.graph_utils import const_value, is_const, last_dim, producer
from bertrt.surgery.region import evaluate, max_rel_err


def _split_bias(t: gs.Tensor, E: int):
    """(input without bias, bias) if t = MatMul(...) + bias[E] and the Add feeds nothing else."""
    p = producer(t)
    if p is None or p.op != "Add" or len(t.outputs) != 1:
        return t, None
    for i in (0, 1):
        bias, other = const_value(p.inputs[i]), p.inputs[1 - i]
        mp = producer(other)
        if bias is not None and bias.size == E and mp is not None and mp.op == "MatMul":
            return other, bias.reshape(E).astype(np.float32)
    return t, None


@dataclass
class Residual:
    a: gs.Tensor            # the two summands (a without the bias moved into the plugin), as matched
    b: gs.Tensor
    gamma: np.ndarray
    beta: np.ndarray
    bias: np.ndarray | None
    rank: int               # of the summands and the output: 3 ([B, S, E]) or 2 ([B*S, E])
    summed: tuple = ()      # the two summands as the graph adds them (a bias moved into the plugin included)


@register
class SkipLayerNormPass(FusionPass):
    name = "skip_layernorm"
    description = "Residual Add + LayerNormalization -> SkipLayerNorm (dense bias folded into the plugin)."
    what = "residual LayerNorm nodes"
    reference = "SkipLayerNorm"

    def candidates(self, graph, ctx, report):
        return [(f"LayerNormalization {ln.name}", ln) for ln in graph.nodes if ln.op == "LayerNormalization"]

    def match(self, graph, ctx, ln) -> Match:
        add = producer(ln.inputs[0])
        if add is None or add.op != "Add" or is_const(add.inputs[0]) or is_const(add.inputs[1]):
            raise NoMatch("its input is not the sum of two computed tensors (no residual Add)")
        a, b = add.inputs
        y = ln.outputs[0]
        gamma = const_value(ln.inputs[1])
        beta = const_value(ln.inputs[2]) if len(ln.inputs) > 2 else None
        if gamma is None or (beta is None and len(ln.inputs) > 2):
            raise NoMatch("its scale or bias is not constant")
        E = gamma.size  # the hidden size, also where shape inference left the dims unknown
        beta = np.zeros(E, np.float32) if beta is None else beta
        r = adapters.model_rank(graph, y, ctx)
        if adapters.model_rank(graph, a, ctx) != r or adapters.model_rank(graph, b, ctx) != r:
            raise NoMatch("the residual inputs' ranks differ")
        if last_dim(y) not in (None, E):
            raise NoMatch(f"its scale has {E} values for a hidden size of {last_dim(y)}")
        axis = ln.attrs.get("axis", -1)
        if axis not in (-1, r - 1):
            raise NoMatch(f"it normalises axis {axis}, not the hidden axis")
        bias = None
        if ctx.target.get("skip_layernorm_bias", True):
            a, bias = _split_bias(a, E)
            if bias is None:
                b, bias = _split_bias(b, E)
        data = Residual(a, b, gamma.reshape(E).astype(np.float32), beta.reshape(E).astype(np.float32), bias, r,
                        tuple(add.inputs))
        return Match([a, b], [y], data)

    def verify(self, graph, ctx, m: Match) -> float:
        s: Residual = m.data
        E = s.beta.size
        B, S = ctx.proof_shape()
        rng = np.random.default_rng(3)
        shape = (B, S, E) if s.rank == 3 else (B * S, E)
        a, b = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
        (got,) = evaluate(graph, m.outputs, [(s.a, a), (s.b, b)])
        # The plugin's own epsilon is the LayerNorm's (the reference's default for this hidden size).
        want = ref.skip_ln(a, b, s.gamma, s.beta, s.bias)
        return max_rel_err(got, want)

    def rewrite(self, graph, ctx, m: Match) -> list:
        s: Residual = m.data
        E = s.beta.size
        version = ctx.plugin_version("skip_layernorm")
        prefix = adapters.fresh(graph, "skip_layernorm")
        ins = []
        for i, (t, t0) in enumerate(zip(m.inputs, s.summed)):
            t_sb = adapters.to_sb(graph, t, s.rank, E)
            ins.append(adapters.to_5d(graph, t_sb, E, f"{prefix}/in{i}"))
            # A bias folded in: a QAT model's scale on the biased sum goes to the GEMM output (NVIDIA's QAT BERT).
            ctx.alias([t_sb, ins[-1]], [t, t0] if t is not t0 and t0.name in ctx.qat_scales else [t])
        fields = {"type_id": 0}  # ld, where the version has it, is implied by beta's length
        fields["beta"] = s.beta
        fields["gamma"] = s.gamma
        if s.bias is not None:
            fields["bias"] = s.bias
        out = gs.Variable(f"{prefix}/out", dtype=np.float32)
        graph.nodes.append(make_plugin_node(get_spec(SKIP_LAYER_NORM, version), ins, [out], fields, name=prefix))
        return [adapters.plugin_output(graph, ctx, out, E, prefix, m.outputs[0], s.rank)]
