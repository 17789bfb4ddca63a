"""CPU side of the per-plugin check's attention kernels: NVIDIA's QKVToContext outputs (the attention.npz that
`benchmarks/kernels_h200.py --plugins` saves on the GPU machine) against bertrt's CPU reference on the same inputs
(`bertrt.plugins.kernels.check.cases()`, rebuilt here from its seed), element by element:

* FP16: the share of outputs bit for bit equal, and the largest difference;
* INT8: the outputs that differ, in steps, and whether each is explained by one probability rounding the other
  way: the kernel's softmax is float32 like the reference's but not bit for bit, so a probability within
  --near steps of a rounding boundary (of dq_probs) may fall either side; that moves the context by |v| x dq_probs
  / output scale steps, which exceeds one step where the values' range is larger than the context's.

    python benchmarks/kernels_attention.py DEVICE_OUT/attention.npz [--near 1e-4]
"""

from __future__ import annotations

import argparse

import numpy as np


def int8_flips(case, kernel_q, ref_q, near):
    """(outputs that differ, those explained by a probability flip, the largest difference in steps) for a
    fixed-layout INT8 case."""
    from onnx import helper

    from bertrt.plugins import reference as R
    from bertrt.plugins.kernels.check import QKV_AMAX

    S, B = case.ref_inputs[0].shape[:2]
    N = next(int(helper.get_attribute_value(a)) for a in case.node.attribute if a.name == "num_heads")
    x = R.fake_quant(case.ref_inputs[0].reshape(S, B, -1), QKV_AMAX / 127)
    q, k, v = R.split_qkv(x, N)
    H = q.shape[-1]
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("attention", help="attention.npz from the GPU machine")
    ap.add_argument("--near", type=float, default=1e-4, help="probability distance to a rounding boundary, in steps")
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
