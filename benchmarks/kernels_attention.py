"""CPU side of the per-plugin check's attention kernels: NVIDIA's QKVToContext outputs (the attention.npz that
`benchmarks/kernels_h200.py --plugins` saves on the GPU machine) against bertrt's CPU reference on the same inputs
(`bertrt.plugins.kernels.check.cases()`, rebuilt here from its seed), element by element:

* FP16: the share of outputs bit for bit equal, and the largest difference;
* INT8: the outputs that differ, in steps, and whether each is explained by one probability rounding the other
  way: the kernel's softmax is float32 like the reference's but not bit for bit, so a probability within
  --near steps of a rounding boundary (of dq_probs) may fall either side; that moves the context by |v| x dq_probs
  / output scale steps, which exceeds one step where the values' range is larger than the context's.

    python benchmarks/kernels_attention.py DEVICE_OUT/attention.npz [--near 1e-4]

--float64-softmax (no GPU output needed) asks the same of two CPU computations: the reference's INT8 fixed-length
attention against the same attention with Q.K^T, softmax and P.V in float64 (P rounded once to float32 before it
is quantized): how many outputs two valid float32 softmaxes put on different steps, and how far apart.

    python benchmarks/kernels_attention.py --float64-softmax
"""

from __future__ import annotations

import argparse

import numpy as np


def int8_flips(case, kernel_q, ref_q, near):
    """(outputs that differ, those explained by a probability flip, the largest difference in steps) for a
    fixed-layout INT8 case."""
    from bertrt.plugins import reference as R

    q, k, v, N, H = _qkv(case)
    S, B = q.shape[:2]
    kq, rq = kernel_q.reshape(S, B, N, H), ref_q.reshape(S, B, N, H)
    diff = kq - rq
    dq, s_ctx = R.DEFAULT_DQ_PROBS, case.out_scale
    explained = 0
    for s, b, n, h in np.argwhere(diff != 0):
        L = int(case.lengths[b])
        lg = k[:L, b, n] @ q[s, b, n] * np.float32(1 / np.sqrt(H))
        p = np.exp(lg - lg.max())
        p /= p.sum()
        frac = p / dq - np.floor(p / dq)
        j = np.abs(frac - 0.5) < near  # probabilities at a rounding boundary
        bound = 1 + np.abs(v[:L, b, n, h][j]).sum() * dq / s_ctx  # output rounding + each such flip
        explained += bool(j.any()) and abs(diff[s, b, n, h]) <= np.ceil(bound)
    return int((diff != 0).sum()), explained, float(np.abs(diff).max())


def float64_softmax(case, ref_q):
    """(outputs that differ, the largest difference in steps) between the reference's output grid values and the
    same attention in float64 (see the module text), for a fixed-layout INT8 case."""
    from bertrt.plugins import reference as R

    q, k, v, N, H = _qkv(case)
    S, B = q.shape[:2]
    out = np.zeros((S, B, N, H))
    for b in range(B):
        L = int(case.lengths[b])
        qn, kn, vn = (t[:, b, :, :].transpose(1, 0, 2).astype(np.float64) for t in (q, k, v))
        logits = qn @ kn[:, :L].transpose(0, 2, 1) / np.sqrt(H)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p = R.fake_quant((p / p.sum(-1, keepdims=True)).astype(np.float32), R.DEFAULT_DQ_PROBS)
        out[:, b] = (p.astype(np.float64) @ vn[:, :L]).transpose(1, 0, 2)
    wide = np.rint(R.fake_quant(out.astype(np.float32), case.out_scale, lo=R.INT8_OUT_MIN).reshape(ref_q.shape)
                   / np.float32(case.out_scale))
    return int((wide != ref_q).sum()), float(np.abs(wide - ref_q).max())


def _qkv(case):
    from onnx import helper

    from bertrt.plugins import reference as R
    from bertrt.plugins.kernels.check import QKV_AMAX

    S, B = case.ref_inputs[0].shape[:2]
    N = next(int(helper.get_attribute_value(a)) for a in case.node.attribute if a.name == "num_heads")
    q, k, v = R.split_qkv(R.fake_quant(case.ref_inputs[0].reshape(S, B, -1), QKV_AMAX / 127), N)
    return q, k, v, N, q.shape[-1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("attention", nargs="?", help="attention.npz from the GPU machine")
    ap.add_argument("--float64-softmax", action="store_true", help="the reference against itself in float64 (above)")
    ap.add_argument("--near", type=float, default=1e-4, help="probability distance to a rounding boundary, in steps")
    args = ap.parse_args()
    if args.float64_softmax:
        return print_float64_softmax()
    if not args.attention:
        ap.error("give attention.npz, or --float64-softmax")
    from bertrt.plugins.execute import PluginExecutor
    from bertrt.plugins.kernels.check import cases

    dump = np.load(args.attention)
    print("| case | precision | layout | S | kernel | elements | bit exact | max abs | INT8: differing / explained by "
          "a probability flip / max steps |")
    print("|---|---|---|---|---|---|---|---|---|")
    for index, case in enumerate(cases()):
        key = f"case{index}"
        if key not in dump.files or case.precision == "fp32":  # FP32 outputs are saved as FP16 there
            continue
        ref = PluginExecutor(case.node, {}, case.amax)(case.ref_inputs)[case.node.output[0]]
        got = dump[key]
        if case.out_scale:
            ref_q = np.rint(ref / np.float32(case.out_scale))
            kq = got.astype(np.float32).reshape(ref_q.shape)
            exact, mabs = float((kq == ref_q).mean()), float(np.abs(kq - ref_q).max() * case.out_scale)
            extra = ""
            if case.layout == "fixed":
                n, ok, worst = int8_flips(case, kq, ref_q, args.near)
                extra = f"{n} / {ok} / {worst:.0f}"
            else:
                extra = f"{int((kq != ref_q).sum())} / - / {np.abs(kq - ref_q).max():.0f}"
        else:
            k = got.astype(np.float32).reshape(ref.shape)
            exact, mabs, extra = float((k == ref).mean()), float(np.abs(k - ref).max()), ""
        print(f"| {case.label} | {case.precision} | {case.layout} | {case.seq} | {case.what} | {ref.size} | "
              f"{exact:.2%} | {mabs:.3e} | {extra} |")


def print_float64_softmax():
    from bertrt.plugins.execute import PluginExecutor
    from bertrt.plugins.kernels.check import cases

    print("| case | S | kernel | elements | outputs on other steps (float32 reference vs float64) | max steps |")
    print("|---|---|---|---|---|---|")
    for case in cases():
        if case.precision != "int8" or case.layout != "fixed" or case.label.startswith("SkipLayerNorm"):
            continue
        ref = PluginExecutor(case.node, {}, case.amax)(case.ref_inputs)[case.node.output[0]]
        n, worst = float64_softmax(case, np.rint(ref / np.float32(case.out_scale)))
        print(f"| {case.label} | {case.seq} | {case.what} | {ref.size} | {n} | {worst:.0f} |")


if __name__ == "__main__":
    main()
