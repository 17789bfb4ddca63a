"""The numpy references against independent float64 loops and ONNX Runtime on unfused subgraphs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from bertrt.plugins import reference as ref

FIXTURES = Path(__file__).parent / "fixtures"

RNG = np.random.default_rng(1234)


# ---------------------------------------------------------------- float64 loop references


def loop_ln(x, g, b, eps):
    """LayerNorm of one vector, written as plain loops in float64 (two-pass variance)."""
    n = len(x)
    mu = sum(float(v) for v in x) / n
    var = sum((float(v) - mu) ** 2 for v in x) / n
    return np.array([float(g[i]) * (float(x[i]) - mu) / math.sqrt(var + eps) + float(b[i]) for i in range(n)])


def loop_attention(q, k, v, nvalid):
    """One head: q, k, v [L, H] in float64, keys >= nvalid ignored; nvalid = 0 gives zeros."""
    L, H = q.shape
    out = np.zeros((L, H))
    if nvalid == 0:
        return out
    for s in range(L):
        logits = [sum(float(q[s, h]) * float(k[t, h]) for h in range(H)) / math.sqrt(H) for t in range(nvalid)]
        m = max(logits)
        e = [math.exp(x - m) for x in logits]
        z = sum(e)
        for t in range(nvalid):
            out[s] += e[t] / z * v[t].astype(np.float64)
    return out


def tables(V=50, Tt=2, P=16, E=32):
    return (RNG.standard_normal((V, E)).astype(np.float32), RNG.standard_normal((Tt, E)).astype(np.float32),
            RNG.standard_normal((P, E)).astype(np.float32), (1 + 0.1 * RNG.standard_normal(E)).astype(np.float32),
            (0.1 * RNG.standard_normal(E)).astype(np.float32))


# ---------------------------------------------------------------- EmbLayerNorm


def test_emb_ln_fixed_matches_loops_and_mask_index():
    S, B = 8, 3
    word, tok, pos, g, b = tables()
    ids = RNG.integers(0, 50, (S, B)).astype(np.int32)
    seg = RNG.integers(0, 2, (S, B)).astype(np.int32)
    mask = np.zeros((S, B), np.int32)
    mask[:5, 0], mask[:, 1] = 1, 1  # lengths 5, 8 (none zero -> S), 0
    out, mask_idx = ref.emb_ln_fixed(ids, seg, mask, word, tok, pos, g, b)
    assert out.shape == (S, B, 32, 1, 1) and out.dtype == np.float32
    assert mask_idx.shape == (B, 1) and mask_idx.dtype == np.int32
    assert mask_idx.ravel().tolist() == [5, 8, 0]
    for s in range(S):
        for bb in range(B):
            x = word[ids[s, bb]].astype(np.float64) + tok[seg[s, bb]] + pos[s]  # position = padded index s
            np.testing.assert_allclose(out[s, bb, :, 0, 0], loop_ln(x, g, b, 0.0), atol=2e-5)


def test_emb_ln_output_fp16_rounds_tables_and_output():
    word, tok, pos, g, b = tables()
    ids = RNG.integers(0, 50, (4, 1)).astype(np.int32)
    seg = np.zeros((4, 1), np.int32)
    out16, _ = ref.emb_ln_fixed(ids, seg, np.ones((4, 1), np.int32), word, tok, pos, g, b, output_fp16=True)
    out32, _ = ref.emb_ln_fixed(ids, seg, np.ones((4, 1), np.int32), word, tok, pos, g, b)
    assert np.array_equal(out16, out16.astype(np.float16).astype(np.float32))  # representable in FP16
    assert 0 < np.abs(out16 - out32).max() < 1e-2


@pytest.mark.parametrize("mtron", [False, True])
def test_emb_ln_varseqlen_positions_restart_per_sequence(mtron):
    word, tok, pos, g, b = tables()
    cu = np.array([0, 3, 3, 7], np.int32)  # lengths 3, 0, 4
    ids = RNG.integers(0, 50, 7).astype(np.int32)
    seg = RNG.integers(0, 2, 7).astype(np.int32)
    out, second = ref.emb_ln_varseqlen(ids, seg, cu, word, tok, pos, g, b, mtron=mtron)
    assert out.shape == (7, 32, 1, 1)
    expected_pos = [0, 1, 2, 0, 1, 2, 3]
    for t in range(7):
        x = word[ids[t]].astype(np.float64) + tok[seg[t]] + pos[expected_pos[t]]
        np.testing.assert_allclose(out[t, :, 0, 0], loop_ln(x, g, b, 0.0), atol=2e-5)
        if mtron:
            np.testing.assert_allclose(second[t, :, 0, 0], x, atol=1e-5)
    if not mtron:
        assert second.shape == () and second.dtype == np.int32


# ---------------------------------------------------------------- QKVToContext


def make_qkv(S, B, N, H):
    return RNG.standard_normal((S, B, 3 * N * H, 1, 1)).astype(np.float32)


def loop_qkv_fixed(qkv, N, mask_idx):
    S, B, E3 = qkv.shape[:3]
    H = E3 // 3 // N
    out = np.zeros((S, B, N * H))
    for b in range(B):
        for n in range(N):
            base = n * 3 * H  # per-head [N, 3, H]: q, then k, then v of head n
            q = qkv[:, b, base:base + H, 0, 0]
            k = qkv[:, b, base + H:base + 2 * H, 0, 0]
            v = qkv[:, b, base + 2 * H:base + 3 * H, 0, 0]
            nvalid = S if mask_idx is None else int(np.ravel(mask_idx)[b])
            out[:, b, n * H:(n + 1) * H] = loop_attention(q, k, v, nvalid)
    return out


def test_qkv_fixed_with_mask_index_matches_loops():
    S, B, N, H = 6, 3, 2, 4
    qkv = make_qkv(S, B, N, H)
    mask_idx = np.array([[4], [6], [1]], np.int32)  # [B, 1] as EmbLN v1/v6 gives it
    out = ref.qkv_fixed(qkv, N, mask_idx)
    assert out.shape == (S, B, N * H, 1, 1)
    np.testing.assert_allclose(out[..., 0, 0], loop_qkv_fixed(qkv, N, mask_idx), atol=1e-5)


def test_qkv_keys_at_and_after_mask_index_are_ignored():
    """maskIdx = first zero: changing keys/values at positions >= maskIdx changes nothing."""
    S, N, H = 6, 2, 4
    qkv = make_qkv(S, 1, N, H)
    out = ref.qkv_fixed(qkv, N, np.array([3], np.int32))
    changed = qkv.copy()
    for n in range(N):
        changed[3:, 0, n * 3 * H + H:(n + 1) * 3 * H] += 5.0  # K and V of padded positions
    assert np.array_equal(ref.qkv_fixed(changed, N, np.array([3], np.int32)), out)
    changed[2, 0, H:2 * H] += 5.0  # a valid key of head 0 does matter
    assert not np.allclose(ref.qkv_fixed(changed, N, np.array([3], np.int32)), out)


def test_qkv_mask_index_zero_gives_zeros():
    qkv = make_qkv(5, 2, 2, 4)
    out = ref.qkv_fixed(qkv, 2, np.array([0, 5], np.int32))  # 1-D [B] as QKV v2/v5 var_seqlen=0 takes it
    assert np.all(out[:, 0] == 0)
    assert np.abs(out[:, 1]).max() > 0


def test_qkv_no_mask_attends_to_everything():
    qkv = make_qkv(5, 2, 2, 4)
    np.testing.assert_allclose(ref.qkv_fixed(qkv, 2, None)[..., 0, 0], loop_qkv_fixed(qkv, 2, None), atol=1e-5)


def test_qkv_weight_order_matters():
    """The same tensor read as [Q | K | V] (3, N, H) gives a different context than the plugins' [N, 3, H]."""
    S, N, H = 5, 2, 4
    qkv = make_qkv(S, 1, N, H)
    x = qkv[:, 0, :, 0, 0]
    q, k, v = ref.split_qkv(x, N, order="3NH")
    wrong = ref.attention(q, k, v).reshape(S, N * H)
    right = ref.qkv_fixed(qkv, N)[:, 0, :, 0, 0]
    np.testing.assert_allclose(right, loop_qkv_fixed(qkv, N, None)[:, 0], atol=1e-5)
    assert np.abs(wrong - right).max() > 0.1


