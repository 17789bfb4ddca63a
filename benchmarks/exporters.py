"""Fusion and accuracy of surgery on BERT-Base-shaped models from every exporter, on every target.

For each source (tf2onnx from the zoo's base checkpoint; PyTorch legacy, PyTorch dynamo and Hugging Face
BertForQuestionAnswering with eager and SDPA attention, exported by tests/fixtures/make_fixtures.py at
BERT-Base size) and each target x precision: the fusion counts, whether the encoder is fully fused, and the
largest |original on ONNX Runtime - fused on the CPU reference| on the logits. With --large, BERT-Large from
tf2onnx too. The PyTorch exports need torch, transformers and onnxscript (not bertrt dependencies):

    pip install torch==2.13.0 transformers onnxscript
    python benchmarks/exporters.py [--work DIR] [--large]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPORTS = {"pytorch legacy": "torch_legacy_bert", "pytorch dynamo": "torch_dynamo_qa",
           "hf eager": "hf_qa_eager", "hf sdpa": "hf_qa_sdpa"}
TARGETS = ("trt10", "trt10-legacy", "trt11")
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=None, help="folder for models [default: a temporary one]")
    ap.add_argument("--large", action="store_true", help="also BERT-Large from tf2onnx")
    ap.add_argument("--seq", type=int, default=128, help="sequence length for the comparison")
    args = ap.parse_args()

    from bertrt.convert.onnx_intake import convert_onnx
    from zoo_model import zoo_model

    work = Path(args.work or tempfile.mkdtemp(prefix="bertrt-exporters-"))
    sources = {f"tf2onnx ({name})": zoo_model(work, name, args.seq) for name in ["base"] + ["large"] * args.large}
    raw = work / "exports"
    if not all((raw / f"{f}.onnx").exists() for f in EXPORTS.values()):
        print("exporting BERT-Base-shaped models with torch ...", file=sys.stderr)
        proc = subprocess.run([sys.executable, str(ROOT / "tests/fixtures/make_fixtures.py"), "--size", "base",
                               "--out", str(raw)])
        if proc.returncode:
            print("some PyTorch exports failed (torch, transformers and onnxscript are needed); "
                  "continuing with what was made", file=sys.stderr)
    for label, f in EXPORTS.items():
        if (raw / f"{f}.onnx").exists():
            canonical = work / f"{f}.canonical.onnx"
            if not canonical.exists():
                convert_onnx(raw / f"{f}.onnx", canonical)
            sources[label] = canonical

    rows = [_measure(label, path, target, precision, args.seq, work)
            for label, path in sources.items() for target in TARGETS for precision in ("fp32", "fp16")]
    print(f"\n{'source':<18} {'target':<13} {'prec':<5} {'EmbLN':>5} {'QKV':>4} {'SkipLN':>6} {'left':>5} "
          f"{'max |diff|':>11} {'tol':>7}  verdict")
    for r in rows:
        print(f"{r[0]:<18} {r[1]:<13} {r[2]:<5} {r[3]:>5} {r[4]:>4} {r[5]:>6} {r[6]:>5} {r[7]:>11.3g} "
              f"{r[8]:>7.0e}  {r[9]}")
    failed = [r for r in rows if r[9] != "PASS"]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} PASS")
    return 1 if failed else 0


def _measure(label, path, target, precision, seq, work):
    from bertrt.run.compare import compare_models
    from bertrt.surgery import pipeline

    print(f"{label} {target} {precision} ...", file=sys.stderr)
    result = pipeline.run_file(path, target=target, precision=precision)
    fused = work / "fused.onnx"
    result.save(fused)
    tot = pipeline.plugin_totals(result.counts)
    left = sum(result.leftover.values())
    fixed = "tf2onnx" in label
    cmp = compare_models(path, fused, batch=2, seq=None if fixed else seq, atol=TOLERANCE[precision], rtol=1e10)
    diff = cmp.outputs[0].max_abs
    ok = result.complete and not result.problems and diff <= TOLERANCE[precision]
    return (label, target, precision, tot["EmbLayerNorm"], tot["QKVToContext"], tot["SkipLayerNorm"], left, diff,
            TOLERANCE[precision], "PASS" if ok else "FAIL")


if __name__ == "__main__":
    sys.exit(main())
