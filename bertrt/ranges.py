"""The ranges file: JSON object tensor name -> amax (symmetric INT8 range, scale = amax / 127).

This module is the format's one reader and one writer, and holds the one rule every amax obeys, in a ranges
file and in a calibration cache alike (`check_amax`): a number whose INT8 scale amax / 127 is a positive,
finite float32, which is what TensorRT and a Q/DQ graph store. Statistics are keyed by the canonical
model's tensor names; writers take a name map (``bertrt.name_map``) to key them by the fused graph's.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import numpy as np

from bertrt.atomic import write_text
from bertrt.errors import BertrtError
from bertrt.json_io import read_json
from bertrt.name_map import NameMap, apply_name_map

QMAX = 127  # symmetric INT8: scale = amax / 127


def amax_problem(value) -> str | None:
    """Why ``value`` is no amax (None if it is one): a number whose scale amax / 127 is a positive finite float32."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return f"is {repr(value)[:40]}, expected a number"
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        return f"is {value}, expected a positive finite number"
    with np.errstate(over="ignore", under="ignore"):
        scale = np.float32(value / QMAX)
    if not np.isfinite(scale) or scale == 0:
        return f"is {value}, whose INT8 scale amax / 127 is not a positive finite float32 (what TensorRT stores)"
    return None


def check_amax(amax: Mapping, path=None) -> dict[str, float]:
    """amax as floats; a BertrtError naming the file and the first tensor whose value breaks the rule."""
    out = {}
    for name, value in amax.items():
        problem = amax_problem(value)
        if problem is not None:
            raise BertrtError(f"amax of '{name}' {problem}", path)
        if not str(name).strip() or any(c in str(name) for c in "\r\n"):
            raise BertrtError(f"tensor name {str(name)!r} is empty or spans lines", path)
        out[str(name)] = float(value)
    return out


def ranges_text(amax: Mapping[str, float]) -> str:
    """The file's text: sorted keys, floats as Python writes them (shortest round-trip), one per line."""
    return json.dumps(dict(sorted(check_amax(amax, "<ranges>").items())), indent=1) + "\n"


def write_ranges(path: str | os.PathLike, amax: Mapping[str, float], name_map: NameMap | None = None, *,
                 drop_unmapped: bool = False) -> dict[str, float]:
    """Write the ranges file atomically through the name map; returns what was written."""
    mapped = apply_name_map(check_amax(amax, path), name_map, drop_unmapped=drop_unmapped)
    if not mapped:
        why = "the name map dropped every tensor" if amax else "no tensor has a range"
        raise BertrtError(f"no ranges to write ({why})", path)
    write_text(path, ranges_text(mapped))
    return mapped


def read_ranges(path: str | os.PathLike) -> dict[str, float]:
    """A ranges file's tensor name -> amax; a BertrtError naming the file (and the tensor) for anything else."""
    data = read_json(path, "ranges file")
    if not isinstance(data, dict):
        raise BertrtError(f"expected a JSON object of tensor name -> amax, got a {type(data).__name__}", path)
    if not data:
        raise BertrtError("the ranges file is empty (no tensors)", path)
    return check_amax(data, path)
