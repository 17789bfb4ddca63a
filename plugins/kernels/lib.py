"""The compiled kernels library (build.py) loaded with ctypes: argument types of each entry point of shim.cu, and
errors turned into BertrtError. Needs a CUDA GPU; ``open_library`` says plainly when there is none."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from bertrt.errors import BertrtError, ToolMissing

P, I, F, LL = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_longlong
SIGNATURES = {  # name -> (restype, argtypes), as shim.cu declares them
    "bertrt_last_error": (ctypes.c_char_p, []),
    "bertrt_mask_packed_size": (I, [I, I, I]),
    "bertrt_skip_ln": (I, [I, I, I, P, P, P, P, P, P, F, F, F, P]),
    "bertrt_skip_ln_il": (I, [I, I, P, P, P, P, P, F, F, F, P]),
    "bertrt_emb_ln": (I, [I, I, I, I, P, P, P, P, P, P, P, I, I, P, P]),
    "bertrt_emb_mask": (I, [I, I, I, I, I, P, P, P]),
    "bertrt_emb_ln_hface": (I, [I, I, I, I, P, P, P, P, P, P, P, P, I, I, P, P]),
    "bertrt_mha_create": (P, [I, I, I, I, F, I]),
    "bertrt_mha_destroy": (None, [P]),
    "bertrt_mha_is_valid": (I, [P, I, I]),
    "bertrt_mha_setup": (I, [P, I, I, I]),
    "bertrt_mha_workspace": (LL, [P]),
    "bertrt_mha_run_fixed": (I, [P, I, I, I, I, F, F, P, P, P, P, P]),
    "bertrt_mha_run_varseqlen": (I, [P, I, I, I, I, I, F, F, P, P, P, P, P, P, P]),
}


def require_gpu():
    """torch with a CUDA device, or ToolMissing (exit 3) saying what is missing."""
    try:
        import torch
    except ImportError as e:
        raise ToolMissing(f"the kernels backend runs on PyTorch CUDA, which cannot be imported ({e})") from None
    if not torch.cuda.is_available():
        raise ToolMissing("the kernels backend needs an NVIDIA GPU with CUDA, and PyTorch sees none "
                          f"(torch {torch.__version__})")
    return torch


class KernelLibrary:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.lib = ctypes.CDLL(os.fspath(self.path))
        except OSError as e:
            raise BertrtError(f"cannot load the kernels library: {e}", self.path) from None
        for name, (res, args) in SIGNATURES.items():
            fn = getattr(self.lib, name)
            fn.restype, fn.argtypes = res, args

    def call(self, name: str, *args) -> int:
        status = getattr(self.lib, name)(*args)
        if status != 0:
            raise BertrtError(f"{name}: {self.lib.bertrt_last_error().decode(errors='replace')} (status {status})",
                              self.path)
        return status

    def __getattr__(self, name):
        return getattr(self.lib, name)


def sm_version(device=None) -> int:
    torch = require_gpu()
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


def open_library(trt_oss=None, cache_dir=None, log=lambda m: None) -> tuple[KernelLibrary, int]:
    """(library, SM) for this process's GPU: compiled from the checkout on first use (BERTRT_KERNELS_LIB names a
    library built before, e.g. on another machine of the same SM)."""
    require_gpu()
    sm = sm_version()
    prebuilt = os.environ.get("BERTRT_KERNELS_LIB")
    if prebuilt:
        return KernelLibrary(prebuilt), sm
    from bertrt.plugins.kernels.build import build
    from bertrt.plugins.kernels.tree import TrtOssTree

    tree = TrtOssTree(trt_oss)
    cache = Path(cache_dir or os.environ.get("BERTRT_KERNELS_CACHE") or Path.home() / ".cache" / "bertrt" / "kernels")
    return KernelLibrary(build(tree, sm, cache, log=log)), sm
