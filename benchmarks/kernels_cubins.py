"""The fused-MHA cubins of a TensorRT OSS checkout, written out as .cubin files with their kernel-table rows
(kernels.json), for benchmarks/kernels_h200.py --cubins to load on the GPU through the CUDA driver.

    python benchmarks/kernels_cubins.py --trt-oss DIR --sm 90 --out build/device/cubins [--seqs 128,384]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from bertrt.plugins.kernels.tree import TABLES, TrtOssTree, read_cubin_arrays


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trt-oss", default=None)
    ap.add_argument("--sm", type=int, default=90)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seqs", default="128,384")
    ap.add_argument("--head-size", type=int, default=64)
    args = ap.parse_args()
    tree = TrtOssTree(args.trt_oss)
    seqs = {int(s) for s in args.seqs.split(",")}
    kernels = [k for k in tree.kernels(args.sm) if k.seq in seqs and k.head_size == args.head_size]
    arrays = {}
    wanted = {k.cubin for k in kernels}
    for path in tree.cubin_sources(args.sm):
        if wanted <= arrays.keys():
            break
        found = read_cubin_arrays(path)
        arrays.update({n: b for n, b in found.items() if n in wanted})
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in kernels:
        if k.cubin not in arrays:
            raise SystemExit(f"no cubin array {k.cubin} in the sm_{args.sm} sources")
        (args.out / f"{k.cubin}.cubin").write_bytes(arrays[k.cubin])
        rows.append({**asdict(k), "file": f"{k.cubin}.cubin"})
    (args.out / "kernels.json").write_text(json.dumps(rows, indent=1))
    # The v2 header too: its parameter struct is what kernels_h200.py --cubins packs for the direct launches.
    (args.out / "fused_multihead_attention_v2.h").write_bytes((tree.root / TABLES[2]).read_bytes())
    print(f"{len(rows)} kernels, {len(arrays)} cubins -> {args.out}")


if __name__ == "__main__":
    main()
