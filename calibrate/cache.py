"""TensorRT INT8 calibration cache: write one from amax values, and read one back.

Format (text, as TensorRT's calibrators write it):

    TRT-<NV_TENSORRT_VERSION>-<algorithm>
    <tensor name>: <scale as the 8 hex digits of its IEEE float32 bits, big-endian>

with scale = amax / 127. NV_TENSORRT_VERSION is major*10000 + minor*100 + patch from TensorRT 10 on
(NvInferRuntimeBase.h: NV_TENSORRT_VERSION_INT), and major*1000 + minor*100 + patch before it: 8.6.1 writes
"TRT-8601-...", 10.3.0 writes "TRT-100300-...", so 10.16 is "TRT-101600-...". TensorRT 11 removed implicit
INT8 (calibrators, dynamic ranges): it reads no cache, and bertrt writes Q/DQ graphs for it instead.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertrt.atomic import write_text
from bertrt.ranges import NameMap, apply_name_map
from bertrt.errors import BertrtError

ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
# trtexec --calib and Polygraphy's default calibrator are IInt8EntropyCalibrator2; TensorRT only reuses a
# cache whose header names its calibrator's algorithm.
DEFAULT_ALGORITHM = "EntropyCalibration2"
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")
_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?(?:\.\d+)?$")


def trt_version_number(version: str) -> int:
    """NV_TENSORRT_VERSION for a "major.minor[.patch[.build]]" version: "10.16" -> 101600, "8.6.1" -> 8601."""
    m = _VERSION.match(version.strip())
    if not m:
        raise BertrtError(f"TensorRT version {version!r} is not of the form major.minor[.patch], e.g. 10.16")
    major, minor, patch = int(m[1]), int(m[2]), int(m[3] or 0)
    if minor > 99 or patch > 99:
        raise BertrtError(f"TensorRT version {version!r}: minor and patch must be below 100")
    if major >= 11:
        raise BertrtError(f"TensorRT {version} has no implicit INT8 calibration (removed in 11.0), so it reads no "
                          f"calibration cache; give it a Q/DQ graph instead (bertrt calibrate qdq)")
    if major < 5:
        raise BertrtError(f"TensorRT {version} is too old (calibration caches here are for TensorRT 5 to 10)")
    return major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch


def scale_hex(amax: float) -> str:
    """The cache's text for amax: scale = amax / 127 rounded to float32, its bits as 8 hex digits."""
    return struct.pack(">f", np.float32(amax / 127.0)).hex()


def hex_scale(text: str) -> float:
    """The float32 scale that 8 (or fewer) hex digits of a cache line stand for."""
    return float(struct.unpack(">f", struct.pack(">I", int(text, 16)))[0])


def cache_text(amax: Mapping[str, float], trt_version: str, algorithm: str = DEFAULT_ALGORITHM) -> str:
    if algorithm not in ALGORITHMS:
        raise BertrtError(f"unknown calibration algorithm {algorithm!r}; choose from {', '.join(ALGORITHMS)}")
    lines = [f"TRT-{trt_version_number(trt_version)}-{algorithm}"]
    for name in sorted(amax):
        if not name.strip() or "\n" in name or "\r" in name:
            raise BertrtError(f"tensor name {name!r} cannot be written to a calibration cache (one line per tensor)")
        lines.append(f"{name}: {scale_hex(amax[name])}")
    return "\n".join(lines) + "\n"


def write_cache(path: str | os.PathLike, amax: Mapping[str, float], trt_version: str,
                algorithm: str = DEFAULT_ALGORITHM, name_map: NameMap | None = None, *,
                drop_unmapped: bool = False) -> str:
    """Write a calibration cache atomically (through the canonical -> fused name map); returns its text."""
    mapped = apply_name_map(amax, name_map, drop_unmapped=drop_unmapped)
    if not mapped:
        raise BertrtError("no ranges to write (the name map dropped every tensor)", path)
    text = cache_text(mapped, trt_version, algorithm)
    write_text(path, text)
    return text


@dataclass
class CalibrationCache:
    version: int  # NV_TENSORRT_VERSION of the header
    algorithm: str
    scales: dict[str, float]  # tensor name -> float32 scale

    @property
    def amax(self) -> dict[str, float]:
        return {name: scale * 127.0 for name, scale in self.scales.items()}


def parse_cache(text: str, path: str | os.PathLike = "<cache>") -> CalibrationCache:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise BertrtError("empty calibration cache", path)
    header = _HEADER.match(lines[0])
    if not header:
        raise BertrtError(f"first line {lines[0][:60]!r} is not a TensorRT cache header 'TRT-<version>-<algorithm>'",
                          path)
    scales = {}
    for number, line in enumerate(lines[1:], start=2):
        name, sep, value = line.rpartition(":")
        value = value.strip()
        if not sep or not name or not re.fullmatch(r"[0-9a-fA-F]{1,8}", value):
            raise BertrtError(f"line {number}: {line[:60]!r} is not '<tensor>: <hex float32 scale>'", path)
        scales[name] = hex_scale(value)
    return CalibrationCache(version=int(header[1]), algorithm=header[2], scales=scales)


def read_cache(path: str | os.PathLike) -> CalibrationCache:
    path = Path(path)
    if not path.is_file():
        raise BertrtError("calibration cache not found", path)
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise BertrtError("not a text calibration cache (non-ASCII bytes)", path) from None
    return parse_cache(text, path)
