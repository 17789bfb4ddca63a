"""Numpy references of the TensorRT BERT plugins, following shared/specs/trt-bert-plugins.md to the letter.

Layouts are the plugins' own: sequence-major ``[S, B, E, 1, 1]`` (fixed length), ``[T, E, 1, 1]``
(var-seqlen), ``[1, E, T, 1]`` (INT8 interleaved, logical view of CHW32). Every function takes and returns
real values in float32: FP16 plugins round their inputs and outputs to float16 values, INT8 plugins
fake-quantize them with the given scales (``real = scale * q``, q in [-127, 127]; the attention output
saturates at -128, see INT8_OUT_MIN).

Numerics:
* LayerNorm is ``gamma * (x - mean) / sqrt(E[x^2] - mean^2 + eps) + beta`` with statistics in float32, as
  the kernels compute them for FP32 (numpy's pairwise sums keep them within ~1e-7 of exact).
  eps (§2.4): EmbLayerNorm 0; SkipLayerNorm FLT_EPSILON when E in {768, 1024} in FP32, else 0.
* FP16 SkipLayerNorm with E in {768, 1024} uses ``std::numeric_limits<half>::epsilon()``, which the
  plugin sources never specialise; an unspecialised numeric_limits returns T() = 0, so FP16_SKIP_EPS = 0.
  FP16 EmbLayerNorm, and FP16 SkipLayerNorm at hidden sizes other than 768/1024, follow the kernels' half
  arithmetic (LN_THREADS); the vectorized 768/1024 SkipLayerNorm keeps float32 statistics: expect ~1e-2
  against a GPU there, which is what the fp16 comparison tolerance allows.
* Attention runs in float32 (matmuls) with an exact softmax; masked keys get probability 0 exactly. Where the
  plugin runs NVIDIA's fused MHA FP16 kernels (head size 64: the var-seqlen plugin's v2 kernels; the fixed-length
  plugin's v1 kernels at S 128 and 384), the reference follows their half accumulators (FMHA_V2_MMA_K,
  FMHA_V1_PV_GROUPS).
"""

from __future__ import annotations

import numpy as np

from bertrt.plugins.fp16 import round_fp16

FLT_EPSILON = float(np.finfo(np.float32).eps)
FP16_SKIP_EPS = 0.0
DEFAULT_DQ_PROBS = 1.0 / 127.0
# NVIDIA's INT8 attention kernels (fmha v1 and v2) saturate their output to the whole int8 range: a context value
# below -127 steps comes out as -128, not -127 (measured on sm_90 against every one of them; issue #13).
INT8_OUT_MIN = -128
# NVIDIA's fused MHA v2 FP16 kernels (var-seqlen QKVToContext, head size 64) multiply on tensor cores into half
# accumulators, FMHA_V2_MMA_K products at a time: Q.K^T over the head dimension and P.V over the keys each add
# 16-wide partial sums into a half value, rounding after every addition; the softmax is float32 and P is stored
# as half before P.V. Modelled so, the reference gives the kernels' outputs bit for bit on 99.9 % (S=128) and
# 99.7 % (S=384) of the elements, the rest within 0.002 / 0.01; the float32 attention it replaces matched 17-22 %
# (sm_90, issue #13, benchmarks/results/kernels-h200.md; tests/fixtures/fmha_v2_fp16.npz holds one sequence).
FMHA_V2_MMA_K = 16
# The fixed-length plugin's fused FP16 kernels (fmha v1, head size 64) compute Q.K^T and P the same way, but P.V
# deals the keys' 16-wide slices round-robin to several half accumulators, added up in half at the end: 2 at
# S=128, 8 at S=384 (read out on sm_90 with V one-hot per key, which makes the output P itself, then P.V with a
# random V: 99.98 % bit exact; `benchmarks/kernels_h200.py --probe-fmha`). Other lengths keep float32 attention.
FMHA_V1_PV_GROUPS = {128: 2, 384: 8}


# ---------------------------------------------------------------- precision helpers


def fake_quant(x: np.ndarray, scale: float, lo: int = -127) -> np.ndarray:
    """INT8 quantize-dequantize: scale * clip(round_half_even(x / scale), lo, 127) (symmetric unless lo=-128)."""
    if not scale > 0:
        raise ValueError(f"INT8 scale must be > 0, got {scale}")
    q = np.clip(np.rint(np.asarray(x, dtype=np.float32) / np.float32(scale)), lo, 127)
    return (q * np.float32(scale)).astype(np.float32)


