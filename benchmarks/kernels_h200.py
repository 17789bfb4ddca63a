"""NVIDIA's TensorRT BERT plugin kernels on a GPU (here an H200), checked against bertrt's CPU reference.

What runs is NVIDIA's plugin kernels (built from a TensorRT OSS checkout by bertrt's kernels backend) with every
other node of the graph on PyTorch CUDA: not a TensorRT engine. Sections (each optional):

  --cubins DIR     the fused-MHA cubins (extracted by benchmarks/kernels_cubins.py) loaded with CuPy through the
                   CUDA driver: every kernel of the table found, its shared memory and threads accepted
  --plugins        the per-plugin table: each plugin node on NVIDIA's kernel and on the CPU reference, on the
                   same inputs (bertrt.plugins.kernels.check)
  --pack DIR       whole fused graphs (benchmarks/kernels_pack.py) on the features next to them: logits saved as
                   <model>.kernels.npy (in .partK.npy files over 15 MiB, which come back from the GPU machine
                   where one file would not: kernels_score.py joins them) for SQuAD EM/F1 and the comparison with
                   ONNX Runtime (done on the CPU);
                   --dump-attention N also saves every QKVToContext node's input and output on N features
  --probe-fmha     the fixed-length FP16 fused attention on inputs that read out its probabilities (probe.npz)
  --latency        BERT-Base / BERT-Large (the zoo's seeded weights) latency, CUDA graphs, next to PyTorch fp16
                   Hugging Face BertForQuestionAnswering (SDPA)

Results go to OUT/kernels.json (and the logits files). The library comes from BERTRT_KERNELS_LIB or is built
from --trt-oss.

    python benchmarks/kernels_h200.py --out OUT [--trt-oss DIR] [--cubins DIR] [--plugins] [--probe-fmha]
        [--pack DIR [--gemms float|half|both] [--dump-attention N]] [--latency]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
ROOT = Path(__file__).resolve().parents[1]


def _importable_bertrt():
    """Where bertrt is not installed (a bare GPU machine), map its packages as pyproject.toml's package-dir does."""
    try:
        import bertrt.plugins  # noqa: F401
        return
    except ImportError:
        pass
    import importlib.machinery
    import importlib.util
    import re

    dirs = dict(re.findall(r'^"(bertrt[\w.]*)" = "(\w+)"', (ROOT / "pyproject.toml").read_text(), re.M))

    class Finder:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name in dirs:
                return importlib.util.spec_from_file_location(
                    name, ROOT / dirs[name] / "__init__.py", submodule_search_locations=[str(ROOT / dirs[name])])
            return None

    sys.meta_path.insert(0, Finder)


_importable_bertrt()


def log(msg):
    print(msg, flush=True)


def environment() -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda (torch)": torch.version.cuda,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        import cupy

        env["cupy"] = cupy.__version__
    except ImportError:
        env["cupy"] = None
    try:
        env["nvcc"] = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    except OSError:
        env["nvcc"] = None
    try:
        env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                       capture_output=True, text=True).stdout.strip()
    except OSError:
        env["driver"] = None
    return env


def check_cubins(folder: Path) -> list[dict]:
    """Each cubin of the metadata table loaded through the driver (CuPy RawModule) and its kernel looked up."""
    import cupy

    meta = json.loads((folder / "kernels.json").read_text())
    rows = []
    for k in meta:
        row = dict(k)
        try:
            mod = cupy.RawModule(path=str(folder / k["file"]))
            fn = mod.get_function(k["func"])
            row.update(ok=True, num_regs=fn.num_regs, max_threads_per_block=fn.max_threads_per_block,
                       threads_ok=fn.max_threads_per_block >= k["threads"])
            # What the runner does before launching: allow the table's dynamic shared memory.
            fn.max_dynamic_shared_size_bytes = k["shared_mem"]
            row["shared_mem_ok"] = True
        except Exception as e:  # a cubin that does not load is a result, not a crash
            row.update(ok=False, error=f"{type(e).__name__}: {e}")
        rows.append(row)
        log(f"cubin {k['func']}: {'ok' if row['ok'] else row['error']}")
    return rows


