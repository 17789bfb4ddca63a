"""The fused-MHA v2 cubins launched from Python, as ``FusedMultiHeadAttentionXMMAKernelV2::run`` launches them: the
parameter struct is built from the struct declaration in the checkout's header (so its layout is the header's, not
a copy of it), the kernel is picked from the metadata table, and ``cuLaunchKernel`` goes through the CUDA driver.
It serves as a second, independent path to the same kernels: the plugin runner's result must equal it bit for bit.
Only FP16 var-seqlen (QKV v2/v5 with var_seqlen=1, head size 64) is wired.
"""

from __future__ import annotations

import ctypes
import re

import numpy as np

from bertrt.errors import BertrtError

STRUCT = "Fused_multihead_attention_params_v2"
_CTYPES = {"void*": ctypes.c_void_p, "int32_t*": ctypes.c_void_p, "float*": ctypes.c_void_p,
           "int64_t": ctypes.c_int64, "int32_t": ctypes.c_int32, "uint32_t": ctypes.c_uint32, "bool": ctypes.c_bool}
CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
# FusedMultiHeadAttentionXMMAKernelV2::run: FP16 on sm_90 takes the "no loop" kernel up to this batch.
UNROLL_MAX_BATCH_SM90_FP16 = {128: 4, 256: 4, 384: 4}


def params_struct(header_text: str, defines: tuple[str, ...] = ()):
    """A ctypes Structure of the header's ``struct Fused_multihead_attention_params_v2`` (members inside
    ``#if defined(X)`` blocks only when X is in ``defines``)."""
    m = re.search(r"struct\s+" + STRUCT + r"\s*\{(.*?)\n\};", header_text, re.S)
    if m is None:
        raise BertrtError(f"no struct {STRUCT} in the fused-MHA v2 header")
    fields, skip = [], []
    for raw in m.group(1).splitlines():
        line = raw.split("//")[0].strip()
        cond = re.match(r"#if\s+defined\((\w+)\)", line)
        if cond:
            skip.append(cond.group(1) not in defines)
            continue
        if line.startswith("#endif"):
            skip.pop()
            continue
        if any(skip) or not line or "(" in line or line.startswith(("{", "}", "*", "void clear")):
            continue
        decl = re.match(r"([\w:]+\s*\*?)\s*(\w+)\s*(\{\})?\s*;", line)
        if decl is None:
            continue
        ctype = decl.group(1).replace(" ", "")
        if ctype not in _CTYPES:
            raise BertrtError(f"struct {STRUCT}: member type {ctype} is not known to bertrt")
        fields.append((decl.group(2), _CTYPES[ctype]))
    return type(STRUCT, (ctypes.Structure,), {"_fields_": fields})


def half2_bits(x: float) -> int:
    """set_alpha for FP16: the value as a half2, read as a uint32."""
    return int(np.array([x, x], np.float16).view(np.uint32)[0])


class Driver:
    """The few CUDA driver calls needed, on the context PyTorch made current."""

    def __init__(self):
        self.cu = ctypes.CDLL("libcuda.so.1")

    def check(self, status, what):
        if status != 0:
            raise BertrtError(f"CUDA driver {what} failed with status {status}")

    def function(self, cubin: bytes, name: str, shared_mem: int):
        mod, fn = ctypes.c_void_p(), ctypes.c_void_p()
        self._keep = getattr(self, "_keep", []) + [cubin]
        self.check(self.cu.cuModuleLoadData(ctypes.byref(mod), ctypes.c_char_p(cubin)), "cuModuleLoadData")
        self.check(self.cu.cuModuleGetFunction(ctypes.byref(fn), mod, name.encode()), f"cuModuleGetFunction {name}")
        self.check(self.cu.cuFuncSetAttribute(fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                              ctypes.c_int(shared_mem)), "cuFuncSetAttribute")
        return fn

    def launch(self, fn, grid, block, shared_mem, stream, params):
        args = (ctypes.c_void_p * 1)(ctypes.addressof(params))
        self.check(self.cu.cuLaunchKernel(fn, *[ctypes.c_uint(g) for g in grid], *[ctypes.c_uint(b) for b in block],
                                          ctypes.c_uint(shared_mem), ctypes.c_void_p(stream), args, None),
                   "cuLaunchKernel")


def fmha_v2_fp16(header_text: str, kernels: list[dict], cubins: dict[str, bytes], qkv, cu_seqlens, num_heads: int,
                 S: int, sm: int = 90):
    """Attention of packed FP16 tokens qkv [T, 3E] (torch CUDA, per-token [N, 3, H], H = 64) for the sequences of
    cu_seqlens, with the kernel for bucket S: what FusedMHARunnerFP16v2 computes."""
    import torch

    T, E3 = qkv.shape[0], qkv.shape[1]
    H = E3 // 3 // num_heads
    B = cu_seqlens.numel() - 1
    unroll = B <= UNROLL_MAX_BATCH_SM90_FP16.get(S, 0) if sm == 90 else False
    meta = [k for k in kernels if k["dtype"] == "FP16" and k["seq"] == S and k["head_size"] == H and k["sm"] == sm
            and not k["interleaved"] and (k["unroll"] > 0) == unroll and k["version"] == 2]
    if len(meta) != 1:
        raise BertrtError(f"no single fmha v2 FP16 kernel for S={S}, H={H}, unroll={unroll} in the table")
    k = meta[0]
    P = params_struct(header_text)
    p = P()
    out = torch.empty((T, E3 // 3), dtype=torch.float16, device="cuda")
    p.qkv_ptr, p.o_ptr, p.packed_mask_ptr = qkv.data_ptr(), out.data_ptr(), None
    p.qkv_stride_in_bytes = 3 * num_heads * H * 2
    warps_m, warps_n = (2, 2) if S <= 128 else (1, 4) if S <= 256 else (1, 8)
    p.packed_mask_stride_in_bytes = ((S + 16 * warps_m - 1) // (16 * warps_m)) * warps_m * warps_n * 32 * 4
    p.o_stride_in_bytes = num_heads * H * 2
    p.b, p.h, p.s, p.d = B, num_heads, S, H
    p.scale_bmm1, p.scale_softmax, p.scale_bmm2 = half2_bits(1.0 / np.sqrt(H)), half2_bits(1.0), half2_bits(1.0)
    p.cu_seqlens = cu_seqlens.data_ptr()
    drv = Driver()
    fn = drv.function(cubins[k["cubin"]], k["func"], k["shared_mem"])
    grid = (num_heads, B, S // k["unroll"] if unroll else 1)
    drv.launch(fn, grid, (k["threads"], 1, 1), k["shared_mem"], torch.cuda.current_stream().cuda_stream, p)
    return out
