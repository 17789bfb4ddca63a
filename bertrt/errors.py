"""The one error type the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations

import os

import click


class BertrtError(click.ClickException):
    """A problem with the user's input or environment, named after the file it concerns.

    click prints it as ``Error: <file>: <problem>`` and exits with code 1.
    """

    exit_code = 1

    def __init__(self, problem: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class ToolMissing(BertrtError):
    """A tool the command needs (TensorRT, CUDA) is not installed here. Exit code 3."""

    exit_code = 3
