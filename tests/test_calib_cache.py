"""TensorRT calibration cache: header, hex scales, round trip, errors."""

import json

import numpy as np
import pytest

from bertrt.calib_cache import (cache_text, hex_scale, parse_cache, read_cache, scale_hex, trt_version_number,
                                    write_cache)
from bertrt.name_map import apply_name_map
from bertrt.errors import BertrtError
from bertrt.ranges import read_ranges


def test_version_numbers_follow_nv_tensorrt_version():
    # TensorRT >= 10: major*10000 + minor*100 + patch; before: major*1000 + minor*100 + patch.
    assert trt_version_number("10.16") == 101600
    assert trt_version_number("10.3.0") == 100300  # header seen in NVIDIA's TAO caches: TRT-100300-...
    assert trt_version_number("10.16.1.11") == 101601  # the build number is not part of it
    assert trt_version_number("8.6.1") == 8601  # TRT-8601-EntropyCalibration2


def test_hand_computed_scale_hex():
    # amax 1 -> scale 1/127 = 2^-7 * (128/127); exponent -7 + 127 = 120 = 0b01111000,
    # mantissa (128/127 - 1) * 2^23 = 66052.03 -> 66052 = 0x10204;
    # bits 0 01111000 00000010000001000000100 = 0x3c010204.
    assert scale_hex(1.0) == "3c010204"
    # amax 10 -> scale 0.0787401575 = 2^-4 * 1.2598425; exponent 123 = 0b01111011,
    # mantissa 0.2598425197 * 2^23 = 2179717.04 -> 0x214285; bits 0 01111011 01000010100001010000101 = 0x3da14285.
    assert scale_hex(10.0) == "3da14285"
    assert hex_scale("3c010204") == np.float32(1 / 127)


def test_cache_text_for_trt_10_16():
    text = cache_text({"b": 10.0, "a": 1.0}, "10.16")
    assert text == "TRT-101600-EntropyCalibration2\na: 3c010204\nb: 3da14285\n"


def test_round_trip_keeps_amax_to_float32_precision(tmp_path):
    rng = np.random.default_rng(0)
    amax = {f"layer_{i}/t:0": float(v) for i, v in enumerate(rng.uniform(1e-3, 50.0, 200))}
    path = tmp_path / "calib.cache"
    write_cache(path, amax, "10.16")
    cache = read_cache(path)
    assert cache.version == 101600 and cache.algorithm == "EntropyCalibration2"
    assert cache.scales.keys() == amax.keys()
    for name, value in amax.items():
        assert np.float32(cache.scales[name]) == np.float32(value / 127)  # the stored float32, bit for bit
        assert cache.amax[name] == pytest.approx(value, rel=2 ** -23, abs=0)


@pytest.mark.parametrize("value", [0.0, -1.0, float("inf"), float("nan"), 1e300, 1e-50, "1.0", True, None])
def test_one_rule_for_an_amax_in_the_writer_and_the_reader(tmp_path, value):
    # Positive, finite, and a float32 scale amax / 127 that is neither 0 nor inf (1e300 was written as 7f800000,
    # 0 as 00000000); the same rule as the ranges file's, naming the tensor (#14).
    path = tmp_path / "calib.cache"
    with pytest.raises(BertrtError, match="amax of 'bad'"):
        write_cache(path, {"good": 1.0, "bad": value}, "10.16")
    assert not path.exists() and not list(tmp_path.iterdir())
    ranges = tmp_path / "ranges.json"
    ranges.write_text(json.dumps({"good": 1.0, "bad": value}))
    with pytest.raises(BertrtError, match=f"{ranges}: amax of 'bad'"):
        read_ranges(ranges)


@pytest.mark.parametrize("line, problem", [
    ("x: 0x3c010a14", "line 2"),  # Python's int(.., 16) took the 0x; TensorRT writes bare hex digits
    ("x: 3c010a143c01", "line 2"),  # 12 digits are no float32
    ("x: 00000000", "scale 00000000"),
    ("x: 7f800000", "scale 7f800000"),
    ("x: 7fc00000", "scale 7fc00000"),  # NaN
    ("x: bc010204", "scale bc010204"),  # negative
])
def test_the_one_cache_reader_refuses_what_either_reader_let_through(tmp_path, line, problem):
    path = tmp_path / "c.cache"
    path.write_text(f"TRT-101600-EntropyCalibration2\n{line}\n")
    with pytest.raises(BertrtError, match=problem):
        read_cache(path)
    path.write_text("TRT-101600-SomeCalibration\nx: 3c010204\n")  # the build's reader knew the names, this one not
    with pytest.raises(BertrtError, match="unknown calibration algorithm 'SomeCalibration'"):
        read_cache(path)


def test_the_header_is_rewritten_for_another_tensorrt():
    cache = parse_cache("TRT-101600-MinMaxCalibration\na: 3c010204\n")
    text, changed = cache.for_version("10.3.0.26")
    assert changed and text == "TRT-100300-MinMaxCalibration\na: 3c010204\n"
    assert cache.for_version("10.16.0") == (cache.text, False)
    assert parse_cache(text).scales == cache.scales


def test_name_map_renames_merges_by_max_and_drops():
    amax = {"q": 1.0, "k": 3.0, "v": 2.0, "ln": 4.0, "gone": 5.0}
    mapped = apply_name_map(amax, {"q": "qkv", "k": "qkv", "v": "qkv", "gone": None})
    assert mapped == {"ln": 4.0, "qkv": 3.0}
    assert apply_name_map(amax, {"ln": "fused_ln"}, drop_unmapped=True) == {"fused_ln": 4.0}


@pytest.mark.parametrize("version", ["11.0", "11.1.0", "ten", "10", "10.100"])
def test_bad_versions_are_refused_and_write_nothing(tmp_path, version):
    path = tmp_path / "calib.cache"
    with pytest.raises(BertrtError):
        write_cache(path, {"a": 1.0}, version)
    assert not path.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("text, problem", [
    ("", "empty"),
    ("TRT-10-\na: 3c010204\n", "header"),
    ("TRT-101600-EntropyCalibration2\na 3c010204\n", "line 2"),
    ("TRT-101600-EntropyCalibration2\na: 3c01020g\n", "line 2"),
    ("TRT-101600-EntropyCalibration2\na: 3c0102041\n", "line 2"),
])
def test_parse_errors(text, problem):
    with pytest.raises(BertrtError, match=problem):
        parse_cache(text, "x.cache")
