"""The per-plugin check: each plugin node on NVIDIA's kernel and on bertrt's CPU reference (plugins/execute.py),
on the same random inputs, for every precision and layout the plugin has, at S = 128 and 384.

``cases()`` lists the nodes and inputs (made on the CPU, numpy only, deterministic from a seed), so the same list
can be read without a GPU; ``run_case`` runs one on both sides and measures the difference:

* max abs = max |kernel - reference| over every output element;
* max rel = max |kernel - reference| / |reference| over elements with |reference| >= 1e-3 * max |reference|
  (near-zero references make relative errors meaningless);
* INT8 outputs also in quantization steps: max |kernel - reference| / output scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from bertrt.plugins.nodes import (EMB_LAYER_NORM, QKV_TO_CONTEXT, SKIP_LAYER_NORM, TYPE_FP16, TYPE_FP32, TYPE_INT8,
                                  as_node_proto, make_plugin_node)
from bertrt.plugins.specs import get_spec

PRECISION = {TYPE_FP32: "fp32", TYPE_FP16: "fp16", TYPE_INT8: "int8"}
SEQS = (128, 384)
BATCH = 4
VOCAB, TYPES = 1000, 2
QKV_AMAX, CTX_AMAX, SKIP_AMAX, SKIP_OUT_AMAX = 6.0, 2.0, 8.0, 6.0


@dataclass
class Case:
    plugin: str
    version: str
    precision: str
    layout: str  # "fixed", "varseqlen", "interleaved"
    seq: int
    what: str  # a few words: head size, hidden size, path
    node: object  # NodeProto
    ref_inputs: list  # numpy arrays for PluginExecutor
    gpu_inputs: list  # numpy arrays for KernelExecutor (differs only where the GPU takes another mask form)
    amax: dict = field(default_factory=dict)
    out_scale: float | None = None  # INT8 output scale (steps)
    packed_mask: bool = False  # gpu_inputs[1] must be made on the GPU by EmbLayerNorm's mask kernel
    lengths: np.ndarray | None = None  # fixed-layout QKV: valid tokens per sequence (also compared alone)

    @property
    def label(self) -> str:
        return f"{self.plugin.replace('Custom', '').replace('PluginDynamic', '')} v{self.version}"


def _lengths(rng, B, S):
    lens = rng.integers(S // 4, S + 1, size=B)
    lens[0] = S  # one full sequence
    return lens.astype(np.int32)


def _node(plugin, version, n_in, n_out, fields, name):
    spec = get_spec(plugin, version)
    ins = [gs.Variable(f"{name}/in{i}") for i in range(n_in)]
    outs = [gs.Variable(f"{name}/out{i}") for i in range(n_out)]
    return as_node_proto(make_plugin_node(spec, ins, outs, fields, name=name))


def _q(rng, shape, amax):
    """Values on the INT8 grid of scale amax/127 (quantizing them loses nothing)."""
    s = amax / 127.0
    return (rng.integers(-127, 128, size=shape).astype(np.float32) * np.float32(s)).astype(np.float32)


def emb_cases(rng, E=384):
    word = rng.standard_normal((VOCAB, E)).astype(np.float32) * 0.5
    tok = rng.standard_normal((TYPES, E)).astype(np.float32) * 0.5
    pos = rng.standard_normal((512, E)).astype(np.float32) * 0.5
    gamma = (1 + 0.1 * rng.standard_normal(E)).astype(np.float32)
    beta = (0.1 * rng.standard_normal(E)).astype(np.float32)
    tables = {"bert_embeddings_word_embeddings": word, "bert_embeddings_token_type_embeddings": tok,
              "bert_embeddings_position_embeddings": pos, "bert_embeddings_layernorm_gamma": gamma,
              "bert_embeddings_layernorm_beta": beta}
    out = []
    for S in SEQS:
        lens = _lengths(rng, BATCH, S)
        ids = rng.integers(0, VOCAB, size=(S, BATCH)).astype(np.int32)
        seg = rng.integers(0, TYPES, size=(S, BATCH)).astype(np.int32)
        mask = (np.arange(S)[:, None] < lens[None, :]).astype(np.int32)
        for fp16 in (0, 1):
            node = _node(EMB_LAYER_NORM, "6", 3, 2, {**tables, "output_fp16": fp16, "mha_type_id": 0},
                         f"emb_fixed_{S}_{fp16}")
            out.append(Case(EMB_LAYER_NORM, "6", PRECISION[fp16], "fixed", S, f"E={E}, maskIdx", node,
                            [ids, seg, mask], [ids, seg, mask]))
        cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
        T = int(cu[-1])
        pids = rng.integers(0, VOCAB, size=T).astype(np.int32)
        pseg = rng.integers(0, TYPES, size=T).astype(np.int32)
        max_s = np.zeros(S, np.int32)
        for fp16 in (0, 1):
            node = _node(EMB_LAYER_NORM, "4", 4, 2, {**tables, "output_fp16": fp16}, f"emb_var_{S}_{fp16}")
            out.append(Case(EMB_LAYER_NORM, "4", PRECISION[fp16], "varseqlen", S, f"E={E}, HFace", node,
                            [pids, pseg, cu, max_s], [pids, pseg, cu, max_s]))
    return out


def qkv_cases(rng):
    out = []
    for S in SEQS:
        lens = _lengths(rng, BATCH, S)
        mask_sb = (np.arange(S)[:, None] < lens[None, :]).astype(np.int32)
        mask_idx = lens.reshape(BATCH, 1)
        for N, H, t, what in ((6, 64, TYPE_FP16, "H=64, fused fmha v1"), (6, 64, TYPE_INT8, "H=64, fused fmha v1"),
                              (6, 64, TYPE_FP32, "H=64, unfused"), (12, 32, TYPE_FP16, "H=32, unfused")):
            E = N * H
            x = _q(rng, (S, BATCH, 3 * E, 1, 1), QKV_AMAX) if t == TYPE_INT8 else \
                rng.standard_normal((S, BATCH, 3 * E, 1, 1)).astype(np.float32) * 2
            name = f"qkv_fixed_{S}_{H}_{t}"
            node = _node(QKV_TO_CONTEXT, "4", 2, 1, {"type_id": t, "hidden_size": E, "num_heads": N, "has_mask": 1},
                         name)
            fused = what.endswith("fused fmha v1")  # the fused runners read EmbLayerNorm's packed mask
            amax = {f"{name}/in0": QKV_AMAX, f"{name}/out0": CTX_AMAX} if t == TYPE_INT8 else {}
            out.append(Case(QKV_TO_CONTEXT, "4", PRECISION[t], "fixed", S, what, node, [x, mask_idx],
                            [x, mask_sb if fused else mask_idx], amax,
                            CTX_AMAX / 127 if t == TYPE_INT8 else None, packed_mask=fused, lengths=lens))
        # v5 with var_seqlen = 0 and a 1-D maskIdx (what bertrt emits for head sizes without fused kernels)
        for t in (TYPE_FP32, TYPE_FP16):
            N, H = 12, 32
            E = N * H
            x = rng.standard_normal((S, BATCH, 3 * E, 1, 1)).astype(np.float32) * 2
            node = _node(QKV_TO_CONTEXT, "5", 2, 1, {"type_id": t, "hidden_size": E, "num_heads": N, "has_mask": 1,
                                                      "var_seqlen": 0}, f"qkv_v5fixed_{S}_{t}")
            out.append(Case(QKV_TO_CONTEXT, "5", PRECISION[t], "fixed", S, "H=32, var_seqlen=0, unfused", node,
                            [x, lens], [x, lens], lengths=lens))
        cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
        T = int(cu[-1])
        for t in (TYPE_FP16, TYPE_INT8):
            N, H = 6, 64
            E = N * H
            x = _q(rng, (T, 3 * E, 1, 1), QKV_AMAX) if t == TYPE_INT8 else \
                rng.standard_normal((T, 3 * E, 1, 1)).astype(np.float32) * 2
            name = f"qkv_var_{S}_{t}"
            node = _node(QKV_TO_CONTEXT, "5", 4, 1, {"type_id": t, "hidden_size": E, "num_heads": N, "has_mask": 1,
                                                      "var_seqlen": 1}, name)
            amax = {f"{name}/in0": QKV_AMAX, f"{name}/out0": CTX_AMAX} if t == TYPE_INT8 else {}
            ins = [x, np.zeros((), np.int32), cu, np.zeros(S, np.int32)]
            out.append(Case(QKV_TO_CONTEXT, "5", PRECISION[t], "varseqlen", S, "H=64, fused fmha v2", node, ins, ins,
                            amax, CTX_AMAX / 127 if t == TYPE_INT8 else None))
    return out


def skip_cases(rng):
    out = []
    for S in SEQS:
        for E, types in ((384, (TYPE_FP32, TYPE_FP16)), (768, (TYPE_FP32, TYPE_FP16, TYPE_INT8))):
            gamma = (1 + 0.1 * rng.standard_normal(E)).astype(np.float32)
            beta = (0.1 * rng.standard_normal(E)).astype(np.float32)
            bias = (0.1 * rng.standard_normal(E)).astype(np.float32)
            for t in types:
                shape = (S, BATCH, E, 1, 1)
                if t == TYPE_INT8:
                    x, sk = _q(rng, shape, SKIP_AMAX), _q(rng, shape, SKIP_AMAX)
                else:
                    x, sk = (rng.standard_normal(shape).astype(np.float32) * 2 for _ in range(2))
                name = f"skip_fixed_{S}_{E}_{t}"
                node = _node(SKIP_LAYER_NORM, "5", 2, 1, {"type_id": t, "gamma": gamma, "beta": beta, "bias": bias},
                             name)
                amax = {f"{name}/in0": SKIP_AMAX, f"{name}/in1": SKIP_AMAX, f"{name}/out0": SKIP_OUT_AMAX} \
                    if t == TYPE_INT8 else {}
                out.append(Case(SKIP_LAYER_NORM, "5", PRECISION[t], "fixed", S, f"E={E}, bias", node, [x, sk], [x, sk],
                                amax, SKIP_OUT_AMAX / 127 if t == TYPE_INT8 else None))
            T = S * BATCH // 2
            if E == 768:
                x, sk = _q(rng, (1, E, T, 1), SKIP_AMAX), _q(rng, (1, E, T, 1), SKIP_AMAX)
                name = f"skip_il_{S}_{E}"
                node = _node(SKIP_LAYER_NORM, "7", 2, 1, {"gamma": gamma, "beta": beta}, name)
                amax = {f"{name}/in0": SKIP_AMAX, f"{name}/in1": SKIP_AMAX, f"{name}/out0": SKIP_OUT_AMAX}
                out.append(Case(SKIP_LAYER_NORM, "7", "int8", "interleaved", S, f"E={E}, T={T}", node, [x, sk],
                                [x, sk], amax, SKIP_OUT_AMAX / 127))
            x, sk = (rng.standard_normal((T, E, 1, 1)).astype(np.float32) * 2 for _ in range(2))
            node = _node(SKIP_LAYER_NORM, "6", 2, 1, {"type_id": TYPE_FP16, "gamma": gamma, "beta": beta, "bias": bias},
                         f"skip_var_{S}_{E}")
            out.append(Case(SKIP_LAYER_NORM, "6", "fp16", "varseqlen", S, f"E={E}, T={T}, bias", node, [x, sk],
                            [x, sk]))
    return out


def cases(seed: int = 0) -> list[Case]:
    rng = np.random.default_rng(seed)
    return emb_cases(rng) + qkv_cases(rng) + skip_cases(rng)


@dataclass
class CaseResult:
    case: Case
    outputs: list  # (output index, max abs, max rel, max steps or None, elements)
    error: str | None = None
    kernel: dict = field(default_factory=dict)  # output name -> the kernel's output (numpy)


def diff(kernel: np.ndarray, ref: np.ndarray, step: float | None):
    k, r = np.asarray(kernel, np.float64), np.asarray(ref, np.float64)
    if k.shape != r.shape:
        k = k.reshape(r.shape)
    d = np.abs(k - r)
    big = np.abs(r) >= 1e-3 * max(float(np.abs(r).max()), 1e-30)
    rel = float((d[big] / np.abs(r[big])).max()) if big.any() else 0.0
    # INT8: how many steps apart the two values are on the output grid (both are multiples of the scale, each
    # side's float32 rounding of it aside: dividing the difference by the scale would read 127 steps' rounding as
    # more than one step).
    steps = float(np.abs(np.rint(k / step) - np.rint(r / step)).max()) if step and d.size else None
    return float(d.max()) if d.size else 0.0, rel, steps, int(d.size)


def run_case(case: Case, lib, sm: int) -> CaseResult:
    """NVIDIA's kernel and the CPU reference on the case's inputs (needs the GPU and the kernels library)."""
    import torch

    from bertrt.plugins.execute import PluginExecutor
    from bertrt.plugins.kernels.execute import KernelExecutor

    ref = PluginExecutor(case.node, {}, case.amax)(case.ref_inputs)
    gpu_in = [torch.as_tensor(np.asarray(a)).cuda() for a in case.gpu_inputs]
    kx = KernelExecutor(case.node, lib, sm, {}, case.amax)
    try:
        if case.packed_mask:  # the fused runners read the mask EmbLayerNorm packs for them: make it so
            mask_sb = gpu_in[1].to(torch.int32).contiguous()
            S, B = mask_sb.shape
            t = int(kx.v["type_id"])
            packed = lib.bertrt_mask_packed_size(sm, t, S)
            m = torch.empty((B, packed), dtype=torch.int32, device="cuda")
            lib.call("bertrt_emb_mask", sm, t, 0, B, S, mask_sb.data_ptr(), m.data_ptr(),
                     torch.cuda.current_stream().cuda_stream)
            gpu_in[1] = m
        got = kx(gpu_in)
        torch.cuda.synchronize()
    finally:
        kx.close()
    rows, kernel_out = [], {}
    for i, name in enumerate(case.node.output):
        if name not in ref or name not in got:
            continue
        if case.plugin == EMB_LAYER_NORM and i == 1 and case.layout == "varseqlen":
            continue  # a 0-d dummy on both sides
        k = got[name].cpu().numpy()
        kernel_out[name] = k
        rows.append((i, *diff(k, ref[name], case.out_scale if i == 0 else None)))
        if case.lengths is not None and i == 0:  # the rows of real tokens alone (padded query rows aside)
            S = k.shape[0]
            valid = np.arange(S)[:, None] < case.lengths[None, :]
            rows.append(("0 valid rows", *diff(k.reshape(ref[name].shape)[valid], ref[name][valid], case.out_scale)))
    return CaseResult(case, rows, kernel=kernel_out)