def check_direct(folder: Path, lib, sm) -> list[dict]:
    """fmha v2 FP16 launched from Python (bertrt.plugins.kernels.fmha_direct: struct from the header, cuLaunchKernel)
    against the same kernel through the plugin's runner, on the var-seqlen cases of the per-plugin check."""
    import torch

    from bertrt.plugins.kernels.check import cases
    from bertrt.plugins.kernels.execute import KernelExecutor
    from bertrt.plugins.kernels.fmha_direct import fmha_v2_fp16

    header = (folder / "fused_multihead_attention_v2.h").read_text()
    meta = json.loads((folder / "kernels.json").read_text())
    cubins = {k["cubin"]: (folder / k["file"]).read_bytes() for k in meta}
    rows = []
    for case in cases():
        if not (case.plugin.startswith("CustomQKV") and case.layout == "varseqlen" and case.precision == "fp16"):
            continue
        for batch in (4, 8):  # 4: the "no loop" kernel (B <= 4 on sm_90), 8: the looping one
            x, dummy, cu, ms = case.gpu_inputs
            lens = np.diff(cu)
            if batch == 8:
                lens = np.concatenate([lens, lens[::-1]])
                x = np.concatenate([x, x[::-1]])
                cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
            ins = [torch.as_tensor(a).cuda() for a in (x, dummy, cu, ms)]
            row = {"seq": case.seq, "batch": batch, "tokens": int(cu[-1])}
            try:
                kx = KernelExecutor(case.node, lib, sm, {}, {})
                runner = kx(ins)[case.node.output[0]]
                N = int(kx.v["num_heads"])
                kx.close()
                direct = fmha_v2_fp16(header, meta, cubins, ins[0].reshape(x.shape[0], -1).half().contiguous(),
                                      ins[2].to(torch.int32), N, case.seq)
                torch.cuda.synchronize()
                d = (direct.float().reshape(runner.shape) - runner.float()).abs().max().item()
                row.update(max_abs=d, bit_exact=bool(torch.equal(direct.float().reshape(runner.shape), runner.float())))
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {e}"
            log(f"direct fmha v2 fp16 {row}")
            rows.append(row)
    return rows


def check_plugins(lib, sm, out: Path) -> list[dict]:
    """The per-plugin table; the attention kernels' outputs (attention.npz) and the FP16 LayerNorm kernels' outputs
    at S=128 (layernorm.npz) are also saved for study on the CPU."""
    from bertrt.plugins.kernels.check import cases, run_case

    rows, saved, saved_ln = [], {}, {}
    for index, case in enumerate(cases()):
        base = {"plugin": case.label, "precision": case.precision, "layout": case.layout, "seq": case.seq,
                "what": case.what}
        try:
            res = run_case(case, lib, sm)
            if case.plugin.startswith("CustomQKV"):
                for name, arr in res.kernel.items():
                    q = np.rint(arr / case.out_scale).astype(np.int8) if case.out_scale else arr.astype(np.float16)
                    saved[f"case{index}"] = q
            elif case.precision == "fp16" and case.seq == 128:  # the FP16 LayerNorm kernels, for study too
                saved_ln[f"case{index}"] = next(iter(res.kernel.values())).astype(np.float16)
            for output, mabs, mrel, steps, n in res.outputs:
                rows.append({**base, "output": output, "max_abs": mabs, "max_rel": mrel, "steps": steps, "n": n})
                log(f"{case.label} {case.precision} {case.layout} S={case.seq} {case.what} out {output}: "
                    f"abs {mabs:.3e} rel {mrel:.3e}" + (f" steps {steps:.2f}" if steps is not None else ""))
        except Exception as e:
            rows.append({**base, "error": f"{type(e).__name__}: {e}"})
            log(f"{case.label} {case.precision} {case.layout} S={case.seq}: ERROR {e}")
            traceback.print_exc()
    np.savez_compressed(out / "attention.npz", **saved)
    np.savez_compressed(out / "layernorm.npz", **saved_ln)
    return rows


def _feeds(model, feats, lo, hi):
    """Features lo..hi as the graph takes them: padded [B, S], or packed for a var-seqlen graph (as bertrt's
    backends pack them: bertrt.run.packing)."""
    from bertrt.run.packing import model_max_length, pack_varseqlen

    f = {k: feats[k][lo:hi] for k in ("input_ids", "segment_ids", "input_mask")}
    if "cu_seqlens" in {i.name for i in model.graph.input}:
        return pack_varseqlen(f, max_len=model_max_length(model)), f["input_mask"]
    return f, None


