"""A TensorRT OSS checkout as the kernels backend reads it: where it is, that it holds the plugin sources, the
fused multi-head attention kernel tables of its headers, and the cubins its ``.cpp`` arrays embed.

The checkout comes from ``--trt-oss DIR`` or the environment variable ``BERTRT_TRT_OSS`` (a clone of
github.com/NVIDIA/TensorRT; bertrt ships none of NVIDIA's code).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from bertrt.errors import BertrtError

ENV = "BERTRT_TRT_OSS"
MHA_DIR = "plugin/bertQKVToContextPlugin"
# The kernel tables: fmha v1 (fixed-length QKV v1/v4) and fmha v2 (var-seqlen QKV v2/v5, interleaved v3/v6).
TABLES = {1: f"{MHA_DIR}/fused_multihead_attention/fused_multihead_attention.h",
          2: f"{MHA_DIR}/fused_multihead_attention_v2/fused_multihead_attention_v2.h"}
REQUIRED = ("include/NvInfer.h", "plugin/common/bertCommon.h", *TABLES.values())

_ENTRY = re.compile(
    r"\{\s*DATA_TYPE_(?P<dtype>\w+)\s*,\s*(?P<s>\d+)\s*,\s*(?P<d>\d+)\s*,\s*kSM_(?P<sm>\d+)\s*,\s*(?P<cubin>\w+)\s*,"
    r"\s*(?P<cubin_len>\w+)\s*,\s*\"(?P<func>\w+)\"\s*,\s*(?P<smem>\d+)\s*,\s*(?P<threads>\d+)"
    r"(?:\s*,\s*(?P<unroll>\d+)\s*,\s*(?P<il>true|false))?\s*\}")
_ARRAY = re.compile(r"unsigned\s+char\s+(\w+)\s*\[\s*\]\s*=\s*\{([^}]*)\}", re.S)


@dataclass(frozen=True)
class KernelInfo:
    """One row of a fused-MHA kernel table (the metadata the runners pick a kernel by)."""

    version: int  # 1 or 2 (fmha v1 / v2)
    dtype: str  # "FP16" or "INT8"
    seq: int
    head_size: int
    sm: int
    cubin: str  # name of the C array holding the cubin
    func: str  # kernel function name in the cubin
    shared_mem: int
    threads: int
    unroll: int = 0  # v2: tokens per step of the "_nl" (no-loop) kernels; 0 = the looping kernel
    interleaved: bool = False  # v2: the INT8 interleaved (CHW32) kernels


def find_checkout(path: str | os.PathLike | None = None) -> Path:
    """The checkout's root: ``path`` or $BERTRT_TRT_OSS; a BertrtError saying what is missing otherwise."""
    given = path if path is not None else os.environ.get(ENV)
    if not given:
        raise BertrtError(f"the kernels backend needs a TensorRT OSS checkout (github.com/NVIDIA/TensorRT): give "
                          f"--trt-oss DIR or set {ENV}")
    root = Path(given)
    if not root.is_dir():
        raise BertrtError("TensorRT OSS checkout not found", root)
    missing = [r for r in REQUIRED if not (root / r).is_file()]
    if missing:
        raise BertrtError(f"not a TensorRT OSS checkout: it has no {missing[0]}", root)
    return root


class TrtOssTree:
    def __init__(self, path: str | os.PathLike | None = None):
        self.root = find_checkout(path)

    def kernel_table(self, version: int) -> list[KernelInfo]:
        """Every row of the fmha v1 or v2 kernel table, in the header's order (all SMs)."""
        path = self.root / TABLES[version]
        text = path.read_text(errors="replace")
        start = text.find("sMhaKernelMetaInfos")
        rows = [KernelInfo(version=version, dtype=m["dtype"], seq=int(m["s"]), head_size=int(m["d"]),
                           sm=int(m["sm"]), cubin=m["cubin"], func=m["func"], shared_mem=int(m["smem"]),
                           threads=int(m["threads"]), unroll=int(m["unroll"] or 0), interleaved=m["il"] == "true")
                for m in _ENTRY.finditer(text, max(start, 0))]
        if not rows:
            raise BertrtError("no fused-MHA kernel table found (sMhaKernelMetaInfos)", path)
        return rows

    def kernels(self, sm: int, version: int | None = None) -> list[KernelInfo]:
        return [k for v in ((version,) if version else (1, 2)) for k in self.kernel_table(v) if k.sm == sm]

    def cubin_sources(self, sm: int) -> list[Path]:
        """The .cpp files embedding the SM's cubins (every one its kernel tables name must link)."""
        files = sorted(p for d in ("fused_multihead_attention", "fused_multihead_attention_v2")
                       for p in (self.root / MHA_DIR / d).glob(f"*.sm{sm}.cpp"))
        if not files:
            raise BertrtError(f"the checkout has no fused-MHA cubins for sm_{sm} (*.sm{sm}.cpp)", self.root / MHA_DIR)
        return files

    def cubin(self, name: str, sm: int) -> bytes:
        """The bytes of the cubin array ``name`` (searched in the SM's cubin sources)."""
        for path in self.cubin_sources(sm):
            found = read_cubin_arrays(path).get(name)
            if found is not None:
                return found
        raise BertrtError(f"no cubin array {name} in the sm_{sm} cubin sources", self.root / MHA_DIR)


def read_cubin_arrays(path: Path) -> dict[str, bytes]:
    """name -> bytes of every ``unsigned char name[] = {0x.., ...};`` in a cubin .cpp (an ELF is checked for)."""
    text = Path(path).read_text(errors="replace")
    out = {}
    for m in _ARRAY.finditer(text):
        data = bytes(int(tok, 0) for tok in m.group(2).replace("\n", " ").split(",") if tok.strip())
        if data[:4] != b"\x7fELF":
            raise BertrtError(f"cubin array {m.group(1)} is not an ELF image", path)
        out[m.group(1)] = data
    return out
