"""CPU side after benchmarks/kernels_h200.py --pack: SQuAD EM/F1 of the GPU logits (<model>.kernels.npy) next to
bertrt's CPU reference (<model>.ref.npy, from kernels_prep.py) on the same features, and the whole-graph error
against ONNX Runtime on the canonical (unfused) model (<model>-ort.npy, the first features; real tokens only).
Where the prep has no CPU logits (`kernels_prep.py --no-ref`, as for the full dev set), the CPU side is the
accuracy table's predictions of the same row (WORK/<model>/predictions/<row>[.full].json, squad_accuracy.py).

    python benchmarks/kernels_score.py --prep build/device/prep --gpu DIR [--limit 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import squad_accuracy as sa  # noqa: E402
from kernels_pack import load_parts, model_of, saved_stems  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prep", type=Path, required=True)
    ap.add_argument("--gpu", type=Path, nargs="+", required=True, help="folders holding <model>.kernels.npy")
    ap.add_argument("--work", type=Path, default=Path("build/squad-accuracy"))
    ap.add_argument("--limit", type=int, default=1000, help="first N dev questions; 0: the full dev set")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from bertrt.run.features import examples_features
    from bertrt.run.packing import NO_LOGIT
    from bertrt.run.squad_metric import evaluate
    from bertrt.run.squad_predict import answers
    from bertrt.run.tokenization import load_tokenizer

    args.limit = args.limit or None
    examples, _ = sa.dev_examples(args.limit, args.work)
    rows = []
    for folder, stem in [(d, s) for d in args.gpu for s in saved_stems(d, ".kernels")]:
        name = stem[:-len(".kernels")]
        model = model_of(name)
        per_example = examples_features(load_tokenizer(sa.SHARED / "models" / model / "vocab.txt"), examples,
                                        max_seq_length=sa.SEQ)
        gpu = load_parts(folder, stem)
        row = {"model": name, "features": int(gpu.shape[0])}
        ref_path = args.prep / f"{name.removesuffix('.half-gemms')}.ref.npy"  # the same graph's CPU reference
        pad = ~np.load(args.prep / f"{model}-features.npz")["input_mask"][:gpu.shape[0]].astype(bool)
        packed = "-varseqlen" in name

        def logits_of(path_or_array):
            a = np.array(np.load(path_or_array) if isinstance(path_or_array, Path) else path_or_array, np.float32)
            if packed:  # a var-seqlen graph has no padding logits (files written before NO_LOGIT hold 0 there)
                a[pad] = NO_LOGIT
            return a

        gpu = logits_of(gpu)
        for side, logits in (("gpu", gpu), ("cpu_ref", logits_of(ref_path) if ref_path.exists() else None)):
            if logits is None:
                continue
            texts = {k: p.text for k, p in answers(examples, per_example, logits).items()}
            s = evaluate(examples, texts)
            row[f"{side}_em"], row[f"{side}_f1"] = s["exact_match"], s["f1"]
            row[f"{side}_texts"] = texts
        table = args.work / model / "predictions" / f"{name[len(model) + 1:]}.{sa.dev_tag(args.limit, examples)}.json"
        if "cpu_ref_texts" not in row and table.exists():
            row["cpu_ref_texts"] = json.loads(table.read_text())
            s = evaluate(examples, row["cpu_ref_texts"])
            row["cpu_ref_em"], row["cpu_ref_f1"], row["cpu_ref_from"] = s["exact_match"], s["f1"], str(table)
            row["same_answers"] = sum(row["gpu_texts"].get(k) == v for k, v in row["cpu_ref_texts"].items())
        if ref_path.exists():
            ref = logits_of(ref_path)
            row["vs_ref_max_abs"] = float(np.abs(gpu - ref)[~pad].max())
            row["same_answers"] = sum(row["gpu_texts"][k] == v for k, v in row["cpu_ref_texts"].items())
        ort = np.load(args.prep / f"{model}-ort.npy")
        n = ort.shape[0]
        real = ~pad[:n]  # real tokens only: a var-seqlen graph has no logits for padding
        row["ort_features"] = n
        row["vs_ort_max_abs"] = float(np.abs(gpu[:n] - ort)[real].max())
        row["ort_max_abs_logit"] = float(np.abs(ort[real]).max())
        if ref_path.exists():
            row["ref_vs_ort_max_abs"] = float(np.abs(ref[:n] - ort)[real].max())
        for k in ("gpu_texts", "cpu_ref_texts"):
            row.pop(k, None)
        rows.append(row)
        print(json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