def dump_attention(model, feats, out_file: Path, lib, sm, amax, half_gemms: bool, n: int):
    """Each QKVToContext node's input and output on NVIDIA's kernel for the first ``n`` features, saved for study
    on the CPU (the node's own CPU reference can be run on the same input there): float16 for an FP16 graph."""
    import torch

    from bertrt.plugins.handbuilt import with_outputs
    from bertrt.plugins.kernels.runner import KernelRunner

    nodes = [nd for nd in model.graph.node if nd.op_type.startswith("CustomQKVToContext")]
    names = [nd.input[0] for nd in nodes] + [nd.output[0] for nd in nodes]
    runner = KernelRunner(with_outputs(model, names), amax=amax, lib=lib, sm=sm, half_gemms=half_gemms)
    feeds, _ = _feeds(model, feats, 0, n)
    with torch.no_grad():
        got = runner.run_torch(feeds)
    runner.close()
    dtype = np.float32 if amax else np.float16
    np.savez_compressed(out_file, **{k: np.asarray(v) for k, v in feeds.items()},
                        **{f"{nd.name}/{io}": got[t].float().cpu().numpy().astype(dtype)
                           for nd in nodes for io, t in (("in", nd.input[0]), ("out", nd.output[0]))})
    log(f"{out_file.name}: {len(nodes)} QKVToContext nodes' input and output on {n} features")


def probe_fmha_fp16(lib, sm, out: Path) -> list[dict]:
    """The fixed-length FP16 fused attention (QKV v4, head size 64) on inputs that expose its arithmetic: one head,
    one full sequence, random Q and K, and V one-hot per key (V[j] = e_(j - k0) for keys k0..k0+63, else 0), so
    that each output is one probability times 1 and P.V adds nothing to it: the output is the kernel's P itself.
    A last run with random V shows P.V. Inputs and outputs are saved (probe.npz) for study on the CPU."""
    from bertrt.plugins.kernels.check import Case, _node, run_case
    from bertrt.plugins.nodes import QKV_TO_CONTEXT, TYPE_FP16

    rng = np.random.default_rng(7)
    saved, rows = {}, []
    for S in (128, 384):
        H = 64
        qk = (rng.standard_normal((S, 2, H)) * 2).astype(np.float16).astype(np.float32)
        vs = {f"onehot{k0}": np.eye(S, H, -k0, dtype=np.float32) for k0 in range(0, S, H)}
        vs["random"] = (rng.standard_normal((S, H)) * 2).astype(np.float16).astype(np.float32)
        for name, v in vs.items():
            x = np.concatenate([qk, v[:, None]], 1).reshape(S, 1, 3 * H, 1, 1)  # [S, B=1, (N=1, 3, H)]
            lens = np.array([S], np.int32)
            node = _node(QKV_TO_CONTEXT, "4", 2, 1, {"type_id": TYPE_FP16, "hidden_size": H, "num_heads": 1,
                                                    "has_mask": 1}, f"probe_{S}_{name}")
            mask_sb = np.ones((S, 1), np.int32)
            case = Case(QKV_TO_CONTEXT, "4", "fp16", "fixed", S, "probe", node, [x, lens.reshape(1, 1)],
                        [x, mask_sb], packed_mask=True, lengths=lens)
            try:
                res = run_case(case, lib, sm)
                saved[f"S{S}/{name}/x"] = x.reshape(S, 3 * H).astype(np.float16)
                saved[f"S{S}/{name}/out"] = next(iter(res.kernel.values())).reshape(S, H).astype(np.float16)
                rows.append({"seq": S, "v": name, "max_abs_vs_ref": res.outputs[0][1]})
            except Exception as e:
                rows.append({"seq": S, "v": name, "error": f"{type(e).__name__}: {e}"})
            log(f"probe {rows[-1]}")
    np.savez_compressed(out / "probe.npz", **saved)
    return rows


