"""INT8 accuracy on real weights and real text: MiniLM (all-MiniLM-L6-v2 encoder) at seq 384, FP32 vs INT8.

The canonical model is calibrated on pydoc_qa_calib.json (ONNX Runtime), fused by surgery at INT8 for trt10
(simulated as TensorRT 10 implicit INT8 runs it: Q/DQ on every weight GEMM whose input and output have a
range, INT8 plugins reading the same ranges) and for trt11 (the FP16 strongly typed graph with Q/DQ on its
GEMMs), each run on the CPU reference against the FP32 original on ONNX Runtime over pydoc_qa_eval.json.
Mixed-precision rows leave groups of GEMMs in float, the way the flow does it (`bertrt calibrate ranges
--float-gemms` for trt10: the ranges that would let TensorRT run them in INT8 are left out; `bertrt calibrate
qdq --float-gemms` for trt11: no Q/DQ on them). Smoothed rows start from the model `bertrt calibrate smooth`
makes (outlier channels of the GEMM inputs moved into the weights; the GEMMs left in float are not smoothed),
fused and calibrated in place of the original, and still scored against the original. Also FP16 rows (the
fused graphs without INT8): the floor.

    python benchmarks/int8_accuracy.py [--work DIR] [--calib-num 100] [--eval-num 145]
        [--methods percentile,minmax,entropy] [--mixed minmax:ffn1+ffn2,...] [--smoothed minmax,minmax:ffn2,...]

GEMM groups (calibrate/mixed.py): qkv (QKV projection), attn_out (attention output dense), ffn1 (intermediate
dense), ffn2 (output dense, after GELU), head (the QA output).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DATA = Path(__file__).parents[1] / "calibrate" / "data"
METHODS = {  # name -> stats.calibrate keyword arguments (GELU clamp 10 throughout, NVIDIA's recipe)
    "percentile": dict(method="percentile", percentile=99.99),
    "percentile-99.999": dict(method="percentile", percentile=99.999),
    "minmax": dict(method="minmax"),
    "entropy": dict(method="entropy"),
}
DEFAULT_MIXED = "minmax:ffn1+ffn2"
DEFAULT_SMOOTHED = "minmax,entropy,percentile,minmax:ffn2"


def _prepare(work: Path, seq: int) -> Path:
    from zoo_model import zoo_model

    return zoo_model(work, "minilm", seq)


def _fuse(model: Path, target: str, precision: str = "int8"):
    from bertrt.surgery import pipeline

    result = pipeline.run_file(model, target=target, precision=precision)
    if not result.complete:
        raise SystemExit(f"surgery ({target}) left the encoder partly fused")
    notes = [n for r in result.reports if r.name == "precision" for n in r.notes]
    print(f"surgery {target} {precision}: " + "; ".join(notes), file=sys.stderr)
    return result.model, result.name_map()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=None, help="folder for the checkpoint and model [default: a temporary one]")
    ap.add_argument("--seq", type=int, default=384)
    ap.add_argument("--calib-num", type=int, default=100)
    ap.add_argument("--eval-num", type=int, default=145)
    ap.add_argument("--methods", default="percentile,minmax,entropy")
    ap.add_argument("--targets", default="trt10,trt11")
    ap.add_argument("--mixed", default=DEFAULT_MIXED,
                    help="comma-separated mixed-precision rows, each METHOD:GROUP+GROUP (GEMM groups left in float); "
                         "empty for none")
    ap.add_argument("--smoothed", default=DEFAULT_SMOOTHED,
                    help="comma-separated rows on the smoothed model (bertrt calibrate smooth), each "
                         "METHOD[:GROUP+...] (GEMM groups left in float, and not smoothed); empty for none")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()

    from bertrt.calibrate.data_source import squad_feeds
    from bertrt.calibrate.evaluate import eval_samples, evaluate, implicit_int8_model, table
    from bertrt.calibrate.mixed import float_gemm_drops, float_gemms
    from bertrt.calibrate.qdq import insert_qdq
    from bertrt.name_map import apply_name_map
    from bertrt.calibrate.stats import calibrate
    from bertrt.convert.zoo import vocab_path
    from bertrt.onnx_io import load_model, save_model
    from bertrt.progress import for_stream

    progress = for_stream(sys.stderr)
    work = Path(args.work or tempfile.mkdtemp(prefix="bertrt-int8-"))
    model = _prepare(work, args.seq)
    targets = args.targets.split(",")
    feeds = squad_feeds(DATA / "pydoc_qa_calib.json", vocab_path(), args.seq, args.calib_num)
    samples = eval_samples(DATA / "pydoc_qa_eval.json", vocab_path(), args.seq, args.eval_num)
    print(f"minilm seq {args.seq}: {len(feeds)} calibration features, {len(samples)} evaluation features",
          file=sys.stderr)

    rows = []

    def run(method, target, candidate, amax):
        start = time.perf_counter()
        e = evaluate(model, candidate, samples, amax=amax, batch=args.batch, label=f"{method} {target}")
        rows.append((method, target, e))
        print(f"  {method} {target}: cos {e.cos_start:.4f}/{e.cos_end:.4f} agree {e.agree_start:.1%}/"
              f"{e.agree_end:.1%} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)

    variants = {}  # float groups smoothed around (None: the model as converted) -> (model path, fused graphs)

    def variant(smoothed):
        key = None if smoothed is None else tuple(smoothed)
        if key not in variants:
            path = model
            if key is not None:
                from bertrt.calibrate import smooth

                canonical = load_model(model)
                float_nodes = float_gemms(canonical, key) if key else []
                plan = smooth.plan(canonical, feeds, skip_gemms=float_nodes)
                path = work / f"{model.stem}.smooth{'-' + '-'.join(key) if key else ''}.onnx"
                save_model(smooth.apply(canonical, plan), path)
                alphas = [p.alpha for p in plan if p.alpha is not None]
                print(f"smoothed {len(alphas)} of {len(plan)} GEMM inputs (alpha {min(alphas)}..{max(alphas)}) "
                      f"-> {path.name}", file=sys.stderr)
            variants[key] = (path, {t: _fuse(path, t) for t in targets})
        return variants[key]

    cache = {}

    def ranges_of(name, smoothed=None):
        key = (name, None if smoothed is None else tuple(smoothed))
        if key not in cache:
            cache[key] = calibrate(variant(smoothed)[0], feeds, **METHODS[name], progress=progress).amax
        return cache[key]

    def int8_rows(label, name, float_groups=(), smoothed=None):
        path, fused = variant(smoothed)
        amax = ranges_of(name, smoothed)
        canonical = load_model(path, load_external_data=False)
        for t in targets:
            graph, names = fused[t]
            if t == "trt11":
                ranges = apply_name_map(amax, names, drop_unmapped=True)
                q, _ = insert_qdq(graph, ranges, skip_nodes=float_gemms(graph, float_groups))
                run(label, "trt11 Q/DQ", q, None)
            else:
                drops = float_gemm_drops(canonical, float_groups) if float_groups else set()
                kept = {k: v for k, v in amax.items() if k not in drops}
                ranges = apply_name_map(kept, names, drop_unmapped=True)
                q, _ = implicit_int8_model(graph, ranges)
                run(label, f"{t} implicit", q, ranges)

    for t in targets:
        run("fp16 (no INT8)", t, _fuse(model, t, "fp16")[0], None)
    for name in filter(None, args.methods.split(",")):
        int8_rows(name, name)
    for spec in filter(None, args.mixed.split(",")):
        name, groups = spec.split(":")
        int8_rows(f"{name}, float {groups}", name, groups.split("+"))
    for spec in filter(None, args.smoothed.split(",")):
        name, _, groups = spec.partition(":")
        groups = [g for g in groups.split("+") if g]
        int8_rows(f"smoothed, {name}" + (f", float {'+'.join(groups)}" if groups else ""), name, groups, groups)

    print(f"\nMiniLM (all-MiniLM-L6-v2 encoder, random QA head), seq {args.seq}; calibrated on {len(feeds)} "
          f"pydoc_qa_calib features, evaluated on {len(samples)} pydoc_qa_eval features (first of each question)")
    print(table(rows))


if __name__ == "__main__":
    main()
