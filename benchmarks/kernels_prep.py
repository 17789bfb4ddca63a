"""CPU side of benchmarks/kernels_h200.py: the fused graphs, the dev features and the CPU numbers the GPU run
is compared with, written to one folder that travels to the GPU machine.

For minilm-squad (FP16, unfused attention: head size 32) and minilm-squad-h64 (FP16 and INT8, fused MHA),
at seq 384 on the first --limit SQuAD v1.1 dev questions, it writes into OUT:

  <model>-<row>.onnx         the trt10 fused graph (the INT8 row: implicit INT8 as `bertrt squad --amax`
                             runs it; its plugin ranges in <model>-<row>.amax.json)
  <model>-features.npz       input_ids / segment_ids / input_mask of every feature
  <model>-<row>.ref.npy      logits of bertrt's CPU reference on those features
  <model>-ort.npy            logits of the canonical (unfused) model on ONNX Runtime, first --ort-features

    python benchmarks/kernels_prep.py --work build/squad-accuracy --out build/device/prep [--limit 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import squad_accuracy as sa  # noqa: E402  (the models and recipes of the accuracy table)

ROWS = {"minilm-squad": ("fused-fp16",), "minilm-squad-h64": ("fused-fp16", "int8-smooth-ffn-trt10")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("build/squad-accuracy"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--ort-features", type=int, default=64)
    ap.add_argument("--no-ref", action="store_true", help="skip the CPU reference logits")
    ap.add_argument("--rows", default=None, help="MODEL:ROW,... of the accuracy table's rows "
                    f"[default: {','.join(f'{m}:{r}' for m, rs in ROWS.items() for r in rs)}]")
    args = ap.parse_args()
    from bertrt.onnx_io import save_model
    from bertrt.run.backends import OrtBackend
    from bertrt.run.features import examples_features, stack_features
    from bertrt.run.squad_predict import feature_logits
    from bertrt.run.tokenization import load_tokenizer

    args.out.mkdir(parents=True, exist_ok=True)
    examples, _ = sa.dev_examples(args.limit, args.work)
    asked = ROWS
    if args.rows:
        asked = {}
        for item in args.rows.split(","):
            name, row = item.split(":")
            asked.setdefault(name, []).append(row)
    for name, rows in asked.items():
        model = sa.Model(name, args.work, 100)
        per_example = examples_features(load_tokenizer(model.vocab), examples, max_seq_length=sa.SEQ)
        flat = [f for feats in per_example for f in feats]
        feeds = stack_features(flat)
        np.savez_compressed(args.out / f"{name}-features.npz", **feeds)
        ort_path = args.out / f"{name}-ort.npy"
        if not ort_path.exists():
            with OrtBackend(model.canonical()) as b:
                np.save(ort_path, feature_logits(b, flat[:args.ort_features], seq=sa.SEQ, batch=8))
        for row in rows:
            backend = model.backend(row)
            save_model(backend.runner.model, args.out / f"{name}-{row}.onnx")
            if backend.runner.amax:
                (args.out / f"{name}-{row}.amax.json").write_text(json.dumps(backend.runner.amax, sort_keys=True))
            ref_path = args.out / f"{name}-{row}.ref.npy"
            if not args.no_ref and not ref_path.exists():
                sa.log(f"{name} {row}: CPU reference on {len(flat)} features")
                np.save(ref_path, feature_logits(backend, flat, seq=sa.SEQ, batch=8, progress=sa.progress()))
            backend.close()
        sa.log(f"{name}: {len(examples)} questions, {len(flat)} features")


if __name__ == "__main__":
    main()
