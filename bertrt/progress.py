"""Progress of long work: the library reports it through a callback, the caller renders it.

A long step opens a task and advances it; it prints nothing itself::

    with task(progress, "calibrate smooth", total=len(feeds), unit="samples") as advance:
        for feed in feeds:
            ...
            advance()

``progress`` is any callable taking a ``Task``: it is called when the task starts, each time it advances and
when it ends; None (or False) reports nothing. The ``bertrt`` command renders tasks with ``for_stream``: a bar
per counted task on a terminal, and, when the output is a file or a pipe, a plain line at least every
``EVERY_S`` seconds while anything runs ("calibrate smooth: 40/100 samples, 2m10s"), so that a log of a long
run has no silent stretch.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, TypeVar

EVERY_S = 10.0  # the longest a log goes without a line while work runs
T = TypeVar("T")


@dataclass
class Task:
    """One long step: what it is, how far it got (``done`` of ``total`` ``unit``; total None if unknown)."""

    label: str
    total: int | None = None
    unit: str = ""
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: bool = False

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def line(self) -> str:
        """``calibrate smooth: 40/100 samples, 2m10s`` (``, done`` once it has ended)."""
        count = f"{self.done}/{self.total}" if self.total is not None else (str(self.done) if self.done else "")
        parts = [f"{count} {self.unit}".strip()] if count else []
        parts.append(duration(self.elapsed))
        if self.finished:
            parts.append("done")
        return f"{self.label}: {', '.join(parts)}"


Progress = Callable[[Task], None]


def _silent(_task: Task) -> None:
    pass


@contextmanager
def task(progress: Progress | None, label: str, total: int | None = None, unit: str = ""):
    """Report a task to ``progress`` while the block runs; yields ``advance(n=1)``."""
    t = Task(label, total, unit)
    report = progress or _silent
    report(t)

    def advance(n: int = 1) -> None:
        t.done += n
        report(t)

    try:
        yield advance
    finally:
        t.finished = True
        report(t)


def iterate(progress: Progress | None, items: Iterable[T], label: str, unit: str = "",
            total: int | None = None) -> Iterator[T]:
    """The items, one task advanced by one after each (total: ``len(items)`` where it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with task(progress, label, total, unit) as advance:
        for item in items:
            yield item
            advance()


def duration(seconds: float) -> str:
    """45s, 2m10s, 1h02m."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


# ---------------------------------------------------------------- renderers (the command line's side)


class LineReporter:
    """Plain lines for a log: at least one every ``every`` seconds while a task is open or since the last
    message, and one when a task of a second or more ends. A background thread writes the periodic lines, so
    a step that reports nothing for minutes (a conversion, one big ONNX Runtime run) still shows it runs."""

    def __init__(self, stream=None, every: float = EVERY_S):
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self._open: list[Task] = []
        self._message: tuple[str, float] | None = None
        self._last_write = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, t: Task) -> None:
        with self._lock:
            if t.finished:
                self._open = [o for o in self._open if o is not t]
                if t.elapsed >= 1.0:
                    self._write(t.line())
            elif not any(o is t for o in self._open):
                self._open.append(t)
                self._start()

    def log(self, message: str) -> None:
        """A message line (a step beginning); until the next one the periodic lines repeat it with its time."""
        with self._lock:
            self._write(message)
            self._message = (message, time.monotonic())
            self._start()

    def status(self) -> str | None:
        """The line a quiet moment gets: the innermost open task, or the last message and how long ago."""
        if self._open:
            return self._open[-1].line()
        if self._message is not None:
            text, at = self._message
            return f"... {text} ({duration(time.monotonic() - at)})"
        return None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except ValueError:  # the stream was closed under us (the command has ended)
            self._stop.set()
        self._last_write = time.monotonic()

    def _start(self) -> None:
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._tick, name="bertrt-progress", daemon=True)
            self._thread.start()

    def _tick(self) -> None:
        while not self._stop.wait(min(1.0, self.every / 4)):
            with self._lock:
                if time.monotonic() - self._last_write >= self.every and (line := self.status()) is not None:
                    self._write(line)


class BarReporter:
    """On a terminal: a click progress bar per counted task, a line for other tasks that take a second or more."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self._bars: dict[int, list] = {}  # id(task) -> [bar, done so far]

    def __call__(self, t: Task) -> None:
        import click

        entry = self._bars.get(id(t))
        if t.total is None:
            if t.finished and t.elapsed >= 1.0:
                click.echo(t.line(), file=self.stream)
            return
        if entry is None and not t.finished:
            bar = click.progressbar(length=t.total, label=t.label, file=self.stream, show_pos=True)
            bar.__enter__()
            self._bars[id(t)] = entry = [bar, 0]
        if entry is not None:
            entry[0].update(t.done - entry[1])
            entry[1] = t.done
            if t.finished:
                entry[0].__exit__(None, None, None)
                del self._bars[id(t)]

    def log(self, message: str) -> None:
        import click

        click.echo(message, file=self.stream)

    def close(self) -> None:
        for bar, _done in self._bars.values():
            bar.__exit__(None, None, None)
        self._bars.clear()


def for_stream(stream=None, every: float = EVERY_S):
    """The renderer for a stream: bars on a terminal, periodic lines otherwise."""
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return BarReporter(stream) if isatty is not None and isatty() else LineReporter(stream, every)
