"""Downloads the former demo offered: NGC's BERT SQuAD TF checkpoints and the SQuAD v1.1 JSON files.

Every file is streamed to a temporary file beside its destination, checked (size, and sha256 where the
project knows it) and renamed into place; a checkpoint zip is unpacked into a folder that appears only
when complete. Any failure leaves nothing behind and is one line naming the URL and the problem.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from bertrt.atomic import atomic_dir, atomic_path
from bertrt.errors import BertrtError
from bertrt.progress import Progress, task

NGC_BASE_URL = "https://api.ngc.nvidia.com/v2/models/nvidia"
SQUAD_BASE_URL = "https://rajpurkar.github.io/SQuAD-explorer/dataset"
NGC_VERSION = "19.03.1"
CHUNK = 1 << 20
TIMEOUT_S = 60


@dataclass(frozen=True)
class RemoteFile:
    name: str  # file name under the destination folder (or the folder, for a zip)
    path: str  # URL path under the base URL
    sha256: str | None  # None: not known to the project; the file is checked for size and format only
    unzip: bool = False


# sha256 of the SQuAD v1.1 files as published (also pinned by other projects' fetchers). NGC's checkpoint
# zips have no published sha256 this project knows of: those downloads are checked as zips only.
SQUAD_SHA256 = {
    "train-v1.1.json": "3527663986b8295af4f7fcdff1ba1ff3f72d07d61a20f487cb238a6ef92fd955",
    "dev-v1.1.json": "95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9",
}


def _ngc(size: str, seq: int) -> tuple[RemoteFile, ...]:
    model = f"bert_tf_ckpt_{size}_qa_squad11_amp_{seq}"
    return (RemoteFile(f"{model}_{NGC_VERSION}", f"{model}/versions/{NGC_VERSION}/zip", None, unzip=True),)


ITEMS: dict[str, tuple[str, tuple[RemoteFile, ...]]] = {
    "squad-v1.1": (SQUAD_BASE_URL, tuple(RemoteFile(n, n, h) for n, h in SQUAD_SHA256.items())),
    "bert-base-384": (NGC_BASE_URL, _ngc("base", 384)),
    "bert-large-384": (NGC_BASE_URL, _ngc("large", 384)),
    "bert-base-128": (NGC_BASE_URL, _ngc("base", 128)),
    "bert-large-128": (NGC_BASE_URL, _ngc("large", 128)),
}


def url_of(base_url: str, item: RemoteFile) -> str:
    return f"{base_url.rstrip('/')}/{item.path}"


def fetch(url: str, dest: Path, sha256: str | None = None, progress: Progress | None = None) -> str:
    """Stream url into dest (atomically); its sha256. A BertrtError naming the URL for any failure."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, atomic_path(dest) as tmp:
            total = response.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            received = 0
            with open(tmp, "wb") as out, task(progress, f"download {dest.name}", total, "bytes") as advance:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    advance(len(chunk))
            if total is not None and received != total:
                raise BertrtError(f"connection closed after {received} of {total} bytes", url)
            if sha256 is not None and digest.hexdigest() != sha256:
                raise BertrtError(f"sha256 mismatch: got {digest.hexdigest()}, expected {sha256}", url)
    except urllib.error.HTTPError as e:
        raise BertrtError(f"HTTP {e.code} {e.reason}", url) from None
    except urllib.error.URLError as e:
        reason = e.reason.strerror if isinstance(e.reason, OSError) and e.reason.strerror else e.reason
        raise BertrtError(f"cannot connect: {reason}", url) from None
    except (TimeoutError, ConnectionError) as e:
        raise BertrtError(f"download failed: {e}", url) from None
    return digest.hexdigest()


def _unzip(zip_path: Path, folder: Path, url: str) -> None:
    """Unpack into folder (atomically), refusing members that would land outside it."""
    try:
        with zipfile.ZipFile(zip_path) as zf, atomic_dir(folder) as tmp:
            root = tmp.resolve()
            for member in zf.infolist():
                target = (tmp / member.filename).resolve()
                if root not in target.parents and target != root:
                    raise BertrtError(f"zip member {member.filename!r} points outside the folder", url)
            zf.extractall(tmp)
    except zipfile.BadZipFile:
        raise BertrtError("the download is not a zip archive", url) from None


def download(name: str, out_dir, *, base_url: str | None = None, progress: Progress | None = None) -> list[Path]:
    """Download item ``name`` (see ITEMS) into out_dir; the paths written (files, or checkpoint folders)."""
    if name not in ITEMS:
        raise BertrtError(f"unknown download {name!r}; known: {', '.join(ITEMS)}")
    default_base, items = ITEMS[name]
    base = base_url or default_base
    out_dir = Path(out_dir)
    written = []
    for item in items:
        url = url_of(base, item)
        dest = out_dir / item.name
        if not item.unzip:
            fetch(url, dest, item.sha256, progress)
            written.append(dest)
            continue
        zip_path = out_dir / f".{item.name}.zip"
        try:
            fetch(url, zip_path, item.sha256, progress)
            _unzip(zip_path, dest, url)
        finally:
            if zip_path.exists():
                zip_path.unlink()
        written.append(dest)
    return written


def describe() -> list[tuple[str, str, str]]:
    """(name, URL, checksum status) of each file every item downloads, for listings."""
    rows = []
    for name, (base, items) in ITEMS.items():
        for item in items:
            rows.append((name, url_of(base, item), "sha256 known" if item.sha256 else "no known sha256"))
    return rows
