"""The errors bertrt's library raises: plain exceptions that name the file, the problem and a hint.

They know nothing of the command line: the ``bertrt`` command turns each into a one-line
``Error: <file>: <problem>; <hint>`` and an exit code (``bertrt.cli``), and a program using the library
catches them like any other exception.
"""

from __future__ import annotations

import os


class BertrtError(Exception):
    """A problem with the user's input or environment, named after the file it concerns. Exit code 1."""

    exit_code = 1

    def __init__(self, problem: str, path: str | os.PathLike | None = None, hint: str | None = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        self.hint = hint
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = f"{self.path}: {self.problem}" if self.path else self.problem
        return f"{text}; {self.hint}" if self.hint else text

    def at(self, path: str | os.PathLike | None) -> "BertrtError":
        """The same error, naming ``path`` if it names no file yet (for a caller that knows which file it read)."""
        if self.path is not None or path is None:
            return self
        return type(self)(self.problem, path, self.hint)


class ToolMissing(BertrtError):
    """A tool the command needs (TensorRT, CUDA) is not installed here. Exit code 3."""

    exit_code = 3
