"""Calibration time and peak memory on BERT-Base (or Large) at seq 384: 100 pydoc QA samples, per method.

Method "smooth" is `bertrt calibrate smooth` (channel statistics, the choice of alpha, the smoothed model);
its "tensors" are the GEMM inputs it smoothed.

The base checkpoint and its canonical ONNX are made once and kept in the work folder. Each
calibration runs in a fresh process so its peak resident memory (ru_maxrss) is its own.

    python benchmarks/calibrate.py [--work DIR] [--methods percentile,minmax,entropy,smooth] [--num 100]
        [--seq 384] [--model base|large]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CALIB_JSON = Path(__file__).parents[1] / "calibrate" / "data" / "pydoc_qa_calib.json"

CHILD = r"""
import json, resource, sys, time
from bertrt.calibrate.data_source import squad_feeds
from bertrt.calibrate.stats import calibrate
from bertrt.convert.zoo import vocab_path
model, data, seq, num, method = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
t = time.perf_counter()
feeds = squad_feeds(data, vocab_path(), seq, num)
t_feat = time.perf_counter() - t
t = time.perf_counter()
if method == "smooth":
    import onnx
    from bertrt.calibrate import smooth
    m = onnx.load(model)
    plan = smooth.plan(m, feeds, progress=False)
    smooth.apply(m, plan)
    samples, tensors = len(feeds), sum(p.alpha is not None for p in plan)
else:
    r = calibrate(model, feeds, method=method, progress=False)
    samples, tensors = r.samples, len(r.amax)
print(json.dumps({"features_s": t_feat, "calibrate_s": time.perf_counter() - t, "samples": samples,
                  "tensors": tensors, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=None, help="folder for the checkpoint and model [default: a temporary one]")
    ap.add_argument("--methods", default="percentile,smooth")
    ap.add_argument("--num", type=int, default=100)
    ap.add_argument("--seq", type=int, default=384)
    ap.add_argument("--model", default="base", choices=["base", "large"], help="zoo model [default: base]")
    args = ap.parse_args()

    from zoo_model import zoo_model

    work = Path(args.work or tempfile.mkdtemp(prefix="bertrt-bench-"))
    model = zoo_model(work, args.model, args.seq)

    rows = []
    for method in args.methods.split(","):
        print(f"calibrating ({method}, {args.num} samples) ...", file=sys.stderr)
        proc = subprocess.run([sys.executable, "-c", CHILD, str(model), str(CALIB_JSON), str(args.seq),
                               str(args.num), method], capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            raise SystemExit(f"calibration with {method} failed")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append((method, res["samples"], res["tensors"], res["features_s"], res["calibrate_s"],
                     res["calibrate_s"] / res["samples"], res["peak_kib"] / 2**20))

    print(f"\nBERT-{args.model.capitalize()}, seq {args.seq}, ONNX Runtime CPU, batch 1")
    print(f"{'method':<11} {'samples':>7} {'tensors':>7} {'features s':>10} {'calibrate s':>11} "
          f"{'s/sample':>8} {'peak GiB':>8}")
    for m, n, t, f, c, per, peak in rows:
        print(f"{m:<11} {n:>7} {t:>7} {f:>10.1f} {c:>11.1f} {per:>8.2f} {peak:>8.2f}")


if __name__ == "__main__":
    main()
