"""benchmarks/results/kernels-h200.md from the outputs of benchmarks/kernels_h200.py (its kernels.json files and
log) and benchmarks/kernels_score.py (its JSON).

    python benchmarks/kernels_report.py --plugins A/kernels.json --cubins B/kernels.json --score score.json
        --latency-log C/log3.txt --commit HASH --trt-oss-ref "release/10.16 @ d0faf30" -o kernels-h200.md
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

FP32_ABS, FP16_ABS, INT8_STEPS = 1e-5, 2 ** -5, 1.0


def verdict(r) -> str:
    if "error" in r:
        return "ERROR " + r["error"]
    if r["precision"] == "int8" and r["steps"] is not None:
        return "ok" if r["steps"] <= INT8_STEPS + 1e-6 else f"**over: {r['steps']:.0f} steps**"
    bound = FP32_ABS if r["precision"] == "fp32" else FP16_ABS
    return "ok" if r["max_abs"] <= bound else "**over**"


def latency_section(lat: list[dict]) -> list[str]:
    """The latency table of kernels_h200.py's `latency {...}` log lines (FP16 and INT8 plugins, PyTorch fp16)."""
    def ms(v):
        return f"{v:.2f}" if v else ""

    def ratio(a, b):
        return f"{a / b:.2f}" if a and b else ""

    L = ["## Latency (ms per batch, median of 20 CUDA-graph replays)", "",
         "kernels: the handbuilt fused BERT graph with the zoo's seeded random weights, MatMuls in FP16 on PyTorch, "
         "the activations between nodes in float32 (as the graph declares); FP16: FP16 plugins; INT8: INT8 "
         "QKVToContext and SkipLayerNorm (EmbLayerNorm FP16 out, INT8 mask), each plugin tensor's range the max |x| "
         "of the FP16 graph on one batch (8 x 384, seed 0), the quantize/dequantize around each INT8 plugin done on "
         "PyTorch, the GEMMs still FP16 (TensorRT would run them in INT8). PyTorch: Hugging Face "
         "`BertForQuestionAnswering`, `.half()`, SDPA attention, same sizes, random init. All captured in CUDA "
         "graphs, same run, same GPU. 'INT8 vs FP16 logits': max |INT8 − FP16| of the kernels graphs on that batch "
         "(max |FP16 logit| in brackets).", "",
         "| model | batch | seq | kernels FP16 (ms) | kernels INT8 (ms) | PyTorch fp16 SDPA (ms) | FP16 / PyTorch "
         "| INT8 / PyTorch | INT8 vs FP16 logits |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in lat:
        k, k8, t = r.get("kernels_fp16_ms"), r.get("kernels_int8_ms"), r.get("torch_fp16_ms")
        dev = (f"{r['int8_vs_fp16_max_abs']:.3f} ({r['fp16_max_abs_logit']:.3f})" if "int8_vs_fp16_max_abs" in r
               else "")
        L.append(f"| {r['model']} | {r['batch']} | {r['seq']} | {ms(k) or r.get('kernels_error', '')} | "
                 f"{ms(k8) or r.get('kernels_int8_error', 'not measured')} | {ms(t) or r.get('torch_error', '')} | "
                 f"{ratio(k, t)} | {ratio(k8, t)} | {dev} |")
    return L + [""]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plugins", type=Path, required=True)
    ap.add_argument("--cubins", type=Path, required=True)
    ap.add_argument("--score", type=Path, required=True)
    ap.add_argument("--latency-log", type=Path, required=True)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--trt-oss-ref", required=True)
    ap.add_argument("--direct", type=Path, default=None, help="a kernels.json with the direct fmha v2 launches")
    ap.add_argument("--calls", default="", help="which device runs measured what, in words")
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    plug = json.loads(args.plugins.read_text())
    cub = json.loads(args.cubins.read_text())
    score = json.loads(args.score.read_text())
    env = plug["environment"]
    lat = [ast.literal_eval(line.split("latency ", 1)[1]) for line in args.latency_log.read_text().splitlines()
           if line.startswith("latency {")]
    L = []
    w = L.append
    w("# NVIDIA's BERT plugin kernels on the H200, against bertrt's CPU reference")
    w("")
    w("What ran: the plugin kernels of a TensorRT OSS checkout (" + args.trt_oss_ref + "), compiled by bertrt's "
      "kernels backend (`plugins/kernels/`) with nvcc for sm_90 and launched as the plugins' `enqueue` launches "
      "them (their launch wrappers and `mhaRunner.cu`'s runner classes), every other node on PyTorch CUDA. "
      "**Not a TensorRT engine**: no TensorRT layer fusion, no TensorRT GEMM tactics.")
    w("")
    w(f"bertrt commit {args.commit}; GPU {env['gpu']}, driver {env['driver']}, torch {env['torch']}, "
      f"CuPy {env['cupy']}, nvcc {env['nvcc']}, Python {env['python']}. {args.calls}")
    w("")
    w("## Fused-MHA cubins through the CUDA driver")
    w("")
    ok = sum(1 for r in cub["cubins"] if r.get("ok") and r.get("shared_mem_ok") and r.get("threads_ok"))
    w(f"{ok} of {len(cub['cubins'])} sm_90 kernels of head size 64, S 128/384 (fmha v1 and v2 tables) loaded with "
      "`cupy.RawModule`, found by name, and accepted the table's dynamic shared memory and threads per CTA:")
    w("")
    w("| kernel | table | type | S | shared mem | threads | registers | loaded |")
    w("|---|---|---|---|---|---|---|---|")
    for r in cub["cubins"]:
        w(f"| `{r['func']}` | v{r['version']} | {r['dtype']}{' il' if r['interleaved'] else ''} | {r['seq']} | "
          f"{r['shared_mem']} | {r['threads']} | {r.get('num_regs', '')} | {'yes' if r.get('ok') else r.get('error')} |")
    w("")
    if args.direct:
        rows = json.loads(args.direct.read_text())["direct"]
        w("## fmha v2 FP16 launched from Python against the plugin's runner")
        w("")
        w("`bertrt.plugins.kernels.fmha_direct` builds `Fused_multihead_attention_params_v2` as a ctypes struct parsed "
          "from the checkout's header (its offsets were also checked against g++'s `offsetof` of the real header), "
          "picks the kernel from the metadata table as `FusedMultiHeadAttentionXMMAKernelV2::run` does and calls "
          "`cuLaunchKernel`; the result is compared with `FusedMHARunnerFP16v2` (the var-seqlen QKV cases of the "
          "table below, and the same sequences twice for batch 8):")
        w("")
        w("| S | batch | tokens | kernel | max abs (direct − runner) | bit exact |")
        w("|---|---|---|---|---|---|")
        for r in rows:
            kind = "no-loop (`_nl`)" if r["batch"] <= 4 else "looping"
            w(f"| {r['seq']} | {r['batch']} | {r['tokens']} | {kind} | {r.get('max_abs', r.get('error'))} | "
              f"{'yes' if r.get('bit_exact') else 'no'} |")
        w("")
    w("## Per plugin: kernel against the CPU reference (same inputs)")
    w("")
    w("max abs = max |kernel − reference| over all output elements; max rel = max |kernel − reference| / |reference| "
      "over elements with |reference| ≥ 1e-3 · max |reference|; INT8 also in output quantization steps. Bounds: "
      f"FP32 max abs ≤ {FP32_ABS:g}; FP16 max abs ≤ 2^-5 = {FP16_ABS:g} (outputs here stay below 8 in magnitude, "
      "so that is 4 FP16 ulps at the top of the range; the relative error of FP16 outputs near 0 is large by nature); "
      f"INT8 ≤ {INT8_STEPS:g} step. 'valid rows' = the real tokens only (padded query rows left out). Inputs: random, "
      "seed 0, batch 4 with one full sequence and three shorter ones (benchmarks' `bertrt.plugins.kernels.check`).")
    w("")
    w("| plugin | precision | layout | S | case | output | max abs | max rel | INT8 steps | bound |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for r in plug["plugins"]:
        steps = "" if r.get("steps") is None else f"{r['steps']:.0f}"
        if "error" in r:
            w(f"| {r['plugin']} | {r['precision']} | {r['layout']} | {r['seq']} | {r['what']} | | | | | {verdict(r)} |")
            continue
        w(f"| {r['plugin']} | {r['precision']} | {r['layout']} | {r['seq']} | {r['what']} | {r['output']} | "
          f"{r['max_abs']:.3e} | {r['max_rel']:.3e} | {steps} | {verdict(r)} |")
    w("")
    w("## Whole fused graphs and SQuAD v1.1 (first 1,000 dev questions, seq 384)")
    w("")
    w("GPU: the fused graph on the kernels backend (plugins on NVIDIA's kernels, the GEMMs and the rest on PyTorch "
      "CUDA in float32 as the graph declares, TF32 off; '.half-gemms': MatMuls in FP16). CPU: bertrt's reference "
      "(ONNX Runtime + numpy plugins) on the same features. ONNX Runtime: the canonical unfused FP32 model, first "
      "64 features. Scores: bertrt's SQuAD v1.1 metric (n-best 20, max answer 30).")
    w("")
    w("| graph | GPU EM | GPU F1 | CPU ref EM | CPU ref F1 | ΔF1 (GPU − CPU) | same answers | max abs logits GPU vs CPU "
      "| max abs logits GPU vs ORT | CPU ref vs ORT |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for r in score:
        if "cpu_ref_f1" in r:
            d = r["gpu_f1"] - r["cpu_ref_f1"]
            ref = (f"{r['cpu_ref_em']:.2f} | {r['cpu_ref_f1']:.2f} | {d:+.2f}{'' if abs(d) <= 0.1 else ' (over 0.1)'} | "
                   f"{r['same_answers']}/1000 | {r['vs_ref_max_abs']:.3f} |")
        else:
            ref = " | | | | |"
        ref_ort = f"{r['ref_vs_ort_max_abs']:.3f}" if "ref_vs_ort_max_abs" in r else ""
        w(f"| {r['model']} | {r['gpu_em']:.2f} | {r['gpu_f1']:.2f} | {ref} {r['vs_ort_max_abs']:.3f} | {ref_ort} |")
    w("")
    L += latency_section(lat)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(L) + "\n")


if __name__ == "__main__":
    main()
