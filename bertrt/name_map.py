"""The name map file: JSON object canonical tensor name -> the fused tensor(s) carrying its values, or null.

Statistics are keyed by the canonical model's tensor names; a fused graph names its tensors differently,
so every ranges or cache writer goes through this map (`bertrt surgery run --name-map` writes it). Several
canonical tensors mapping to one fused tensor (Q, K and V becoming one QKV GEMM) keep the largest amax,
as NVIDIA's demo did for the QKV output. This module is the format's one reader and one writer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from bertrt.atomic import write_text
from bertrt.errors import BertrtError
from bertrt.json_io import read_json

NameMap = Mapping[str, "str | list[str] | None"]


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


def name_map_text(name_map: NameMap) -> str:
    _check(name_map, "<name map>")
    return json.dumps({k: sorted(v) if isinstance(v, list) else v for k, v in sorted(name_map.items())},
                      indent=1) + "\n"


def write_name_map(path: str | os.PathLike, name_map: NameMap) -> None:
    write_text(path, name_map_text(name_map))


def read_name_map(path: str | os.PathLike) -> dict[str, str | list[str] | None]:
    """The map in the file (as `write_name_map` writes it); a BertrtError naming the file and the entry for
    anything else."""
    data = read_json(path, "name map")
    _check(data, path)
    return data


def _check(data, path) -> None:
    if not isinstance(data, dict):
        raise BertrtError(f"expected a JSON object of canonical tensor name -> fused tensor name(s) (or null), "
                          f"got a {_json_kind(data)}", path)
    for name, value in data.items():
        ok = value is None or (isinstance(value, str) and value) or (
            isinstance(value, list) and value and all(isinstance(x, str) and x for x in value))
        if not ok:
            raise BertrtError(f"'{name}' maps to {json.dumps(value)[:60]}, expected a tensor name, a non-empty list "
                              "of them, or null", path)


def _json_kind(value) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")
