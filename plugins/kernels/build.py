"""Compile the TensorRT OSS BERT plugin kernels (from a checkout the user points to) and bertrt's shim into one
shared library, with nvcc, the way TensorRT's own plugin build compiles them for one SM.

Only part of the tree is read (``TREE_PARTS``): the kernel sources of the three plugins, the fused-MHA cubin
arrays of the chosen SM, ``plugin/common`` and the headers of ``include/`` and ``third_party/ieee``. The
library lands in a cache folder keyed by a hash of every input, so a second build is free.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bertrt.errors import BertrtError, ToolMissing
from bertrt.plugins.kernels.tree import TrtOssTree

SHIM = Path(__file__).with_name("shim.cu")
LIB_NAME = "libbertrt_trt_kernels.so"

# What the plugins' enqueue calls: launch wrappers and runner classes, and what they link against.
SOURCES = (
    "plugin/skipLayerNormPlugin/skipLayerNormKernel.cu",
    "plugin/skipLayerNormPlugin/skipLayerNormInt8InterleavedKernelHFace.cu",
    "plugin/embLayerNormPlugin/embLayerNormKernel.cu",
    "plugin/embLayerNormPlugin/embLayerNormVarSeqlenKernelHFace.cu",
    "plugin/bertQKVToContextPlugin/mhaRunner.cu",
    "plugin/bertQKVToContextPlugin/zeroPadding2d.cu",
    "plugin/common/checkMacrosPlugin.cpp",
    "plugin/vc/checkMacrosPlugin.cpp",
    "plugin/common/cublasWrapper.cpp",
    "plugin/common/cudaDriverWrapper.cpp",
)
TREE_PARTS = ("include", "third_party/ieee", "plugin/common", "plugin/vc", "plugin/skipLayerNormPlugin",
              "plugin/embLayerNormPlugin", "plugin/bertQKVToContextPlugin")


def nvcc_flags(sm: int) -> list[str]:
    return ["-std=c++17", f"-arch=sm_{sm}", "--expt-relaxed-constexpr", f"-DENABLE_SM{sm}", "-O3", "-w",
            "-Xcompiler", "-fPIC", "-I", "include", "-I", "plugin", "-I", "plugin/common",
            "-I", "plugin/common/kernels", "-I", "third_party"]


def find_nvcc() -> str:
    nvcc = shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc",) if os.path.exists(p)), None)
    if nvcc is None:
        raise ToolMissing("the kernels backend compiles TensorRT OSS's plugin kernels with nvcc, which is not on "
                          "PATH (install the CUDA toolkit, or add its bin folder to PATH)")
    return nvcc


def build_inputs(tree: TrtOssTree, sm: int) -> list[Path]:
    """Every file the library is compiled from: the kernel sources, the shim and the SM's cubin arrays."""
    srcs = [tree.root / s for s in SOURCES]
    missing = [s for s in srcs if not s.is_file()]
    if missing:
        raise BertrtError(f"the TensorRT OSS checkout has no {missing[0].relative_to(tree.root)}", tree.root)
    return srcs + tree.cubin_sources(sm)


def cache_key(tree: TrtOssTree, sm: int, files: list[Path]) -> str:
    h = hashlib.sha256(" ".join(nvcc_flags(sm)).encode())
    for f in [SHIM, *files]:
        h.update(str(f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def build(tree: TrtOssTree, sm: int, cache_dir: Path, jobs: int | None = None, log=print) -> Path:
    """The shared library for ``sm`` (built on first use, then found in ``cache_dir``)."""
    files = build_inputs(tree, sm)
    out_dir = Path(cache_dir).resolve() / f"sm{sm}-{cache_key(tree, sm, files)}"
    lib = out_dir / LIB_NAME
    if lib.is_file():
        return lib
    nvcc = find_nvcc()
    obj_dir = Path(cache_dir).resolve() / f"sm{sm}-obj"  # per-file keys: a changed list recompiles nothing else
    obj_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    flags = nvcc_flags(sm)

    def compile_one(src: Path) -> Path:
        key = hashlib.sha256(" ".join(flags).encode() + str(src.name).encode() + src.read_bytes()).hexdigest()[:16]
        obj = obj_dir / f"{src.parent.name}.{src.name}.{key}.o"
        if not obj.is_file():
            cmd = [nvcc, *flags, "-c", str(src), "-o", str(obj) + ".tmp"]
            run = subprocess.run(cmd, cwd=tree.root, capture_output=True, text=True)
            if run.returncode != 0:
                err = next((ln for ln in run.stderr.splitlines() if "error" in ln), run.stderr.strip()[-300:])
                raise BertrtError(f"nvcc failed on {src.name}: {err}", src)
            os.replace(str(obj) + ".tmp", obj)
        return obj

    srcs = [SHIM, *files]
    log(f"kernels: compiling {len(srcs)} files for sm_{sm} with {nvcc} into {out_dir}")
    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 2) as pool:
        objs = list(pool.map(compile_one, srcs))
    tmp = out_dir / (LIB_NAME + ".tmp")
    run = subprocess.run([nvcc, "-shared", f"-arch=sm_{sm}", "-o", str(tmp), *map(str, objs), "-ldl"],
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise BertrtError(f"linking the kernels library failed: {run.stderr.strip()[-400:]}", out_dir)
    os.replace(tmp, lib)
    return lib
