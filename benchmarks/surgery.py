"""Surgery on a tf2onnx BERT next to ONNX Runtime's transformer optimizer on the same model.

Prints wall time, peak resident memory (each run in a fresh process) and the fusion counts of both.
Targets (shared/DESIGN.md) for BERT-Large: under 30 s, under 2.5x the model's bytes, faster than the optimizer.

    python benchmarks/surgery.py [--model large] [--seq 384] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SURGERY = r"""
import json, resource, sys, time
from collections import Counter
from bertrt.surgery import pipeline
t = time.perf_counter()
result = pipeline.run_file(sys.argv[1], target="trt10", precision="fp32")
result.save(sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - t, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "counts": pipeline.plugin_totals(result.counts), "complete": result.complete}))
"""

ORT_OPTIMIZER = r"""
import json, resource, sys, time
from collections import Counter
import onnx
from onnxruntime.transformers.optimizer import optimize_model
t = time.perf_counter()
opt = optimize_model(sys.argv[1], model_type="bert", num_heads=int(sys.argv[3]), hidden_size=int(sys.argv[4]),
                     opt_level=0)
opt.save_model_to_file(sys.argv[2])
ops = Counter(n.op_type for n in opt.model.graph.node)
print(json.dumps({"seconds": time.perf_counter() - t, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "counts": {"EmbLayerNorm": ops["EmbedLayerNormalization"], "QKVToContext": ops["Attention"]
                             + ops["MultiHeadAttention"], "SkipLayerNorm": ops["SkipLayerNormalization"]}}))
"""


def _child(code, *args):
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit("a benchmark run failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="large", choices=["tiny", "minilm", "base", "large"])
    ap.add_argument("--seq", type=int, default=384)
    ap.add_argument("--work", default=None, help="folder for the checkpoint and models [default: a temporary one]")
    args = ap.parse_args()

    from bertrt.convert import zoo
    from zoo_model import zoo_model

    work = Path(args.work or tempfile.mkdtemp(prefix="bertrt-bench-"))
    model = zoo_model(work, args.model, args.seq)
    cfg = zoo.bert_config(args.model)
    size = model.stat().st_size
    print(f"surgery on {model} ...", file=sys.stderr)
    ours = _child(SURGERY, model, work / "fused.onnx")
    print("ONNX Runtime's transformer optimizer ...", file=sys.stderr)
    theirs = _child(ORT_OPTIMIZER, model, work / "ort-optimized.onnx", cfg.num_attention_heads, cfg.hidden_size)

    L = cfg.num_hidden_layers
    print(f"\nBERT {args.model} ({L} layers, hidden {cfg.hidden_size}), seq {args.seq}, model {size / 2**20:.0f} MiB")
    print(f"{'':<28} {'seconds':>8} {'peak GiB':>9} {'x model':>8} {'EmbLN':>6} {'QKV':>5} {'SkipLN':>7}")
    for name, r in (("bertrt surgery", ours), ("onnxruntime optimizer", theirs)):
        peak = r["peak_kib"] * 1024
        c = r["counts"]
        print(f"{name:<28} {r['seconds']:>8.1f} {peak / 2**30:>9.2f} {peak / size:>8.2f} {c['EmbLayerNorm']:>6} "
              f"{c['QKVToContext']:>5} {c['SkipLayerNorm']:>7}")
    print(f"{'expected fusions':<28} {'':>8} {'':>9} {'':>8} {1:>6} {L:>5} {2 * L:>7}")
    peak_x = ours["peak_kib"] * 1024 / size
    print(f"\ntargets: under 30 s: {'PASS' if ours['seconds'] < 30 else 'FAIL'} ({ours['seconds']:.1f} s); "
          f"under 2.5x the model's bytes: {'PASS' if peak_x < 2.5 else 'FAIL'} ({peak_x:.2f}x); "
          f"faster than the optimizer: {'PASS' if ours['seconds'] < theirs['seconds'] else 'FAIL'}")


if __name__ == "__main__":
    main()
