"""Progress: the library reports through a callback; a log gets a line at least every few seconds."""

import io
import subprocess
import sys
import time

from click.testing import CliRunner

from bertrt.cli import cli
from bertrt.errors import BertrtError, ToolMissing
from bertrt.progress import LineReporter, Task, duration, for_stream, iterate, task


def test_task_reports_start_advances_and_end():
    seen = []
    with task(lambda t: seen.append((t.done, t.finished)), "calibrate smooth", total=3, unit="samples") as advance:
        advance()
        advance(2)
    assert seen == [(0, False), (1, False), (3, False), (3, True)]
    assert list(iterate(None, [1, 2], "silent")) == [1, 2]  # no callback: nothing reported, nothing fails
    counts = []
    assert list(iterate(lambda t: counts.append((t.done, t.total)), [5, 6, 7], "x")) == [5, 6, 7]
    assert counts == [(0, 3), (1, 3), (2, 3), (3, 3), (3, 3)]


def test_lines_say_what_how_far_and_how_long():
    t = Task("calibrate smooth", total=100, unit="samples", done=40, started=time.monotonic() - 130)
    assert t.line() == "calibrate smooth: 40/100 samples, 2m10s"
    assert Task("convert", started=time.monotonic() - 5).line() == "convert: 5s"
    assert [duration(s) for s in (45, 130, 3720)] == ["45s", "2m10s", "1h02m"]


def test_a_quiet_step_still_gets_periodic_lines():
    out = io.StringIO()
    r = LineReporter(out, every=0.2)
    r.log("tracing the forward pass")
    time.sleep(0.75)  # a step that reports nothing
    with task(r, "calibrate ranges", total=10, unit="samples") as advance:
        advance(4)
        time.sleep(1.1)
    r.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "tracing the forward pass"
    assert any(line.startswith("... tracing the forward pass (") for line in lines[1:3])
    assert any(line.startswith("calibrate ranges: 4/10 samples, ") for line in lines)
    assert lines[-1].startswith("calibrate ranges: 4/10 samples") and lines[-1].endswith(", done")
    assert isinstance(for_stream(io.StringIO()), LineReporter)  # not a terminal: lines, not a bar


def test_library_errors_know_nothing_of_click():
    e = BertrtError("not a ranges file", "r.json", hint="write it with bertrt calibrate ranges")
    assert not any(c.__module__.startswith("click") for c in type(e).__mro__)
    assert str(e) == "r.json: not a ranges file; write it with bertrt calibrate ranges"
    assert e.at("other.json") is e and BertrtError("x").at("m.onnx").path == "m.onnx"
    assert ToolMissing("no TensorRT").exit_code == 3 and isinstance(ToolMissing("x").at("p"), ToolMissing)
    code = ("import sys; import bertrt.calibrate.stats, bertrt.calibrate.smooth, bertrt.calibrate.evaluate, "
            "bertrt.run.features, bertrt.run.perf, bertrt.run.engine_build, bertrt.convert.download, "
            "bertrt.surgery.pipeline; print('click' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_the_command_line_turns_a_library_error_into_one_line(tmp_path):
    bad = tmp_path / "ranges.json"
    bad.write_text('{"a": "x"}')
    result = CliRunner().invoke(cli, ["calibrate", "cache", str(bad), "--trt-version", "10.16", "-o",
                                      str(tmp_path / "c.cache")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == f"Error: {bad}: amax of 'a' is 'x', expected a number"
    assert not (tmp_path / "c.cache").exists()


def test_a_terminal_gets_a_bar():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    r = for_stream(out)
    with task(r, "calibrate ranges", total=3, unit="samples") as advance:
        for _ in range(3):
            advance()
    r.log("done")
    r.close()
    text = out.getvalue()
    assert "calibrate ranges  [" in text and "3/3" in text and text.endswith("done\n")
