"""Atomic file writes: write beside the destination, rename on success, remove on failure.

A destination that cannot be written (a folder in its place, a file where its folder should be, no space, no
permission) is a BertrtError naming it, never a traceback, and leaves nothing behind; so does a SIGTERM
(``bertrt.cli`` turns it into SystemExit, which runs the clean-ups here as an interrupt does).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from bertrt.errors import BertrtError


def check_destination(dst: str | os.PathLike) -> Path:
    """dst, if a file can be written there; a BertrtError naming it otherwise (checked before long work too)."""
    dst = Path(dst)
    if dst.is_dir():
        raise BertrtError("is a folder; give the name of a file to write", dst)
    _check_folders(dst)
    return dst


def check_folder_destination(dst: str | os.PathLike) -> Path:
    """dst, if a folder can be written there; a BertrtError naming it otherwise."""
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise BertrtError("is a file; give the name of a folder to write", dst)
    _check_folders(dst)
    return dst


def _check_folders(dst: Path) -> None:
    """The nearest existing folder above dst must be a folder that can be written."""
    for folder in (dst.parent, *dst.parent.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                raise BertrtError(f"cannot be written: {folder} is not a folder", dst)
            if not os.access(folder, os.W_OK | os.X_OK):
                raise BertrtError(f"cannot be written: no permission to write in {folder}", dst)
            break


@contextlib.contextmanager
def writing(dst: str | os.PathLike):
    """Around code that only writes dst: an OSError becomes a BertrtError naming dst and the cause."""
    try:
        yield
    except OSError as e:
        raise BertrtError(f"cannot be written: {e.strerror or e}", dst) from None


@contextlib.contextmanager
def atomic_path(dst: str | os.PathLike):
    """Yield a temporary path in dst's folder; on success it replaces dst, on error it is removed."""
    dst = check_destination(dst)
    with writing(dst):
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
        os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with writing(dst):
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result is an ordinary file
            os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def staging_dir(dst: str | os.PathLike):
    """Yield a private temporary folder beside dst for files that end up renamed into place (a model and its
    external data); it is removed afterwards, whatever happens."""
    dst = check_destination(dst)
    with writing(dst):
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(dst: str | os.PathLike):
    """Yield a temporary folder beside dst; on success it becomes dst (replacing an older one)."""
    dst = check_folder_destination(dst)
    with writing(dst):
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
        with writing(dst):
            if dst.exists():
                old = dst.with_name(f".{dst.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(dst, old)
                os.replace(tmp, dst)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(dst: str | os.PathLike, text: str) -> None:
    with atomic_path(dst) as tmp, writing(dst):
        tmp.write_text(text)
