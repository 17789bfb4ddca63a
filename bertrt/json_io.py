"""Reading a JSON file with one clear error line for each way it can be wrong."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bertrt.errors import BertrtError


def read_json(path: str | os.PathLike, what: str):
    """The parsed file; ``what`` names it in the error ("SQuAD file", "ranges", ...)."""
    path = Path(path)
    if not path.is_file():
        raise BertrtError(f"{what} not found", path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise BertrtError(f"not UTF-8 text ({e.reason} at byte {e.start})", path) from None
    except json.JSONDecodeError as e:
        raise BertrtError(f"not JSON: {e.msg} at line {e.lineno} column {e.colno}", path) from None
