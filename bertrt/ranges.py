"""The ranges file: JSON object tensor name -> amax (symmetric INT8 range, scale = amax / 127).

Statistics are keyed by the canonical model's tensor names; a fused graph names its tensors differently,
so every writer goes through a name map ``canonical_name -> fused_name`` (identity by default). Several
canonical tensors mapping to one fused tensor (Q, K and V becoming one QKV GEMM) keep the largest amax,
as NVIDIA's demo did for the QKV output.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

from bertrt.atomic import write_text
from bertrt.errors import BertrtError
from bertrt.json_io import read_json

NameMap = Mapping[str, "str | None"]


def apply_name_map(amax: Mapping[str, float], name_map: NameMap | None = None, *,
                   drop_unmapped: bool = False) -> dict[str, float]:
    """amax keyed by mapped names, sorted. A name mapped to None is dropped; an unmapped name is kept as it
    is, or dropped with ``drop_unmapped``. Names mapped together keep the largest amax."""
    out: dict[str, float] = {}
    for name, value in amax.items():
        if name_map is not None and name in name_map:
            target = name_map[name]
        elif drop_unmapped:
            continue
        else:
            target = name
        for t in [] if target is None else [target] if isinstance(target, str) else target:
            out[t] = max(out.get(t, 0.0), float(value))
    return dict(sorted(out.items()))


def ranges_text(amax: Mapping[str, float]) -> str:
    """The file's text: sorted keys, floats as Python writes them (shortest round-trip), one per line."""
    _check_values(amax, "<ranges>")
    return json.dumps(dict(sorted((str(k), float(v)) for k, v in amax.items())), indent=1) + "\n"


def write_ranges(path: str | os.PathLike, amax: Mapping[str, float], name_map: NameMap | None = None, *,
                 drop_unmapped: bool = False) -> dict[str, float]:
    """Write the ranges file atomically through the name map; returns what was written."""
    mapped = apply_name_map(amax, name_map, drop_unmapped=drop_unmapped)
    if not mapped:
        raise BertrtError("no ranges to write (the name map dropped every tensor)", path)
    write_text(path, ranges_text(mapped))
    return mapped


def read_ranges(path: str | os.PathLike) -> dict[str, float]:
    """A ranges file's tensor name -> amax (also accepted wrapped as {"amax": {...}} or {"ranges": {...}}); a
    BertrtError naming the file for anything malformed."""
    data = read_json(path, "ranges file")
    if isinstance(data, dict):
        for key in ("amax", "ranges"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict):
        raise BertrtError(f"expected a JSON object of tensor name -> amax, got a {type(data).__name__}", path)
    if not data:
        raise BertrtError("the ranges file is empty (no tensors)", path)
    _check_values(data, path)
    return {k: float(v) for k, v in data.items()}


def read_name_map(path: str | os.PathLike) -> dict[str, str | None]:
    """A JSON object canonical tensor name -> fused tensor name, a list of them (as `bertrt surgery run
    --name-map` writes), or null to drop the tensor."""
    data = read_json(path, "name map")
    if isinstance(data, dict) and isinstance(data.get("name_map"), dict):
        data = data["name_map"]  # a surgery report
    ok = isinstance(data, dict) and all(
        v is None or isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))
        for v in data.values())
    if not ok:
        raise BertrtError("expected a JSON object of canonical tensor name -> fused tensor name(s) (or null)", path)
    return data


def _check_values(amax: Mapping, path) -> None:
    for name, value in amax.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BertrtError(f"amax of '{name}' is {value!r}, expected a number", path)
        if not math.isfinite(value) or value < 0:
            raise BertrtError(f"amax of '{name}' is {value}, expected a finite number >= 0", path)
