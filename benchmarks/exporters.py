"""Every export form users have: bertrt's fusions next to ONNX Runtime's transformer optimizer, and the error.

For each form (tests/fixtures/README.md: PyTorch legacy and dynamo, Hugging Face eager and SDPA, opsets 11-18,
keras2onnx's 2-D projections, unnamed nodes, fixed batch 1, odd output names, stale output shapes, and the
tf2onnx export of the zoo's checkpoint): `convert onnx` (or why it refused), `surgery run` on each target at
fp32 and fp16 with the fusion counts, and the largest |original on ONNX Runtime - fused on the CPU reference|
on the logits; var-seqlen for the Hugging Face exports (largest error over the sequences). Beside it,
`onnxruntime.transformers.optimizer` on the same source file, at the file's own opset, with its fusion counts
(EmbedLayerNormalization, Attention/MultiHeadAttention, SkipLayerNormalization).

By default the committed fixtures (small random BERTs) are measured; ``--size base`` exports every form at
BERT-Base size first (needs torch, transformers and onnxscript, which are not bertrt dependencies):

    python benchmarks/exporters.py [--size base] [--work DIR] [--targets trt10,trt10-legacy,trt11]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
# form -> (fixture name, convert options, whether it is a Hugging Face export: var-seqlen is measured on those)
FORMS = {
    "pytorch legacy 17": ("torch_legacy_bert", {}, False),
    "hf eager 17": ("hf_qa_eager", {}, True),
    "hf sdpa 17": ("hf_qa_sdpa", {}, True),
    "hf eager dynamo 18": ("torch_dynamo_qa", {}, True),
    "hf sdpa dynamo 18": ("hf_qa_sdpa_dynamo", {}, True),
    "hf eager 11": ("hf_qa_opset11", {}, True),
    "hf eager 13": ("hf_qa_opset13", {}, True),
    "hf sdpa 14": ("hf_qa_opset14", {}, True),
    "keras2onnx 2-D 11": ("keras_2d_opset11", {"start_logits": "output_1", "end_logits": "output_2"}, False),
    "unnamed nodes 11": ("unnamed_opset11", {}, False),
    "fixed batch 1": ("fixed_batch1", {}, True),
    "odd output names": ("odd_outputs", {"logits": "output_0"}, True),
    "stale shapes 11": ("stale_shapes_opset11", {}, False),
}
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["fixtures", "base"], default="fixtures",
                    help="fixtures: the committed small models; base: every form exported at BERT-Base size")
    ap.add_argument("--work", default=None, help="folder for models [default: a temporary one]")
    ap.add_argument("--targets", default="trt10", help="comma-separated targets [default: trt10]")
    ap.add_argument("--seq", type=int, default=48, help="sequence length of the comparison (free axes)")
    ap.add_argument("--tf2onnx", action="store_true", help="also the tf2onnx export of the zoo's tiny/base model")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bertrt-exporters-"))
    raw = FIXTURES if args.size == "fixtures" else _export_base(work / "exports")
    sources = {form: (raw / f"{name}.onnx", opts, hf) for form, (name, opts, hf) in FORMS.items()}
    if args.tf2onnx:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from zoo_model import zoo_model

        sources["tf2onnx"] = (zoo_model(work, "tiny" if args.size == "fixtures" else "base", 128), {}, False)

    rows = []
    for form, (src, opts, hf) in sources.items():
        if not src.exists():
            rows.append((form, "-", "source missing", {}, "", {}))
            continue
        print(f"{form} ...", file=sys.stderr)
        rows.append(_measure(form, src, opts, hf, args.targets.split(","), args.seq, work))
    _print(rows, args.targets.split(","))
    return 0 if all(r[2] == "fused" for r in rows) else 1


def _export_base(out: Path) -> Path:
    if not all((out / f"{name}.onnx").exists() for name, _, _ in FORMS.values()):
        print("exporting every form at BERT-Base size with torch ...", file=sys.stderr)
        names = ",".join(name for name, _, _ in FORMS.values())
        proc = subprocess.run([sys.executable, str(FIXTURES / "make_fixtures.py"), "--size", "base", "--out", str(out),
                               "--only", names])
        if proc.returncode:
            print("some exports failed (torch, transformers and onnxscript are needed); continuing with what was "
                  "made", file=sys.stderr)
    return out


def _measure(form, src, opts, hf, targets, seq, work):
    import onnx

    from bertrt.convert.onnx_intake import convert_onnx
    from bertrt.errors import BertrtError

    opset = next((o.version for o in onnx.load(src, load_external_data=False).opset_import if o.domain == ""), "?")
    canonical = work / f"{src.stem}.canonical.onnx"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            convert_onnx(src, canonical, **opts)
    except BertrtError as e:
        return form, opset, f"refused: {e.problem}", {}, _ort_optimizer(src, 0, 0), {}
    results, errors, heads = {}, {}, (0, 0)
    for target in targets:
        for precision in ("fp32", "fp16"):
            counts, err = _fuse_and_compare(canonical, target, precision, seq, work, varseqlen=False)
            results[(target, precision)] = counts
            errors[(target, precision)] = err
            heads = counts.pop("heads")
    ort_counts = _ort_optimizer(src, *heads)
    if hf:
        counts, err = _fuse_and_compare(canonical, "trt10", "fp16", seq, work, varseqlen=True)
        results[("trt10", "varseqlen")] = counts
        errors[("trt10", "varseqlen")] = err
    fused = all(c.get("complete") and e is not None and e <= TOLERANCE["fp32" if k[1] == "fp32" else "fp16"]
                for (k, c), e in zip(results.items(), errors.values()))
    return form, opset, "fused" if fused else "FAILED", results, ort_counts, errors


def _fuse_and_compare(canonical, target, precision, seq, work, varseqlen):
    import onnx

    from bertrt.run.compare import compare_models, compare_packed
    from bertrt.surgery import pipeline

    result = pipeline.run_file(canonical, target=target, precision=precision, varseqlen=varseqlen)
    qkv = next((n for n in result.graph.nodes if n.op == "CustomQKVToContextPluginDynamic"), None)
    counts = dict(pipeline.plugin_totals(result.counts), complete=result.complete and not result.problems,
                  heads=(0, 0) if qkv is None else (int(qkv.attrs["num_heads"]), int(qkv.attrs["hidden_size"])))
    fused = work / "fused.onnx"
    result.save(fused)
    dims = [d.dim_value for d in onnx.load(canonical, load_external_data=False).graph.input[0].type.tensor_type.shape.dim]
    batch, fixed_seq = (dims + [0, 0])[:2]
    if varseqlen:
        counts.pop("heads")
        cmp = compare_packed(canonical, fused, batch=batch or 4, seq=None if fixed_seq else seq)
        return counts, max(s.max_abs for s in cmp.sequences)
    cmp = compare_models(canonical, fused, batch=batch or 2, seq=None if fixed_seq else seq, iterations=2,
                         atol=TOLERANCE[precision], rtol=1e10)
    return counts, cmp.outputs[0].max_abs


def _ort_optimizer(src, num_heads, hidden_size) -> dict | str:
    """onnxruntime.transformers.optimizer's BERT fusions on the source as it is, told the model's heads and hidden
    size (as bertrt found them: its own detection finds none on these small models)."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            opt = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                                 opt_level=0)
    except Exception as e:  # the optimizer raises what its fusions raise; the benchmark reports it
        return f"error: {type(e).__name__}"
    ops = Counter(n.op_type for n in opt.model.graph.node)
    return {"EmbLayerNorm": ops["EmbedLayerNormalization"],
            "QKVToContext": ops["Attention"] + ops["MultiHeadAttention"],
            "SkipLayerNorm": ops["SkipLayerNormalization"]}


