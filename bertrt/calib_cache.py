"""TensorRT INT8 calibration cache: the format's one writer and one reader.

Format (text, as TensorRT's calibrators write it):

    TRT-<NV_TENSORRT_VERSION>-<algorithm>
    <tensor name>: <scale as the hex digits of its IEEE float32 bits, big-endian>

with scale = amax / 127. NV_TENSORRT_VERSION is major*10000 + minor*100 + patch from TensorRT 10 on
(NvInferRuntimeBase.h: NV_TENSORRT_VERSION_INT), and major*1000 + minor*100 + patch before it: 8.6.1 writes
"TRT-8601-...", 10.3.0 writes "TRT-100300-...", so 10.16 is "TRT-101600-...". TensorRT 11 removed implicit
INT8 (calibrators, dynamic ranges): it reads no cache, and bertrt writes Q/DQ graphs for it instead.
A scale obeys the ranges file's rule (``bertrt.ranges.check_amax``): amax / 127 is a positive finite float32.
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
from bertrt.errors import BertrtError
from bertrt.name_map import NameMap, apply_name_map
from bertrt.ranges import QMAX, check_amax

# Header algorithm -> the TensorRT calibrator class that writes and reads it. TensorRT only reuses a cache
# whose header names its calibrator's algorithm.
ALGORITHMS = {
    "EntropyCalibration2": "IInt8EntropyCalibrator2",
    "EntropyCalibration": "IInt8EntropyCalibrator",
    "MinMaxCalibration": "IInt8MinMaxCalibrator",
    "LegacyCalibration": "IInt8LegacyCalibrator",
}
# trtexec --calib and Polygraphy's default calibrator are IInt8EntropyCalibrator2.
DEFAULT_ALGORITHM = "EntropyCalibration2"
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")
_LINE = re.compile(r"^(.+): ([0-9a-fA-F]{1,8})$")
_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?(?:\.\d+)?(?:[.+-]\w+)*$")


def parse_version(version: str) -> tuple[int, int, int]:
    """(major, minor, patch) of "major.minor[.patch[.build]]" (tensorrt.__version__ or a user's --trt-version)."""
    m = _VERSION.match(str(version).strip())
    if not m:
        raise BertrtError(f"TensorRT version {version!r} is not of the form major.minor[.patch], e.g. 10.16")
    major, minor, patch = int(m[1]), int(m[2]), int(m[3] or 0)
    if minor > 99 or patch > 99:
        raise BertrtError(f"TensorRT version {version!r}: minor and patch must be below 100")
    return major, minor, patch


def trt_version_number(version: str) -> int:
    """NV_TENSORRT_VERSION for a "major.minor[.patch[.build]]" version: "10.16" -> 101600, "8.6.1" -> 8601."""
    major, minor, patch = parse_version(version)
    if major >= 11:
        raise BertrtError(f"TensorRT {version} has no implicit INT8 calibration (removed in 11.0), so it reads no "
                          f"calibration cache; give it a Q/DQ graph instead (bertrt calibrate qdq)")
    if major < 5:
        raise BertrtError(f"TensorRT {version} is too old (calibration caches here are for TensorRT 5 to 10)")
    return major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch


def version_text(number: int) -> str:
    """The version a header number stands for: 101600 -> "10.16.0", 8601 -> "8.6.1"."""
    if number >= 100000:
        return f"{number // 10000}.{number // 100 % 100}.{number % 100}"
    return f"{number // 1000}.{number // 100 % 10}.{number % 100}"


def scale_hex(amax: float) -> str:
    """The cache's text for amax: scale = amax / 127 rounded to float32, its bits as 8 hex digits."""
    return struct.pack(">f", np.float32(amax / QMAX)).hex()


def hex_scale(text: str) -> float:
    """The float32 scale that 8 (or fewer) hex digits of a cache line stand for."""
    return float(struct.unpack(">f", struct.pack(">I", int(text, 16)))[0])


def _check_algorithm(algorithm: str, path=None) -> None:
    if algorithm not in ALGORITHMS:
        raise BertrtError(f"unknown calibration algorithm {algorithm!r}; TensorRT's are {', '.join(ALGORITHMS)}", path)


def cache_text(amax: Mapping[str, float], trt_version: str, algorithm: str = DEFAULT_ALGORITHM) -> str:
    _check_algorithm(algorithm)
    amax = check_amax(amax, "<calibration cache>")
    lines = [f"TRT-{trt_version_number(trt_version)}-{algorithm}"]
    lines += [f"{name}: {scale_hex(amax[name])}" for name in sorted(amax)]
    return "\n".join(lines) + "\n"


def write_cache(path: str | os.PathLike, amax: Mapping[str, float], trt_version: str,
                algorithm: str = DEFAULT_ALGORITHM, name_map: NameMap | None = None, *,
                drop_unmapped: bool = False) -> str:
    """Write a calibration cache atomically (through the canonical -> fused name map); returns its text."""
    mapped = apply_name_map(check_amax(amax, path), name_map, drop_unmapped=drop_unmapped)
    if not mapped:
        why = "the name map dropped every tensor" if amax else "no tensor has a range"
        raise BertrtError(f"no ranges to write ({why})", path)
    text = cache_text(mapped, trt_version, algorithm)
    write_text(path, text)
    return text


@dataclass
class CalibrationCache:
    version: int  # NV_TENSORRT_VERSION of the header
    algorithm: str
    scales: dict[str, float]  # tensor name -> float32 scale
    text: str = ""  # the file as it was read

    @property
    def amax(self) -> dict[str, float]:
        return {name: scale * QMAX for name, scale in self.scales.items()}

    @property
    def calibrator(self) -> str:
        """The TensorRT calibrator class that reads this cache."""
        return ALGORITHMS[self.algorithm]

    def for_version(self, trt_version: str) -> tuple[str, bool]:
        """(the cache's text with the header of ``trt_version``, whether that changed it). The scales do not
        depend on the version, but TensorRT skips a cache whose header names another one."""
        header = f"TRT-{trt_version_number(trt_version)}-{self.algorithm}"
        first, _, rest = self.text.lstrip().partition("\n")
        return f"{header}\n{rest}", first.strip() != header


def parse_cache(text: str, path: str | os.PathLike = "<cache>") -> CalibrationCache:
    lines = [ln.strip() for ln in text.splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    if not lines:
        raise BertrtError("empty calibration cache", path)
    header = _HEADER.match(lines[0])
    if not header:
        raise BertrtError(f"first line {lines[0][:60]!r} is not a TensorRT cache header 'TRT-<version>-<algorithm>'",
                          path)
    _check_algorithm(header[2], path)
    scales = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        m = _LINE.match(line)
        if not m or not m[1].strip():
            raise BertrtError(f"line {number}: {line[:60]!r} is not '<tensor>: <hex float32 scale>'", path)
        name, scale = m[1].strip(), hex_scale(m[2])
        if name in scales:
            raise BertrtError(f"line {number}: tensor '{name}' has a second scale", path)
        if not np.isfinite(scale) or scale <= 0:
            raise BertrtError(f"line {number}: tensor '{name}' has scale {m[2]} ({scale}), expected a positive "
                              "finite float32", path)
        scales[name] = scale
    return CalibrationCache(version=int(header[1]), algorithm=header[2], scales=scales, text=text)


def read_cache(path: str | os.PathLike) -> CalibrationCache:
    path = Path(path)
    if not path.is_file():
        raise BertrtError("calibration cache not found" if not path.exists() else "is not a file", path)
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise BertrtError("not a text calibration cache (non-ASCII bytes)", path) from None
    except OSError as e:
        raise BertrtError(f"cannot read the calibration cache: {e.strerror}", path) from None
    return parse_cache(text, path)
