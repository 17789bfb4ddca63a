"""Reference runner speed: a BERT-sized fused graph on bertrt's CPU reference vs ONNX Runtime on the
equivalent unfused graph (same random weights, same inputs). Prints a table; the bar is within 3x.

    python benchmarks/reference.py [--size base|large|tiny] [--seq 384] [--batch 1] [--runs 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort

from bertrt.plugins.handbuilt import fused_bert, random_bert_weights, unfused_bert
from bertrt.plugins.runner import ReferenceRunner

SIZES = {"tiny": (2, 128, 2, 512), "base": (12, 768, 12, 3072), "large": (24, 1024, 16, 4096)}


def timed(fn, runs):
    fn()  # warm-up: sessions are made on first use
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, float(np.median(times)), float(np.min(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=list(SIZES), default="base")
    ap.add_argument("--seq", type=int, default=384)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    layers, hidden, heads, inter = SIZES[args.size]
    weights = random_bert_weights(layers, hidden, heads, inter, seed=0)
    unfused, fused = unfused_bert(weights, layers, heads), fused_bert(weights, layers, heads)
    rng = np.random.default_rng(0)
    B, S = args.batch, args.seq
    feeds = {"input_ids": rng.integers(0, 30522, (B, S)).astype(np.int32),
             "segment_ids": rng.integers(0, 2, (B, S)).astype(np.int32),
             "input_mask": (np.arange(S)[None] < rng.integers(S // 2, S + 1, (B, 1))).astype(np.int32)}

    # The reference goes first: an ONNX Runtime session's thread pool spins for a while after each run,
    # and on 2 cores those spinning threads would slow whatever runs next.
    runner = ReferenceRunner(fused)
    ref_out, ref_med, ref_min = timed(lambda: runner.run(feeds)["logits"], args.runs)
    del runner
    sess = ort.InferenceSession(unfused.SerializeToString(), providers=["CPUExecutionProvider"])
    ort_out, ort_med, ort_min = timed(lambda: sess.run(None, feeds)[0], args.runs)

    print(f"BERT-{args.size} ({layers} layers, hidden {hidden}), batch {B}, seq {S}, median of {args.runs} runs")
    print(f"{'backend':<34} {'median ms':>10} {'min ms':>10}")
    print(f"{'ONNX Runtime, unfused graph':<34} {ort_med * 1e3:>10.1f} {ort_min * 1e3:>10.1f}")
    print(f"{'bertrt reference, fused graph':<34} {ref_med * 1e3:>10.1f} {ref_min * 1e3:>10.1f}")
    print(f"ratio reference / ONNX Runtime: {ref_med / ort_med:.2f}x (bar: 3x)")
    print(f"max |logits difference|: {np.abs(ort_out - ref_out).max():.2e}")


if __name__ == "__main__":
    main()
