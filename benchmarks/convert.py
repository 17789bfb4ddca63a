"""Wall time and peak memory of `bertrt convert tf` on zoo checkpoints (BERT-Base and BERT-Large).

Each conversion runs in a fresh process so its peak resident memory (ru_maxrss) is its own.
Target (shared/DESIGN.md): BERT-Large within 8 GiB peak.

    python benchmarks/convert.py [--models base,large] [--seq 384] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_GIB = {"large": 8.0}

CHILD = r"""
import json, resource, sys, time
from bertrt.convert.tf_convert import convert_checkpoint
t = time.perf_counter()
r = convert_checkpoint(sys.argv[1], sys.argv[2], seq=int(sys.argv[3]), log=lambda m: None)
print(json.dumps({"seconds": time.perf_counter() - t, "max_abs_diff": r.max_abs_diff,
                  "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="base,large")
    ap.add_argument("--seq", type=int, default=384)
    ap.add_argument("--work", default=None, help="folder for checkpoints and models [default: a temporary one]")
    args = ap.parse_args()

    from bertrt.convert import zoo

    work = Path(args.work or tempfile.mkdtemp(prefix="bertrt-bench-"))
    rows = []
    for name in args.models.split(","):
        ckpt = work / name
        if not (ckpt / "bert_config.json").exists():
            print(f"making the {name} checkpoint in {ckpt} ...", file=sys.stderr)
            zoo.make(name, ckpt)
        out = work / f"{name}-{args.seq}.onnx"
        print(f"converting {name} ...", file=sys.stderr)
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CHILD, str(ckpt), str(out), str(args.seq)],
                              capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            raise SystemExit(f"conversion of {name} failed")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["wall_s"] = time.perf_counter() - t
        peak_gib = res["peak_kib"] / 2**20
        target = TARGET_GIB.get(name)
        verdict = "" if target is None else ("PASS" if peak_gib <= target else "FAIL")
        rows.append((name, args.seq, res["wall_s"], res["seconds"], peak_gib,
                     f"{target:.1f}" if target else "-", verdict, res["max_abs_diff"],
                     out.stat().st_size / 2**20))

    print(f"\n{'model':<7} {'seq':>4} {'wall s':>8} {'convert s':>10} {'peak GiB':>9} {'target':>7} {'':>5} "
          f"{'max|TF-ORT|':>12} {'onnx MiB':>9}")
    for r in rows:
        print(f"{r[0]:<7} {r[1]:>4} {r[2]:>8.1f} {r[3]:>10.1f} {r[4]:>9.2f} {r[5]:>7} {r[6]:>5} {r[7]:>12.3g} "
              f"{r[8]:>9.1f}")


if __name__ == "__main__":
    main()
