"""`bertrt calibrate`: the four commands end to end on the tiny model, and their errors."""

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from bertrt.calib_cache import read_cache
from bertrt.cli import cli

CALIB_JSON = Path(__file__).parents[1] / "calibrate" / "data" / "pydoc_qa_calib.json"
QAT = Path(__file__).parent / "fixtures" / "qat_qdq.onnx"


def _run(*args):
    return CliRunner().invoke(cli, ["calibrate", *map(str, args)])


@pytest.fixture(scope="module")
def ranges(tiny_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "ranges.json"
    r = _run("ranges", tiny_onnx, "--squad-json", CALIB_JSON, "--calib-num", 6, "--method", "minmax", "-o", out)
    assert r.exit_code == 0, r.output
    return out


def test_ranges_cache_qdq_chain(tiny_onnx, ranges, tmp_path):
    amax = json.loads(ranges.read_text())
    assert len(amax) == 52 and list(amax) == sorted(amax)
    assert amax["Mul_14"] == 10.0  # the default GELU clamp
    r = _run("cache", ranges, "--trt-version", "10.16", "-o", tmp_path / "c.cache")
    assert r.exit_code == 0, r.output
    cache = read_cache(tmp_path / "c.cache")
    assert (cache.version, cache.algorithm, len(cache.scales)) == (101600, "EntropyCalibration2", 52)
    r = _run("qdq", tiny_onnx, "--ranges", ranges, "-o", tmp_path / "q.onnx")
    assert r.exit_code == 0, r.output
    assert sum(n.op_type == "QuantizeLinear" for n in onnx.load(tmp_path / "q.onnx").graph.node) == 9


def test_name_map_keys_ranges_by_fused_names(ranges, tmp_path):
    (tmp_path / "map.json").write_text(json.dumps({"Add_5": "qkv", "Add_6": "qkv", "Add_7": "qkv"}))
    r = _run("cache", ranges, "--trt-version", "8.6.1", "--name-map", tmp_path / "map.json", "-o", tmp_path / "c")
    assert r.exit_code == 0, r.output
    scales = read_cache(tmp_path / "c").scales
    amax = json.loads(ranges.read_text())
    assert "Add_5" not in scales and scales["qkv"] * 127 == pytest.approx(max(amax[f"Add_{i}"] for i in (5, 6, 7)))


def test_qat_command(tmp_path):
    r = _run("qat", QAT, "-o", tmp_path / "qat.json")
    assert r.exit_code == 0, r.output
    assert len(json.loads((tmp_path / "qat.json").read_text())) == 34


@pytest.mark.parametrize("case", ["bad_json", "negative", "trt11", "missing_model", "both_sources", "not_qdq"])
def test_errors_leave_no_output(case, tiny_onnx, ranges, tmp_path):
    out = tmp_path / "out"
    bad = tmp_path / "bad.json"
    if case == "bad_json":
        bad.write_text("{not json")
        r = _run("cache", bad, "--trt-version", "10.16", "-o", out)
    elif case == "negative":
        bad.write_text('{"a": -1}')
        r = _run("qdq", tiny_onnx, "--ranges", bad, "-o", out)
    elif case == "trt11":
        r = _run("cache", ranges, "--trt-version", "11.1", "-o", out)
    elif case == "missing_model":
        r = _run("ranges", tmp_path / "none.onnx", "--squad-json", CALIB_JSON, "-o", out)
    elif case == "both_sources":
        r = _run("ranges", tiny_onnx, "--squad-json", CALIB_JSON, "--npz-dir", tmp_path, "-o", out)
    else:
        r = _run("qat", tiny_onnx, "-o", out)
    assert r.exit_code != 0
    assert "Error" in r.output and "Traceback" not in r.output
    if case in ("bad_json", "negative", "missing_model", "not_qdq"):
        assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["bad.json"])