def run_pack(folder: Path, out: Path, lib, sm, batch: int, half_gemms: bool = False, dump: int = 0) -> list[dict]:
    import torch
    from kernels_pack import model_of, save_parts, unpack

    from bertrt.plugins.kernels.runner import KernelRunner
    from bertrt.run.packing import NO_LOGIT, unpack_varseqlen

    results = []
    index = json.loads((folder / "index.json").read_text())
    for name in index:
        model_name = model_of(name)
        feats = np.load(folder / f"{model_name}-features.npz")
        amax_path = folder / f"{name}.amax.json"
        amax = json.loads(amax_path.read_text()) if amax_path.exists() else None
        start = time.perf_counter()
        model = unpack(folder, name)
        runner = KernelRunner(model, amax=amax, lib=lib, sm=sm, half_gemms=half_gemms)
        name = name + (".half-gemms" if half_gemms else "")
        n = feats["input_ids"].shape[0]
        logits = []
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            f, mask = _feeds(model, feats, i, i + batch)
            got = runner.run(f)["logits"]
            logits.append(got if mask is None else unpack_varseqlen(got, mask, fill=NO_LOGIT))
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        runner.close()
        arr = np.concatenate(logits).astype(np.float32)
        save_parts(out, f"{name}.kernels", arr)  # full-dev logits exceed what comes back in one file
        results.append({"model": name, "features": n, "batch": batch, "seconds": t1 - t0,
                        "load_seconds": t0 - start, "finite": bool(np.isfinite(arr).all())})
        log(f"{name}: {n} features in {t1 - t0:.1f} s (load {t0 - start:.1f} s), finite {np.isfinite(arr).all()}")
        if dump:
            dump_attention(model, feats, out / f"{name}.attention.npz", lib, sm, amax, half_gemms, dump)
    return results


def minmax_ranges(w, L, N, lib, sm, feeds) -> dict[str, float]:
    """The INT8 plugins' ranges: max |x| of each tensor they read or write, on the FP16 graph (one batch)."""
    import torch

    from bertrt.plugins.handbuilt import fused_bert, plugin_range_tensors, with_outputs
    from bertrt.plugins.kernels.runner import KernelRunner

    names = plugin_range_tensors(fused_bert(w, L, N, "int8"))
    runner = KernelRunner(with_outputs(fused_bert(w, L, N, "fp16"), names), lib=lib, sm=sm, half_gemms=True)
    with torch.no_grad():
        out = runner.run_torch(feeds)
    amax = {n: float(out[n].abs().max()) for n in names}
    runner.close()
    return amax