def _fmt(c) -> str:
    if isinstance(c, str):
        return c
    return f"{c['EmbLayerNorm']}/{c['QKVToContext']}/{c['SkipLayerNorm']}" + ("" if c.get("complete", True) else " !")


def _print(rows, targets):
    keys = [(t, p) for t in targets for p in ("fp32", "fp16")] + [("trt10", "varseqlen")]
    head = f"{'form':<20} {'opset':>5} {'ORT optimizer':>13}  {'bertrt':<8}"
    for t, p in keys:
        head += f" {t + ' ' + p:>24}"
    print("\nfusions EmbLN/QKV/SkipLN (2 layers: 1/2/4 is complete; '!' marks an incomplete one) and the largest "
          "|original - fused| on the logits")
    print(head)
    for form, opset, verdict, results, ort_counts, errors in rows:
        line = f"{form:<20} {opset!s:>5} {_fmt(ort_counts):>13}  {verdict.split(':')[0]:<8}"
        for k in keys:
            line += f" {(_fmt(results[k]) + f' {errors[k]:.1e}') if k in results else '-':>24}"
        print(line)
        if verdict.startswith("refused"):
            print(f"{'':<20} {verdict}")
    print(f"\n{sum(r[2] == 'fused' for r in rows)} of {len(rows)} forms fully fused and within tolerance "
          f"(fp32 {TOLERANCE['fp32']:g}, fp16 and var-seqlen {TOLERANCE['fp16']:g})")


if __name__ == "__main__":
    sys.exit(main())