def test_qkv_matches_onnxruntime_on_unfused_attention():
    """ONNX Runtime on standard ops (split per head, MatMul, Softmax, MatMul) agrees with qkv_fixed."""
    S, B, N, H = 7, 2, 2, 8
    qkv = make_qkv(S, B, N, H)
    nodes = [
        helper.make_node("Reshape", ["qkv", "shape5"], ["x"]),  # [S, B, N, 3, H]
        helper.make_node("Transpose", ["x"], ["xt"], perm=[3, 1, 2, 0, 4]),  # [3, B, N, S, H]
        helper.make_node("Split", ["xt"], ["q3", "k3", "v3"], axis=0, num_outputs=3),
        helper.make_node("Squeeze", ["q3", "ax0"], ["q"]),
        helper.make_node("Squeeze", ["k3", "ax0"], ["k"]),
        helper.make_node("Squeeze", ["v3", "ax0"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"]),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "maskadd"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["ctx"]),  # [B, N, S, H]
        helper.make_node("Transpose", ["ctx"], ["out"], perm=[2, 0, 1, 3]),  # [S, B, N, H]
    ]
    mask_idx = np.array([5, 7], np.int32)
    maskadd = np.where(np.arange(S)[None, :] < mask_idx[:, None], 0.0, -1e9).astype(np.float32)[:, None, None, :]
    inits = [onnx.numpy_helper.from_array(np.array([S, B, N, 3, H], np.int64), "shape5"),
             onnx.numpy_helper.from_array(np.array([0], np.int64), "ax0"),
             onnx.numpy_helper.from_array(np.float32(1 / math.sqrt(H)), "scale"),
             onnx.numpy_helper.from_array(maskadd, "maskadd")]
    g = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("qkv", onnx.TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    expected = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"qkv": qkv})[0]
    np.testing.assert_allclose(ref.qkv_fixed(qkv, N, mask_idx).reshape(S, B, N, H), expected, atol=1e-5)


def test_qkv_varseqlen_never_attends_across_sequences():
    N, H = 2, 4
    cu = np.array([0, 3, 7], np.int32)
    qkv = RNG.standard_normal((7, 3 * N * H, 1, 1)).astype(np.float32)
    out = ref.qkv_varseqlen(qkv, cu, N, type_id=0)
    for s0, s1 in ((0, 3), (3, 7)):
        one = qkv[s0:s1].reshape(s1 - s0, 1, 3 * N * H, 1, 1)  # the sequence alone, as fixed length
        np.testing.assert_allclose(out[s0:s1, :, 0, 0], loop_qkv_fixed(one, N, None)[:, 0], atol=1e-5)
    changed = qkv.copy()
    changed[3:] += 3.0  # the second sequence changes; the first must not see it
    out2 = ref.qkv_varseqlen(changed, cu, N, type_id=0)
    assert np.array_equal(out2[:3], out[:3]) and not np.allclose(out2[3:], out[3:])


def test_qkv_fp16_rounds_input_and_output():
    qkv = make_qkv(6, 1, 2, 4)
    out = ref.qkv_fixed(qkv, 2, None, type_id=1)
    assert np.array_equal(out, out.astype(np.float16).astype(np.float32))
    expected = loop_qkv_fixed(qkv.astype(np.float16).astype(np.float32), 2, None)
    np.testing.assert_allclose(out[..., 0, 0], expected, atol=2e-3)


def test_qkv_int8_implicit_scales_fake_quantize():
    qkv = make_qkv(6, 1, 2, 4)
    amax = {"qkv": 4.0, "ctx": 2.0}
    s_qkv, s_ctx = ref.scale_from_amax(amax["qkv"]), ref.scale_from_amax(amax["ctx"])
    out = ref.qkv_fixed(qkv, 2, np.array([6]), type_id=2, s_qkv=s_qkv, s_ctx=s_ctx, dq_probs=1 / 127)
    q = out / s_ctx
    np.testing.assert_allclose(q, np.rint(q), atol=1e-3)  # on the output's INT8 grid
    assert np.abs(q).max() <= 127
    # Independent: quantize the input, float64 attention with probabilities on the 1/127 grid, quantize.
    xq = np.clip(np.rint(qkv / s_qkv), -127, 127) * s_qkv
    fp = loop_qkv_fixed(xq, 2, None)
    assert np.abs(out[..., 0, 0] - fp).max() < 0.1  # probability quantization only moves it a little
    assert np.abs(out[..., 0, 0] - loop_qkv_fixed(qkv, 2, None)).max() > 0  # and it did quantize


def test_qkv_interleaved_int8_uses_3nh_order_and_explicit_scales():
    N, H = 2, 4
    E = N * H
    cu = np.array([0, 3, 5], np.int32)
    tokens = RNG.standard_normal((5, 3 * E)).astype(np.float32)  # [T, 3E] channels [3, N, H]
    x = np.ascontiguousarray(tokens.T).reshape(1, 3 * E, 5, 1)
    s_qkv, s_ctx = 0.05, 0.02
    out = ref.qkv_interleaved_int8(x, cu, N, s_qkv, s_ctx, dq_probs=1 / 127)
    assert out.shape == (1, E, 5, 1)
    tq = np.clip(np.rint(tokens / s_qkv), -127, 127) * s_qkv
    for s0, s1 in ((0, 3), (3, 5)):
        for n in range(N):
            q, k, v = (tq[s0:s1, c * E + n * H:c * E + (n + 1) * H] for c in range(3))
            exp = loop_attention(q, k, v, s1 - s0)
            got = out[0, n * H:(n + 1) * H, s0:s1, 0].T
            assert np.abs(got - exp).max() < 0.05


# ---------------------------------------------------------------- SkipLayerNorm


@pytest.mark.parametrize("E,eps", [(32, 0.0), (768, ref.FLT_EPSILON)])
def test_skip_ln_fixed_with_bias_matches_loops(E, eps):
    x = RNG.standard_normal((3, 2, E, 1, 1)).astype(np.float32)
    skip = RNG.standard_normal((3, 2, E, 1, 1)).astype(np.float32)
    g, b, bias = ((1 + 0.1 * RNG.standard_normal(E)).astype(np.float32),
                  (0.1 * RNG.standard_normal(E)).astype(np.float32), RNG.standard_normal(E).astype(np.float32))
    assert ref.skip_ln_eps(E, 0) == eps
    out = ref.skip_ln(x, skip, g, b, bias)
    for s in range(3):
        for bb in range(2):
            total = x[s, bb, :, 0, 0].astype(np.float64) + skip[s, bb, :, 0, 0] + bias
            np.testing.assert_allclose(out[s, bb, :, 0, 0], loop_ln(total, g, b, eps), atol=2e-5)
    no_bias = ref.skip_ln(x, skip, g, b)
    assert np.abs(no_bias - out).max() > 0.01


def test_skip_ln_eps_rule():
    assert ref.skip_ln_eps(768, 0) == ref.FLT_EPSILON and ref.skip_ln_eps(1024, 0) == ref.FLT_EPSILON
    assert ref.skip_ln_eps(128, 0) == 0.0 and ref.skip_ln_eps(768, 1) == ref.FP16_SKIP_EPS
    # eps matters where the variance is tiny: a constant vector normalises to beta only without eps
    x = np.full((1, 768), 0.5, np.float32)
    g, b = np.ones(768, np.float32), np.zeros(768, np.float32)
    assert np.all(ref.skip_ln(x, np.zeros_like(x), g, b) == 0)


def test_skip_ln_varseqlen_normalises_each_run_of_e():
    E = 16
    x = RNG.standard_normal((5, E, 1, 1)).astype(np.float32)
    skip = RNG.standard_normal((5, E, 1, 1)).astype(np.float32)
    g, b = np.ones(E, np.float32), np.zeros(E, np.float32)
    out = ref.skip_ln(x, skip, g, b)
    for t in range(5):
        np.testing.assert_allclose(out[t, :, 0, 0], loop_ln(x[t, :, 0, 0].astype(np.float64) + skip[t, :, 0, 0],
                                                               g, b, 0.0), atol=2e-5)


def test_skip_ln_int8_quantizes_inputs_and_output():
    E = 768
    x = RNG.standard_normal((2, 1, E, 1, 1)).astype(np.float32)
    skip = RNG.standard_normal((2, 1, E, 1, 1)).astype(np.float32)
    g, b = np.ones(E, np.float32), np.zeros(E, np.float32)
    s_in, s_skip, s_out = 4 / 127, 4 / 127, 5 / 127
    out = ref.skip_ln(x, skip, g, b, type_id=2, s_in=s_in, s_skip=s_skip, s_out=s_out)
    np.testing.assert_allclose(out / s_out, np.rint(out / s_out), atol=1e-3)
    xq = np.clip(np.rint(x / s_in), -127, 127) * s_in + np.clip(np.rint(skip / s_skip), -127, 127) * s_skip
    exp = np.stack([loop_ln(xq[i, 0, :, 0, 0], g, b, 0.0) for i in range(2)])
    assert np.abs(out[:, 0, :, 0, 0] - exp).max() <= s_out / 2 + 1e-4


def test_skip_ln_interleaved_mtron_returns_pre_ln_sum():
    E = 768
    x = RNG.standard_normal((1, E, 3, 1)).astype(np.float32)
    skip = RNG.standard_normal((1, E, 3, 1)).astype(np.float32)
    g, b = np.ones(E, np.float32), np.zeros(E, np.float32)
    s = 4 / 127
    out, total = ref.skip_ln_interleaved(x, skip, g, b, s, s, 5 / 127, mtron=True, s_sum=8 / 127)
    assert out.shape == total.shape == (1, E, 3, 1)
    want_sum = ref.fake_quant(ref.fake_quant(x, s) + ref.fake_quant(skip, s), 8 / 127)
    np.testing.assert_allclose(total, want_sum, atol=1e-6)


def test_round_fp16_gives_numpys_bits_on_every_kind_of_value():
    """The fast rounding (ONNX Runtime's Cast for large arrays) against numpy's cast, element by element."""
    from bertrt.plugins.fp16 import ORT_MIN_SIZE, round_fp16

    rng = np.random.default_rng(0)
    edges = np.array([65504, 65519.99, 65520, 65536, 1e9, -65520, 2 ** -14, 2 ** -14 * (1 - 2 ** -11), 2 ** -24,
                      2 ** -25, 3 * 2 ** -26, 0.0, -0.0, np.inf, -np.inf, np.nan, 1 + 2 ** -11, 1 + 3 * 2 ** -11],
                     np.float32)
    bits = rng.integers(0, 2 ** 32, 4 * ORT_MIN_SIZE, dtype=np.uint64).astype(np.uint32).view(np.float32)
    normal = rng.standard_normal(4 * ORT_MIN_SIZE).astype(np.float32) * 100
    for x in (edges, np.concatenate([edges, bits]), normal.reshape(64, -1)):
        with np.errstate(over="ignore"):
            want = x.astype(np.float16).astype(np.float32)
        got = round_fp16(x)
        assert got.dtype == np.float32 and got.shape == x.shape
        np.testing.assert_array_equal(got.view(np.uint32)[~np.isnan(want)], want.view(np.uint32)[~np.isnan(want)])
        assert np.isnan(got[np.isnan(want)]).all()


@pytest.mark.parametrize("layout", ["fixed", "varseqlen", "interleaved"])
def test_qkv_int8_output_saturates_at_minus_128(layout):
    # NVIDIA's INT8 attention kernels write -128 for a context below -127 steps (measured on the H200, #13).
    # One token: attention returns v itself, so the output is v quantized with the context scale.
    N, H = 1, 4
    E = N * H
    s_qkv, s_ctx = 8 / 127, 2 / 127
    v = np.array([-5.0, 5.0, 0.5, -0.5], np.float32)  # -> -128 (saturated), 127 (saturated), 32, -32 steps
    q = k = np.zeros(H, np.float32)
    if layout == "interleaved":  # channels [3, N, H]
        tokens = np.concatenate([q, k, v])[None]
        out = ref.qkv_interleaved_int8(np.ascontiguousarray(tokens.T).reshape(1, 3 * E, 1, 1),
                                       np.array([0, 1]), N, s_qkv, s_ctx)[0, :, 0, 0]
    else:  # channels [N, 3, H]
        x = np.concatenate([q, k, v])
        if layout == "fixed":
            out = ref.qkv_fixed(x.reshape(1, 1, 3 * E, 1, 1), N, np.array([1]), type_id=2, s_qkv=s_qkv,
                                s_ctx=s_ctx)[0, 0, :, 0, 0]
        else:
            out = ref.qkv_varseqlen(x.reshape(1, 3 * E, 1, 1), np.array([0, 1]), N, type_id=2, s_qkv=s_qkv,
                                    s_ctx=s_ctx)[0, :, 0, 0]
    vq = np.clip(np.rint(v / s_qkv), -127, 127)  # the input's own quantization (symmetric)
    expected = np.clip(np.rint(vq * s_qkv / s_ctx), -128, 127)
    assert expected.tolist() == [-128, 127, 32, -32]
    np.testing.assert_array_equal(np.rint(out / s_ctx), expected)


# ---------------------------------------------------------------- fused MHA v2 FP16 arithmetic (#13)


def test_half_accumulator_loses_what_a_half_cannot_hold():
    # Q.K^T of head size 64 in four 16-wide slices: 1000 from the first, 0.25 from each other. A half holds
    # 1000 and 1000.5 but not 1000.25, so each later addition rounds back to 1000 (float32 keeps 1000.75).
    q = np.zeros((1, 1, 64), np.float32)
    k = np.zeros((1, 2, 64), np.float32)
    q[0, 0, [0, 16, 32, 48]] = [1000.0, 0.25, 0.25, 0.25]
    k[0, 0, [0, 16, 32, 48]] = 1.0  # key 0: 1000 (half) or 1000.75 (float32)
    k[0, 1, 0] = 1.0  # key 1: 1000 in both
    logits = ref.matmul_half_acc(q, k.transpose(0, 2, 1))
    assert logits.tolist() == [[[1000.0, 1000.0]]]
    assert np.matmul(q, k.transpose(0, 2, 1)).tolist() == [[[1000.75, 1000.0]]]
    # In attention, key 0 (value 1) and key 1 (value 0) then tie: the context is 1/2 exactly; float32's
    # 0.09375 lead (1000.75 / 8 - 1000 / 8) gives 1 / (1 + e^-0.09375) = 0.5234 instead.
    v = np.zeros((2, 1, 64), np.float32)
    v[0, 0, :] = 1.0
    qs, ks = q.transpose(1, 0, 2), k.transpose(1, 0, 2)  # [L, N, H]
    assert ref.attention(qs, ks, v, half_acc=True)[0, 0, 0] == 0.5
    np.testing.assert_allclose(ref.attention(qs, ks, v)[0, 0, 0], 1 / (1 + np.exp(-0.09375)), rtol=1e-6)


def test_varseqlen_fp16_head64_follows_nvidia_fused_mha_v2():
    # One head of one sequence, as NVIDIA's fmha v2 FP16 kernel wrote it on an H200 (tests/fixtures/README.md).
    d = np.load(FIXTURES / "fmha_v2_fp16.npz")
    qkv, kernel = d["qkv"].astype(np.float32), d["kernel"].astype(np.float32)
    L, H = kernel.shape
    # num_heads=1 over 3 x 64 channels: the [N, 3, H] layout of one head; head size 64 selects the fused path
    out = ref.qkv_varseqlen(qkv.reshape(L, 3 * H, 1, 1), np.array([0, L]), 1, type_id=1).reshape(L, H)
    exact = float((out == kernel).mean())
    assert exact >= 0.995, exact
    assert np.abs(out - kernel).max() <= 2 ** -8
    # the float32 attention (what the reference did before) matches far fewer elements
    q, k, v = ref.split_qkv(qkv, 1)
    plain = ref.round_fp16(ref.attention(q, k, v)[:, 0])
    assert float((plain == kernel).mean()) < 0.5


def test_varseqlen_half_accumulators_only_for_the_fused_head_size():
    # Head size 32 (no fused v2 kernel verified) and FP32 keep the float32 attention.
    rng = np.random.default_rng(3)
    x = ref.round_fp16(rng.standard_normal((40, 3 * 64, 1, 1)).astype(np.float32) * 3)
    cu = np.array([0, 40])
    for heads, t in ((2, 1), (1, 0)):  # 2 heads of 32 in FP16; 1 head of 64 in FP32
        q, k, v = ref.split_qkv(x.reshape(40, -1), heads)
        expected = ref.at_precision(ref.attention(q, k, v), t).reshape(40, 64, 1, 1)
        np.testing.assert_array_equal(ref.qkv_varseqlen(x, cu, heads, type_id=t), expected)
    q, k, v = ref.split_qkv(x.reshape(40, -1), 1)
    half = ref.round_fp16(ref.attention(q, k, v, half_acc=True)).reshape(40, 64, 1, 1)
    np.testing.assert_array_equal(ref.qkv_varseqlen(x, cu, 1, type_id=1), half)


def test_half_accumulators_dealt_round_robin():
    # Four 16-wide slices worth 1024, 0.5, 0, 0.5. One half accumulator: 1024.5 ties to 1024, and the last 0.5
    # again, so 1024. Two (slices 0, 2 and 1, 3, as fmha v1 at S=128 deals them): 1024 and 1, then 1025.
    a = np.zeros((1, 64), np.float32)
    b = np.zeros((64, 1), np.float32)
    a[0, [0, 16, 48]] = [1024.0, 0.5, 0.5]
    b[[0, 16, 48], 0] = 1.0
    assert ref.matmul_half_acc(a, b).item() == 1024.0
    assert ref.matmul_half_acc(a, b, groups=2).item() == 1025.0
    assert (a @ b).item() == 1025.0


@pytest.mark.parametrize("S,rows", [(128, 128), (384, 32)])
def test_fixed_fp16_head64_follows_nvidia_fused_mha_v1(S, rows):
    # One head, one full sequence, as NVIDIA's fmha v1 FP16 kernel wrote it on an H200 (tests/fixtures/README.md),
    # through the plugin node, so that the fused path is the one a QKV v4 node with a mask takes.
    from bertrt.plugins.execute import PluginExecutor
    from bertrt.plugins.kernels.check import _node
    from bertrt.plugins.nodes import QKV_TO_CONTEXT, TYPE_FP16

    d = np.load(FIXTURES / "fmha_v1_fp16.npz")
    qkv, kernel = d[f"qkv{S}"].astype(np.float32).reshape(S, 1, 192, 1, 1), d[f"kernel{S}"].astype(np.float32)
    node = _node(QKV_TO_CONTEXT, "4", 2, 1, {"type_id": TYPE_FP16, "hidden_size": 64, "num_heads": 1,
                                            "has_mask": 1}, "v1")
    out = next(iter(PluginExecutor(node, {}, {})([qkv, np.array([[S]], np.int32)]).values())).reshape(S, 64)[:rows]
    assert float((out == kernel).mean()) >= 0.995
    assert np.abs(out - kernel).max() <= 2 ** -8
    plain = ref.qkv_fixed(qkv, 1, np.array([S]), type_id=1).reshape(S, 64)[:rows]  # float32 attention
    assert float((plain == kernel).mean()) < 0.7


def test_unfused_fixed_paths_keep_float32_attention():
    # QKV v5 with var_seqlen=0 runs the unfused runner; v4 without a mask too: neither takes the fused arithmetic.
    from bertrt.plugins.execute import PluginExecutor
    from bertrt.plugins.kernels.check import _node
    from bertrt.plugins.nodes import QKV_TO_CONTEXT, TYPE_FP16

    d = np.load(FIXTURES / "fmha_v1_fp16.npz")
    qkv = d["qkv128"].astype(np.float32).reshape(128, 1, 192, 1, 1)
    plain = ref.qkv_fixed(qkv, 1, np.array([128]), type_id=1)
    fused = ref.qkv_fixed(qkv, 1, np.array([128]), type_id=1, fused=True)
    assert not np.array_equal(plain, fused)
    v5 = _node(QKV_TO_CONTEXT, "5", 2, 1, {"type_id": TYPE_FP16, "hidden_size": 64, "num_heads": 1, "has_mask": 1,
                                          "var_seqlen": 0}, "v5")
    np.testing.assert_array_equal(next(iter(PluginExecutor(v5, {}, {})([qkv, np.array([128], np.int32)]).values())),
                                  plain)
    v4 = _node(QKV_TO_CONTEXT, "4", 1, 1, {"type_id": TYPE_FP16, "hidden_size": 64, "num_heads": 1, "has_mask": 0},
               "v4")
    np.testing.assert_array_equal(next(iter(PluginExecutor(v4, {}, {})([qkv]).values())),
                                  ref.qkv_fixed(qkv, 1, None, type_id=1))


# ---------------------------------------------------------------- FP16 LayerNorm kernels' arithmetic (#13)


def test_fp16_skip_layernorm_384_follows_nvidia_kernel():
    # 8 tokens through NVIDIA's FP16 SkipLayerNorm (hidden 384, the kernel without vectors) on an H200: half sums,
    # half statistics (tests/fixtures/README.md). Bit for bit.
    d = np.load(FIXTURES / "layernorm_fp16.npz")
    x, skip, kernel = (d[k].astype(np.float32) for k in ("skip_x", "skip_skip", "skip_kernel"))
    out = ref.skip_ln(x, skip, d["skip_gamma"], d["skip_beta"], d["skip_bias"], type_id=1)
    np.testing.assert_array_equal(out, kernel)
    # statistics in float32 (the reference before) match under 70 % of them
    total = ref.round_fp16(x + skip) + ref.round_fp16(d["skip_bias"])
    plain = ref.round_fp16(ref.layer_norm(total, ref.round_fp16(d["skip_gamma"]), ref.round_fp16(d["skip_beta"])))
    assert float((plain == kernel).mean()) < 0.7


def test_fp16_emb_layernorm_follows_nvidia_kernel():
    # 8 tokens through NVIDIA's EmbLayerNorm with output_fp16=1 (hidden 384): the three rows added in half, then
    # the half LayerNorm with gamma and beta in half. The fixture holds each token's three rows: tables of 8 rows
    # looked up by position reproduce the kernel's input.
    d = np.load(FIXTURES / "layernorm_fp16.npz")
    ids = np.arange(8, dtype=np.int32)[:, None]  # [S, B=1]
    mask = np.ones((8, 1), np.int32)
    out, _ = ref.emb_ln_fixed(ids, ids, mask, d["emb_word"], d["emb_tok"], d["emb_pos"], d["emb_gamma"],
                              d["emb_beta"], output_fp16=True)
    np.testing.assert_array_equal(out[:, 0, :, 0, 0], d["emb_kernel"].astype(np.float32))


def test_half_layernorm_only_where_nvidia_has_the_generic_kernel():
    # Hidden 768 and 1024 run the vectorized kernel (not modelled: float32 statistics); FP32 stays float32.
    rng = np.random.default_rng(5)
    for E, t in ((768, 1), (1024, 1), (384, 0)):
        x, s = (rng.standard_normal((3, E)).astype(np.float32) for _ in range(2))
        g, b = np.ones(E, np.float32), np.zeros(E, np.float32)
        expected = ref.at_precision(ref.layer_norm(ref.at_precision(x, t) + ref.at_precision(s, t),
                                                   ref.at_precision(g, t), ref.at_precision(b, t),
                                                   ref.skip_ln_eps(E, t)), t)
        np.testing.assert_array_equal(ref.skip_ln(x, s, g, b, type_id=t), expected)