def latency(lib, sm, batches, seqs, iters: int = 20) -> list[dict]:
    """BERT-Base/Large (the zoo's seeded weights) on the kernels backend (NVIDIA's plugin kernels in FP16 and in
    INT8 with min-max ranges, PyTorch FP16 GEMMs) and on PyTorch fp16 HF BertForQuestionAnswering (SDPA), each
    replayed from a CUDA graph."""
    import torch

    from bertrt.plugins.handbuilt import fused_bert, random_bert_weights
    from bertrt.plugins.kernels.runner import KernelRunner

    sizes = {"base": (12, 768, 12, 3072), "large": (24, 1024, 16, 4096)}
    rows = []

    def timed(fn):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        graph = None
        try:
            g = torch.cuda.CUDAGraph()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                fn()
                with torch.cuda.graph(g, stream=s):
                    fn()
            torch.cuda.current_stream().wait_stream(s)
            graph = g
        except Exception as e:
            log(f"  CUDA graph capture failed ({type(e).__name__}: {str(e)[:120]}); timing plain launches")
        run = graph.replay if graph is not None else fn
        for _ in range(3):
            run()
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(iters):
            a.record()
            run()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        return float(np.median(times)), graph is not None

    def random_feeds(B, S):
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, 30522, (B, S), generator=g, dtype=torch.int32).cuda()
        return {"input_ids": ids, "segment_ids": torch.zeros((B, S), dtype=torch.int32).cuda(),
                "input_mask": torch.ones((B, S), dtype=torch.int32).cuda()}

    for size, (L, E, N, I) in sizes.items():
        w = random_bert_weights(L, E, N, I, seed=0)
        runner = KernelRunner(fused_bert(w, L, N, "fp16"), lib=lib, sm=sm, half_gemms=True)
        amax = minmax_ranges(w, L, N, lib, sm, random_feeds(8, 384))
        log(f"{size}: INT8 ranges of {len(amax)} tensors, max {max(amax.values()):.3g}, min {min(amax.values()):.3g}")
        runner8 = KernelRunner(fused_bert(w, L, N, "int8"), amax=amax, lib=lib, sm=sm, half_gemms=True)
        del w
        from transformers import BertConfig, BertForQuestionAnswering

        cfg = BertConfig(hidden_size=E, num_hidden_layers=L, num_attention_heads=N, intermediate_size=I,
                         attn_implementation="sdpa")
        hf = BertForQuestionAnswering(cfg).half().cuda().eval()
        for B in batches:
            for S in seqs:
                feeds = random_feeds(B, S)
                ids, seg, mask = feeds["input_ids"], feeds["segment_ids"], feeds["input_mask"]
                row = {"model": size, "batch": B, "seq": S}
                try:
                    with torch.no_grad():
                        row["kernels_fp16_ms"], row["kernels_graph"] = timed(lambda: runner.run_torch(feeds))
                except Exception as e:
                    row["kernels_error"] = f"{type(e).__name__}: {str(e)[:200]}"
                try:
                    with torch.no_grad():
                        row["kernels_int8_ms"], row["kernels_int8_graph"] = timed(lambda: runner8.run_torch(feeds))
                        a = runner.run_torch(feeds)["logits"].float()
                        b = runner8.run_torch(feeds)["logits"].float()
                    row["int8_vs_fp16_max_abs"] = float((a - b).abs().max())
                    row["fp16_max_abs_logit"] = float(a.abs().max())
                except Exception as e:
                    row["kernels_int8_error"] = f"{type(e).__name__}: {str(e)[:200]}"
                try:
                    ids64, m64 = ids.long(), mask.long()
                    with torch.no_grad():
                        row["torch_fp16_ms"], row["torch_graph"] = timed(
                            lambda: hf(input_ids=ids64, attention_mask=m64, token_type_ids=seg.long()))
                except Exception as e:
                    row["torch_error"] = f"{type(e).__name__}: {str(e)[:200]}"
                log(f"latency {row}")
                rows.append(row)
                torch.cuda.empty_cache()
        runner.close()
        runner8.close()
        del hf, runner, runner8
        torch.cuda.empty_cache()
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--trt-oss", default=None, help="TensorRT OSS checkout [default: $BERTRT_TRT_OSS]")
    ap.add_argument("--cache-dir", default=None, help="where the library is built [default: ~/.cache/bertrt/kernels]")
    ap.add_argument("--cubins", type=Path, default=None)
    ap.add_argument("--plugins", action="store_true")
    ap.add_argument("--pack", type=Path, default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--gemms", choices=("float", "half", "both"), default="float",
                    help="--pack: the GEMMs in float32 as the graph declares, in FP16, or both runs [default: float]")
    ap.add_argument("--dump-attention", type=int, default=0, metavar="N",
                    help="--pack: also save each QKVToContext node's input and output for the first N features")
    ap.add_argument("--probe-fmha", action="store_true",
                    help="the fixed-length FP16 fused attention on inputs that expose its arithmetic (probe.npz)")
    ap.add_argument("--latency", action="store_true")
    ap.add_argument("--latency-batches", default="1,8,32,128")
    ap.add_argument("--latency-seqs", default="128,384")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"environment": environment()}
    log(json.dumps(result["environment"]))
    path = args.out / "kernels.json"

    def save():
        path.write_text(json.dumps(result, indent=1, default=str))

    save()
    from bertrt.plugins.kernels.lib import open_library

    t = time.perf_counter()
    lib, sm = open_library(args.trt_oss, cache_dir=args.cache_dir, log=log)
    result["library"] = {"path": str(lib.path), "sm": sm, "seconds": time.perf_counter() - t}
    log(f"library {lib.path} sm_{sm}")
    save()
    if args.cubins:
        result["cubins"] = check_cubins(args.cubins)
        save()
    if args.cubins and (args.cubins / "fused_multihead_attention_v2.h").exists():
        result["direct"] = check_direct(args.cubins, lib, sm)
        save()
    if args.plugins:
        result["plugins"] = check_plugins(lib, sm, args.out)
        save()
    if args.probe_fmha:
        result["probe"] = probe_fmha_fp16(lib, sm, args.out)
        save()
    if args.pack:
        result["graphs"] = [r for half in {"float": (False,), "half": (True,), "both": (False, True)}[args.gemms]
                            for r in run_pack(args.pack, args.out, lib, sm, args.batch, half_gemms=half,
                                             dump=args.dump_attention)]
        save()
    if args.latency:
        result["latency"] = latency(lib, sm, [int(b) for b in args.latency_batches.split(",")],
                                    [int(s) for s in args.latency_seqs.split(",")])
        save()
    log("done")


if __name__ == "__main__":
    main()