def scale_from_amax(amax: float) -> float:
    """TensorRT's implicit INT8 scale for a tensor whose dynamic range is [-amax, amax]."""
    return float(amax) / 127.0


def at_precision(x: np.ndarray, type_id: int, scale: float | None = None) -> np.ndarray:
    """Round x to what a tensor of type_id (0 FP32, 1 FP16, 2 INT8 with scale) holds."""
    if type_id == 1:
        return round_fp16(x)
    if type_id == 2:
        if scale is None:
            raise ValueError("an INT8 tensor needs a scale")
        return fake_quant(x, scale)
    return np.asarray(x, dtype=np.float32)


# ---------------------------------------------------------------- LayerNorm


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """LayerNorm over the last axis in the plugins' E[x^2] - mean^2 form, in float32."""
    x = np.asarray(x, dtype=np.float32)
    mu = x.mean(-1, keepdims=True)
    var = np.square(x).mean(-1, keepdims=True)
    var -= mu * mu
    var += np.float32(eps)
    rstd = np.sqrt(var, out=var)
    np.reciprocal(rstd, out=rstd)
    y = x - mu
    y *= rstd
    y *= np.asarray(gamma, np.float32)
    y += np.asarray(beta, np.float32)
    return y


# NVIDIA's FP16 LayerNorm kernels (EmbLayerNorm at every hidden size; SkipLayerNorm where it has no vectorized
# kernel: E not 768 or 1024 and above 32) compute in half: the sum of the inputs is rounded at each addition, and
# each of LN_THREADS threads adds x/E and (x/E)*x for its elements (e, e + 256, ...) into half accumulators. A cub
# block reduction adds the threads' pairs in half (neighbours in a warp in a tree, then the warps in order); mean,
# variance, 1/std, gamma and beta (EmbLayerNorm's float32 ones too) and the output (gamma * (x - mean) * rstd +
# beta, the last step one fused multiply-add) are half. Modelled so, the reference gives the kernels' outputs bit for
# bit at E=384 (sm_90, issue #13; float32 statistics matched 44 %).
LN_THREADS = 256


def _thread_sums(x: np.ndarray, E: int):
    """Each thread's half sums of x/E and (x/E)*x: [rows, LN_THREADS] each."""
    rld = round_fp16(np.float32(1) / np.float32(E))
    rv = round_fp16(rld * x)
    rv2 = round_fp16(rv * x)
    rows = x.shape[0]
    k = np.zeros((rows, LN_THREADS), np.float32)
    q = np.zeros((rows, LN_THREADS), np.float32)
    for s0 in range(0, E, LN_THREADS):
        n = min(LN_THREADS, E - s0)
        k[:, :n] = round_fp16(k[:, :n] + rv[:, s0:s0 + n])
        q[:, :n] = round_fp16(q[:, :n] + rv2[:, s0:s0 + n])
    return k, q


