"""bertrt perf: the demo's statistics, its random inputs, the table and the JSON."""

import importlib.util
import json

import numpy as np
import pytest
from click.testing import CliRunner

from bertrt.cli import cli
from bertrt.run.perf import percentile, random_feeds, summarize, time_loop

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
FIELDS = {"batch", "seq", "iterations", "warmup", "total_s", "avg_ms", "p50_ms", "p95_ms", "p99_ms",
          "sequences_per_s"}


def test_statistics_by_hand():
    times = [t / 1000 for t in (7, 1, 2, 9, 3, 10, 4, 5, 6, 8)]  # 1..10 ms, shuffled
    r = summarize(times, batch=4, seq=128, warmup=2)
    assert r.avg_ms == pytest.approx(5.5)
    assert r.p50_ms == pytest.approx(6.0)  # sorted[int(10 * 0.5)] = sorted[5]
    assert r.p95_ms == pytest.approx(10.0)  # sorted[9]
    assert r.p99_ms == pytest.approx(10.0)
    assert r.total_s == pytest.approx(0.055)
    assert r.sequences_per_s == pytest.approx(4 / 0.0055)
    ordered = list(range(200))
    assert percentile(ordered, 0.95) == 190 and percentile(ordered, 0.99) == 198


def test_random_inputs_as_the_demo_made_them():
    a, b = random_feeds(8, 384, 30522), random_feeds(8, 384, 30522)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
        assert a[name].dtype == np.int32 and a[name].shape == (8, 384)
    assert 0 <= a["input_ids"].min() and a["input_ids"].max() < 30522
    assert set(np.unique(a["segment_ids"])) == {0, 1}
    assert (a["input_mask"] == 1).all()
    assert not np.array_equal(a["input_ids"], random_feeds(8, 384, 30522, seed=1)["input_ids"])


def test_time_loop_counts_warmup_and_iterations():
    calls = []
    times = time_loop(lambda: calls.append(1) or 0.25, warmup=3, iterations=5)
    assert len(calls) == 8 and times == [0.25] * 5


def test_perf_cli_table_and_json(tiny_onnx, tmp_path):
    out = tmp_path / "perf.json"
    result = CliRunner().invoke(cli, ["perf", "--onnx", str(tiny_onnx), "-b", "1,2", "-s", "128", "-w", "2",
                                      "-i", "10", "--report", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["batch", "seq", "iters"])
    rows = [line.split() for line in lines[header + 1:header + 3]]
    assert [r[:3] for r in rows] == [["1", "128", "10"], ["2", "128", "10"]]
    report = json.loads(out.read_text())
    assert report["backend"] == "onnxruntime" and report["timing"] == "wall clock" and report["seq"] == 128
    assert [r["batch"] for r in report["results"]] == [1, 2]
    for r in report["results"]:
        assert set(r) == FIELDS and r["iterations"] == 10 and r["warmup"] == 2
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["sequences_per_s"] == pytest.approx(r["batch"] * 1000 / r["avg_ms"])
        assert r["avg_ms"] == pytest.approx(r["total_s"] * 1000 / 10)


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_perf_engine_without_tensorrt(tmp_path):
    engine = tmp_path / "e.plan"
    engine.write_bytes(b"\0")
    result = CliRunner().invoke(cli, ["perf", "--engine", str(engine), "-b", "1,8"])
    assert result.exit_code == 3 and "pip install tensorrt" in result.output
    assert "bertrt perf --engine" in result.output
