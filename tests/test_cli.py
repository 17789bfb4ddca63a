"""The `bertrt` root: every stage listed, help fast (no stage imported to list them), errors as one line."""

import subprocess
import sys

from click.testing import CliRunner

from bertrt.cli import COMMANDS, cli


def test_help_lists_every_stage_without_importing_them():
    code = ("import sys; from click.testing import CliRunner; from bertrt.cli import cli; "
            "r = CliRunner().invoke(cli, ['--help']); print(r.output); "
            "print('LOADED', [m for m in ('tensorflow', 'onnxruntime', 'bertrt.surgery.pipeline') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in ("zoo", "convert", "surgery", "calibrate", "build", "infer", "squad", "perf", "compare"):
        assert f"\n  {name} " in out
    assert "LOADED []" in out


def test_every_stage_has_help():
    for name in COMMANDS:
        r = CliRunner().invoke(cli, [name, "--help"])
        assert r.exit_code == 0 and "Usage: " in r.output, name
