"""Fused graphs made small for the trip to the GPU machine (its working tree is limited in size): every float32
weight that float16 holds exactly (a model fine-tuned and shipped in fp16 has only such weights) travels as
float16, each distinct weight once for all the graphs packed together, and comes back bit for bit.

    pack(models, out_dir)  ->  out_dir/weights.npz + out_dir/<name>.skeleton.onnx (graphs without weights)
    unpack(out_dir, name)  ->  the ModelProto, equal to the original

The way back has a limit too (a file over 16 MiB does not come back from the GPU machine): save_parts writes an
array as <stem>.npy, or as <stem>.partK.npy files under the limit, and load_parts joins them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

MIN_BYTES = 1024  # smaller tensors stay in the skeleton
PART_BYTES = 15 << 20  # under the GPU machine's 16 MiB limit on a file that comes back


def model_of(name: str) -> str:
    """The model a packed graph's name belongs to: "minilm-squad-h64-varseqlen-fp16" -> "minilm-squad-h64"."""
    return name.split("-fused")[0].split("-int8")[0].split("-varseqlen")[0]


def _tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t


def pack(models: dict[str, onnx.ModelProto], out_dir: Path) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store: dict[str, np.ndarray] = {}
    index = {}
    for name, model in models.items():
        model = onnx.ModelProto.FromString(model.SerializeToString())
        refs = {}
        for i, t in enumerate(_tensors(model)):
            a = numpy_helper.to_array(t)
            if a.nbytes < MIN_BYTES:
                continue
            if a.dtype == np.float32 and np.array_equal(a.astype(np.float16).astype(np.float32), a):
                stored, kind = a.astype(np.float16), "f16"
            else:
                stored, kind = a, "raw"
            key = hashlib.sha1(stored.tobytes() + str(stored.shape).encode() + kind.encode()).hexdigest()
            store.setdefault(key, stored)
            refs[str(i)] = [key, kind, a.dtype.str]
            t.ClearField("raw_data")
            for f in ("float_data", "int32_data", "int64_data", "double_data"):
                t.ClearField(f)
            t.raw_data = b""
        (out_dir / f"{name}.skeleton.onnx").write_bytes(model.SerializeToString())
        index[name] = refs
    np.savez_compressed(out_dir / "weights.npz", **store)
    (out_dir / "index.json").write_text(json.dumps(index))
    return index


def unpack(out_dir: Path, name: str) -> onnx.ModelProto:
    out_dir = Path(out_dir)
    refs = json.loads((out_dir / "index.json").read_text())[name]
    store = np.load(out_dir / "weights.npz")
    model = onnx.load_from_string((out_dir / f"{name}.skeleton.onnx").read_bytes())
    for i, t in enumerate(_tensors(model)):
        ref = refs.get(str(i))
        if ref is None:
            continue
        key, kind, dtype = ref
        a = store[key]
        a = a.astype(np.float32) if kind == "f16" else a
        t.raw_data = np.ascontiguousarray(a.astype(np.dtype(dtype))).tobytes()
    return model


def save_parts(folder: Path, stem: str, arr: np.ndarray, limit: int = PART_BYTES) -> list[Path]:
    """``arr`` as folder/<stem>.npy, or split along its first axis into <stem>.part0.npy, ... each under ``limit``."""
    folder = Path(folder)
    n = -(-arr.nbytes // limit) if arr.nbytes > limit else 1
    if n == 1:
        paths = [folder / f"{stem}.npy"]
        np.save(paths[0], arr)
        return paths
    paths = [folder / f"{stem}.part{k}.npy" for k in range(n)]
    for path, part in zip(paths, np.array_split(arr, n)):
        np.save(path, part)
    return paths


def load_parts(folder: Path, stem: str) -> np.ndarray:
    """What save_parts wrote (either form)."""
    folder = Path(folder)
    whole = folder / f"{stem}.npy"
    if whole.exists():
        return np.load(whole)
    parts = sorted(folder.glob(f"{stem}.part*.npy"), key=lambda p: int(p.name[len(stem) + 5:-4]))
    if not parts:
        raise FileNotFoundError(f"{whole}: not found, nor its parts")
    return np.concatenate([np.load(p) for p in parts])


def saved_stems(folder: Path, suffix: str) -> list[str]:
    """Stems ending in ``suffix`` that save_parts wrote in folder, whole or in parts."""
    names = {p.name[:-4] for p in Path(folder).glob(f"*{suffix}.npy")}
    names |= {p.name.rsplit(".part", 1)[0] for p in Path(folder).glob(f"*{suffix}.part*.npy")}
    return sorted(names)

