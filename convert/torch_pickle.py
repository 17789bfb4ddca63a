"""Read a PyTorch ``pytorch_model.bin`` (torch.save's zip format) into numpy arrays, without torch.

The file is a zip holding ``<root>/data.pkl`` (a pickled dict of tensors) and one ``<root>/data/<key>`` file
per storage. The unpickler here accepts only what a state dict holds (OrderedDict, tensor rebuilds, typed
storages) and refuses any other object, so reading a file never runs code from it.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from bertrt.errors import BertrtError

BFLOAT16 = "bfloat16"  # numpy has no bfloat16: read as uint16 and widened to float32
_STORAGES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16, "BFloat16Storage": BFLOAT16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _Storage:
    def __init__(self, dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, *_rest):
    itemsize = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * itemsize for s in stride))
    return np.array(view)  # a copy: the storage may be shared and is read-only


def _rebuild_parameter(data, *_rest):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _Storage(dtype) for name, dtype in _STORAGES.items()},
}


def _widen(raw: bytes, dtype) -> np.ndarray:
    if dtype == BFLOAT16:
        return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, dtype)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """name -> array of a torch.save'd state dict (bfloat16 tensors come back as float32)."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise BertrtError("not a PyTorch zip file (torch.save of PyTorch 1.6 or newer); save the model with "
                          "safetensors (model.safetensors) or a newer PyTorch", path)
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise BertrtError("not a torch.save file: no single data.pkl inside", path)
        root = pickles[0][: -len("data.pkl")]
        storages: dict[str, np.ndarray] = {}

        class Unpickler(pickle.Unpickler):
            def find_class(self, module, name):
                if (module, name) not in _ALLOWED:
                    raise BertrtError(f"holds a {module}.{name} object, which a state dict of tensors does not; "
                                      "refusing to unpickle it", path)
                return _ALLOWED[module, name]

            def persistent_load(self, pid):
                if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and isinstance(pid[1], _Storage)):
                    raise BertrtError(f"unknown persistent object {pid!r:.60}", path)
                key = str(pid[2])
                if key not in storages:
                    try:
                        raw = archive.read(f"{root}data/{key}")
                    except KeyError:
                        raise BertrtError(f"storage {key} is missing from the archive", path) from None
                    storages[key] = _widen(raw, pid[1].dtype)
                return storages[key]

        try:
            with archive.open(pickles[0]) as f:
                state = Unpickler(f).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
            raise BertrtError(f"cannot read the pickled state dict: {e}", path) from None
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise BertrtError("does not hold a state dict (a dict of tensors)", path)
    return dict(state)