def _block_reduce(v: np.ndarray) -> np.ndarray:
    """cub's BlockReduce of [rows, LN_THREADS] in half: a tree over neighbours in each warp of 32, then the warps
    in order."""
    w = v.reshape(v.shape[0], LN_THREADS // 32, 32)
    for _ in range(5):
        w = round_fp16(w[..., 0::2] + w[..., 1::2])
    acc = w[:, 0, 0]
    for i in range(1, w.shape[1]):
        acc = round_fp16(acc + w[:, i, 0])
    return acc[:, None]


def layer_norm_half(x: np.ndarray, gamma, beta) -> np.ndarray:
    """x [..., E] (half values, the kernels' rounded input sum) -> the FP16 kernels' LayerNorm, as half values."""
    shape = x.shape
    E = shape[-1]
    x = np.asarray(x, np.float32).reshape(-1, E)
    k, q = _thread_sums(x, E)
    mu, m2 = _block_reduce(k), _block_reduce(q)
    g, b = round_fp16(np.asarray(gamma, np.float32)), round_fp16(np.asarray(beta, np.float32))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # a half overflow is inf/NaN, as on a GPU
        rstd = round_fp16(1.0 / np.sqrt(round_fp16(m2 - round_fp16(mu * mu))))
        y = round_fp16(round_fp16(g * round_fp16(x - mu)) * rstd + b)  # the last step one fused multiply-add
    return y.reshape(shape)


def skip_ln_eps(E: int, type_id: int) -> float:
    if E in (768, 1024):
        return FLT_EPSILON if type_id == 0 else FP16_SKIP_EPS
    return 0.0


# ---------------------------------------------------------------- EmbLayerNorm (§4.1)


def mask_index(mask_sb: np.ndarray) -> np.ndarray:
    """maskIdx [B]: index of the first 0 in each column of an [S, B] mask, or S if there is none."""
    z = np.asarray(mask_sb) == 0
    S = z.shape[0]
    return np.where(z.any(0), z.argmax(0), S).astype(np.int32)


def _embedding_sum(word, tok, pos, ids, seg, positions, output_fp16):
    """word[ids] + tok[seg] + pos[positions]. output_fp16=1 stores the tables in FP16 (gamma/beta stay FP32,
    §2.4) and adds them in half, as the kernels do: rounding commutes with the lookup, so only the rows looked up
    are rounded."""
    if output_fp16:
        return round_fp16(round_fp16(round_fp16(word[ids]) + round_fp16(tok[seg])) + round_fp16(pos[positions]))
    return np.asarray(word[ids], np.float32) + np.asarray(tok[seg], np.float32) + np.asarray(pos[positions], np.float32)


def emb_ln_fixed(ids, seg, mask, word, tok, pos, gamma, beta, output_fp16=False):
    """EmbLN v1/v6. ids, seg, mask: int [S, B]. Returns ([S, B, E, 1, 1], maskIdx int32 [B, 1])."""
    S = ids.shape[0]
    x = _embedding_sum(word, tok, pos, ids, seg, np.arange(S)[:, None], output_fp16)
    out = layer_norm_half(x, gamma, beta) if output_fp16 else layer_norm(x, gamma, beta, eps=0.0)
    return out[..., None, None], mask_index(mask)[:, None]


def positions_from_cu(cu: np.ndarray) -> np.ndarray:
    """In-sequence position of every packed token (restarting at 0 per sequence)."""
    cu = np.asarray(cu, dtype=np.int64)
    lengths = np.diff(cu)
    if (lengths < 0).any() or cu[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0 and not decrease, got {cu.tolist()}")
    return np.arange(int(cu[-1])) - np.repeat(cu[:-1], lengths)


def emb_ln_varseqlen(ids, seg, cu, word, tok, pos, gamma, beta, output_fp16=False, mtron=False):
    """EmbLN v2/v4 (HFace) and v3/v5 (MTron). ids, seg: [T]. Returns ([T, E, 1, 1], output 1).

    Output 1 is a 0-d int32 for HFace and the pre-LN sum [T, E, 1, 1] for MTron.
    """
    x = _embedding_sum(word, tok, pos, ids, seg, positions_from_cu(cu), output_fp16)
    out = layer_norm_half(x, gamma, beta) if output_fp16 else layer_norm(x, gamma, beta, eps=0.0)
    second = x[:, :, None, None].astype(np.float32) if mtron else np.zeros((), np.int32)
    return out[:, :, None, None], second


# ---------------------------------------------------------------- QKVToContext (§4.2)


def matmul_half_acc(a: np.ndarray, b: np.ndarray, k: int = FMHA_V2_MMA_K, groups: int = 1) -> np.ndarray:
    """a @ b (batched) as a tensor core with half accumulators computes it: the inner dimension in slices of k,
    each slice's products summed in float32, added to its accumulator and rounded to half; slice c goes to
    accumulator c % groups, and the accumulators are added in half, in order, at the end."""
    K = a.shape[-1]
    C = -(-K // k)
    if C * k != K:  # zero slices add nothing, as the kernels' padding of the keys
        a = np.concatenate([a, np.zeros(a.shape[:-1] + (C * k - K,), a.dtype)], -1)
        b = np.concatenate([b, np.zeros(b.shape[:-2] + (C * k - K, b.shape[-1]), b.dtype)], -2)
    # every slice's partial product at once: [..., C, M, N]
    slices_a = np.moveaxis(a.reshape(a.shape[:-1] + (C, k)), -2, -3)
    parts = np.matmul(slices_a, b.reshape(b.shape[:-2] + (C, k, b.shape[-1])))
    accs = [None] * groups
    for c in range(C):
        g, part = c % groups, parts[..., c, :, :]
        accs[g] = round_fp16(part if accs[g] is None else accs[g] + part)
    acc = accs[0]
    for other in accs[1:]:
        if other is not None:
            acc = round_fp16(acc + other)
    return acc


def attention(q, k, v, nvalid: int | None = None, dq_probs: float | None = None,
              half_acc: bool = False, pv_groups: int = 1) -> np.ndarray:
    """Softmax attention of one sequence. q, k, v: [L, N, H] -> [L, N, H].

    Keys at positions >= nvalid get probability 0; nvalid = 0 gives zeros. With dq_probs the
    probabilities are quantized to multiples of dq_probs (INT8 path). half_acc: both products with half
    accumulators and P in half, as the fused MHA FP16 kernels compute them (FMHA_V2_MMA_K), P.V with pv_groups
    accumulators (FMHA_V1_PV_GROUPS).
    """
    L, N, H = q.shape
    if nvalid == 0:
        return np.zeros((L, N, H), np.float32)
    qn, kn, vn = (np.ascontiguousarray(t.transpose(1, 0, 2), dtype=np.float32) for t in (q, k, v))
    if nvalid is not None and nvalid < L:
        kn, vn = kn[:, :nvalid], vn[:, :nvalid]  # masked keys contribute exactly 0
    mm = matmul_half_acc if half_acc else np.matmul
    logits = mm(qn, kn.transpose(0, 2, 1)) * np.float32(1.0 / np.sqrt(H))
    logits -= logits.max(-1, keepdims=True)
    p = np.exp(logits, out=logits)
    p /= p.sum(-1, keepdims=True)
    if dq_probs is not None:
        p = fake_quant(p, dq_probs)
    if not half_acc:
        return np.matmul(p, vn).transpose(1, 0, 2)
    return matmul_half_acc(round_fp16(p), vn, groups=pv_groups).transpose(1, 0, 2)


def split_qkv(x: np.ndarray, num_heads: int, order: str = "N3H"):
    """Split rows of 3E channels into q, k, v [..., N, H]. order "N3H" (plugins v1/2/4/5) or "3NH"."""
    E3 = x.shape[-1]
    E = E3 // 3
    H = E // num_heads
    if order == "N3H":
        y = x.reshape(x.shape[:-1] + (num_heads, 3, H))
        return y[..., 0, :], y[..., 1, :], y[..., 2, :]
    y = x.reshape(x.shape[:-1] + (3, num_heads, H))
    return y[..., 0, :, :], y[..., 1, :, :], y[..., 2, :, :]


def _quant_io(x, type_id, s_qkv):
    return at_precision(x, type_id, s_qkv)


def qkv_fixed(qkv, num_heads, mask_idx=None, type_id=0, s_qkv=None, s_ctx=None, dq_probs=DEFAULT_DQ_PROBS,
              fused: bool = False):
    """QKV v1/v4, and v2/v5 with var_seqlen=0. qkv [S, B, 3E, 1, 1]; mask_idx [B] or [B, 1] or None.
    fused: the plugin runs its fused kernels here (v1/v4 with a mask, at a head size and S they exist for)."""
    S, B, E3 = qkv.shape[:3]
    x = _quant_io(np.asarray(qkv, np.float32).reshape(S, B, E3), type_id, s_qkv)
    q, k, v = split_qkv(x, num_heads)
    H = E3 // 3 // num_heads
    out = np.empty((S, B, num_heads, H), np.float32)
    m = None if mask_idx is None else np.ravel(mask_idx)
    groups = FMHA_V1_PV_GROUPS.get(S) if fused and type_id == 1 and H == 64 else None
    for b in range(B):
        nvalid = None if m is None else int(np.clip(m[b], 0, S))
        out[:, b] = attention(q[:, b], k[:, b], v[:, b], nvalid, dq_probs if type_id == 2 else None,
                              half_acc=groups is not None, pv_groups=groups or 1)
    out = _ctx_precision(out, type_id, s_ctx)
    return out.reshape(S, B, E3 // 3, 1, 1)


def _ctx_precision(out, type_id, s_ctx):
    """The attention output in its type: INT8 saturates at INT8_OUT_MIN, as the kernels do."""
    if type_id == 2:
        if s_ctx is None:
            raise ValueError("an INT8 tensor needs a scale")
        return fake_quant(out, s_ctx, lo=INT8_OUT_MIN)
    return at_precision(out, type_id)


def _per_sequence(x_tokens, cu, num_heads, order, dq, half_acc=False):
    q, k, v = split_qkv(x_tokens, num_heads, order)
    T, N, H = q.shape
    out = np.empty((T, N, H), np.float32)
    cu = np.asarray(cu, dtype=np.int64)
    for i in range(len(cu) - 1):
        s0, s1 = int(cu[i]), int(cu[i + 1])
        if s1 > s0:
            out[s0:s1] = attention(q[s0:s1], k[s0:s1], v[s0:s1], None, dq, half_acc)
    return out


def qkv_varseqlen(qkv, cu, num_heads, type_id=1, s_qkv=None, s_ctx=None, dq_probs=DEFAULT_DQ_PROBS):
    """QKV v2/v5 with var_seqlen=1. qkv [T, 3E, 1, 1]; attention within each cu_seqlens span only."""
    T, E3 = qkv.shape[:2]
    x = _quant_io(np.asarray(qkv, np.float32).reshape(T, E3), type_id, s_qkv)
    half_acc = type_id == 1 and E3 // 3 // num_heads == 64  # the fused MHA v2 FP16 kernels (FMHA_V2_MMA_K)
    out = _per_sequence(x, cu, num_heads, "N3H", dq_probs if type_id == 2 else None, half_acc)
    return _ctx_precision(out, type_id, s_ctx).reshape(T, E3 // 3, 1, 1)


def qkv_interleaved_int8(qkv, cu, num_heads, s_qkv, s_ctx, dq_probs=DEFAULT_DQ_PROBS):
    """QKV v3/v6 (INT8 only). qkv [1, 3E, T, 1], channels [3, N, H] -> [1, E, T, 1]."""
    E3, T = qkv.shape[1], qkv.shape[2]
    x = fake_quant(np.asarray(qkv, np.float32).reshape(E3, T).T, s_qkv)
    out = _per_sequence(x, cu, num_heads, "3NH", dq_probs)
    out = fake_quant(out.reshape(T, E3 // 3), s_ctx, lo=INT8_OUT_MIN)
    return np.ascontiguousarray(out.T).reshape(1, E3 // 3, T, 1)


# ---------------------------------------------------------------- SkipLayerNorm (§4.3)


def skip_ln(x, skip, gamma, beta, bias=None, type_id=0, s_in=None, s_skip=None, s_out=None, eps=None):
    """SkipLN v1/v5 and v2/v6: LN(x + skip (+ bias)) over each contiguous run of E = len(beta) values.

    FP16 keeps gamma/beta/bias in FP16; INT8 quantizes inputs and output with their scales and keeps the
    weights in FP16.
    """
    E = np.asarray(beta).size
    shape = np.shape(x)
    if np.shape(skip) != shape:
        raise ValueError(f"SkipLayerNorm input {list(shape)} and skip {list(np.shape(skip))} differ")
    wconv = round_fp16 if type_id in (1, 2) else (lambda t: np.asarray(t, np.float32))
    a = at_precision(np.asarray(x, np.float32), type_id, s_in).reshape(-1, E)
    s = at_precision(np.asarray(skip, np.float32), type_id, s_skip).reshape(-1, E)
    total = a + s
    if bias is not None:
        total = total + wconv(bias)
    if type_id == 1 and E not in (768, 1024) and E > 32 and eps is None:  # the half kernel (LN_THREADS)
        total = round_fp16(total) if bias is None else round_fp16(round_fp16(a + s) + wconv(bias))
        return layer_norm_half(total, wconv(gamma), wconv(beta)).reshape(shape)
    eps = skip_ln_eps(E, type_id) if eps is None else eps
    y = layer_norm(total, wconv(gamma), wconv(beta), eps)
    return at_precision(y, type_id, s_out).reshape(shape)


def skip_ln_interleaved(x, skip, gamma, beta, s_in, s_skip, s_out, mtron=False, s_sum=None):
    """SkipLN v3/v7 (HFace) and v4/v8 (MTron), INT8 [1, E, T, 1]. MTron also returns the pre-LN sum."""
    E, T = x.shape[1], x.shape[2]
    a = fake_quant(np.asarray(x, np.float32).reshape(E, T).T, s_in)
    s = fake_quant(np.asarray(skip, np.float32).reshape(E, T).T, s_skip)
    total = a + s
    y = fake_quant(layer_norm(total, round_fp16(gamma), round_fp16(beta), FP16_SKIP_EPS), s_out)
    out = np.ascontiguousarray(y.T).reshape(1, E, T, 1)
    if not mtron:
        return out
    if s_sum is None:
        raise ValueError("the MTron SkipLayerNorm's second output needs its own scale")
    return out, np.ascontiguousarray(fake_quant(total, s_sum).T).reshape(1, E, T, 1)
