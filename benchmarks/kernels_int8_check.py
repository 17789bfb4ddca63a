"""The INT8 logits of the latency benchmark's graphs, separated into the INT8 recipe and the kernels (device run 11
of benchmarks/results/kernels-h200.md): for BERT-Base-sized random weights (12 and 4 layers) at S 128 and 384,
batch 2, the INT8 plugin ranges measured on that batch (kernels_h200.minmax_ranges), it prints max |difference| of
the logits between bertrt's CPU reference in FP32 and in INT8, the kernels backend's FP16 and INT8 (FP16 and
float32 GEMMs) and those references. Needs a GPU and the kernels library (BERTRT_KERNELS_LIB or BERTRT_TRT_OSS).

    python benchmarks/kernels_int8_check.py
"""
import sys, time, numpy as np, torch
sys.path.insert(0, "benchmarks")
import kernels_h200 as k
from bertrt.plugins.handbuilt import fused_bert, random_bert_weights
from bertrt.plugins.kernels.lib import open_library
from bertrt.plugins.kernels.runner import KernelRunner
from bertrt.plugins.runner import ReferenceRunner
lib, sm = open_library()
for L, E, N, I in [(12, 768, 12, 3072), (4, 768, 12, 3072)]:
    w = random_bert_weights(L, E, N, I, seed=0)
    for S in (128, 384):
        g = torch.Generator().manual_seed(0)
        B = 2
        ids = torch.randint(0, 30522, (B, S), generator=g, dtype=torch.int32)
        feeds = {"input_ids": ids.numpy(), "segment_ids": np.zeros((B, S), np.int32), "input_mask": np.ones((B, S), np.int32)}
        tf = {kk: torch.as_tensor(v).cuda() for kk, v in feeds.items()}
        amax = k.minmax_ranges(w, L, N, lib, sm, tf)
        t = time.time()
        ref32 = ReferenceRunner(fused_bert(w, L, N, "fp32")).run(feeds)["logits"]
        ref8 = ReferenceRunner(fused_bert(w, L, N, "int8"), amax=amax).run(feeds)["logits"]
        r16 = KernelRunner(fused_bert(w, L, N, "fp16"), lib=lib, sm=sm, half_gemms=True); g16 = r16.run(feeds)["logits"]; r16.close()
        r8 = KernelRunner(fused_bert(w, L, N, "int8"), amax=amax, lib=lib, sm=sm, half_gemms=True); g8 = r8.run(feeds)["logits"]; r8.close()
        r8f = KernelRunner(fused_bert(w, L, N, "int8"), amax=amax, lib=lib, sm=sm); g8f = r8f.run(feeds)["logits"]; r8f.close()
        d = lambda a, b: float(np.abs(a - b).max())
        print(f"L={L} S={S} |ref32|={np.abs(ref32).max():.3f} ref8-ref32={d(ref8,ref32):.4f} gpu16-ref32={d(g16,ref32):.4f} "
              f"gpu8(halfgemm)-ref8={d(g8,ref8):.4f} gpu8(f32gemm)-ref8={d(g8f,ref8):.4f} gpu8-ref32={d(g8,ref32):.4f} ({time.time()-t:.0f}s)", flush=True)
