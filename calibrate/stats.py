"""Per-tensor INT8 ranges of a canonical BERT model, measured with onnxruntime.quantization's calibrators.

amax = max(|min|, |max|) of the range the calibrator gives (TensorRT's ranges are symmetric). Only the
tensors of ``bertrt.calibrate.tensors.select_tensors`` are added to the graph as outputs, and the samples
are fed one collect call at a time, so the histograms grow but the kept activations never exceed one
sample's worth (a BERT-Base at seq 384 stays within a few hundred MB above the model).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper
from onnxruntime.quantization.calibrate import (
    CalibrationMethod,
    EntropyCalibrater,
    MinMaxCalibrater,
    PercentileCalibrater,
)

from bertrt.calibrate.data_source import Feed, FeedReader
from bertrt.calibrate.tensors import select_tensors
from bertrt.errors import BertrtError
from bertrt.onnx_io import EXTERNAL_DATA_THRESHOLD, load_model, model_bytes, save_model
from bertrt.progress import Progress, iterate, task

METHODS = {"percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy,
           "minmax": CalibrationMethod.MinMax}
DEFAULT_PERCENTILE = 99.99  # NVIDIA's BERT PTQ recipe (the demo's get_quantile() = 0.9999)
DEFAULT_GELU_CLAMP = 10.0  # the demo's "gelu10": GELU output range fixed to +-10


@dataclass
class Calibration:
    amax: dict[str, float]  # tensor name -> amax, in graph order
    roles: dict[str, str]  # tensor name -> role (see bertrt.calibrate.tensors.ROLES)
    method: str
    samples: int
    percentile: float | None = None
    gelu_clamp: float | None = None
    notes: list[str] = field(default_factory=list)


def _restricted(base):
    """The calibrator class ``base``, made to add only the chosen tensors to the graph.

    onnxruntime picks every float input/output of the op types it is given; BERT-Base at seq 384 would
    then keep thousands of activations per sample. The wanted set is given as ``tensors`` instead.
    """

    class Restricted(base):
        def __init__(self, *args, tensors, **kwargs):
            self._wanted = list(tensors)
            super().__init__(*args, **kwargs)

        def select_tensors_to_calibrate(self, model):
            value_infos = {vi.name: vi for vi in model.graph.value_info}
            value_infos.update({o.name: o for o in model.graph.output})
            for name in self._wanted:
                if name not in value_infos:  # shape inference left it untyped; every chosen tensor is float
                    vi = helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                    model.graph.value_info.append(vi)
                    value_infos[name] = vi
            return set(self._wanted), value_infos

    Restricted.__name__ = f"Restricted{base.__name__}"
    return Restricted


def _make_calibrator(method: str, model_path: Path, augmented: Path, tensors, percentile: float, external: bool):
    # The same settings onnxruntime.quantization.create_calibrator uses for each method; Percentile is
    # symmetric (a histogram of |x|), as TensorRT's ranges are.
    common = dict(augmented_model_path=os.fspath(augmented), use_external_data_format=external, tensors=tensors)
    if method == "minmax":
        cal = _restricted(MinMaxCalibrater)(os.fspath(model_path), None, symmetric=True, **common)
    elif method == "entropy":
        cal = _restricted(EntropyCalibrater)(os.fspath(model_path), None, symmetric=False, num_bins=128,
                                             num_quantized_bins=128, **common)
    elif method == "percentile":
        cal = _restricted(PercentileCalibrater)(os.fspath(model_path), None, symmetric=True, num_bins=2048,
                                                percentile=percentile, **common)
    else:
        raise BertrtError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS)}")
    cal.augment_graph()
    cal.create_inference_session()
    return cal


def calibrate(model_path: str | os.PathLike, feeds: list[Feed], *, method: str = "percentile",
              percentile: float = DEFAULT_PERCENTILE, gelu_clamp: float | None = DEFAULT_GELU_CLAMP,
              tensors: dict[str, str] | None = None, progress: Progress | None = None) -> Calibration:
    """amax of each chosen tensor of the model at ``model_path`` over ``feeds`` (one collect call per feed).

    ``tensors`` (name -> role) defaults to ``select_tensors`` of the model. With ``gelu_clamp``, every
    GELU output's amax is that value instead of the measured one (None or 0 keeps the measurement).
    """
    if method not in METHODS:
        raise BertrtError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS)}")
    if not 0 < percentile <= 100:
        raise BertrtError(f"percentile must be in (0, 100], got {percentile}")
    if gelu_clamp is not None and gelu_clamp < 0:
        raise BertrtError(f"GELU clamp must be positive (or 0 for none), got {gelu_clamp}")
    if not feeds:
        raise BertrtError("no calibration samples")
    model = load_model(model_path)
    if tensors is None:
        tensors = select_tensors(model)
    if not tensors:
        raise BertrtError("found no tensors to calibrate (no MatMul/Gemm, Softmax, LayerNorm or GELU)", model_path)
    external = model_bytes(model) >= EXTERNAL_DATA_THRESHOLD

    with tempfile.TemporaryDirectory(prefix="bertrt-calib-") as tmp:
        with task(progress, f"calibrate ranges: preparing {len(tensors)} tensors for ONNX Runtime"):
            # A private copy: onnxruntime writes shape-inferred and augmented models beside the file it reads.
            work = Path(tmp) / "model.onnx"
            save_model(model, work, external_data=external)
            del model
            cal = _make_calibrator(method, work, Path(tmp) / "augmented.onnx", tensors, percentile, external)
        for feed in iterate(progress, feeds, f"calibrate ranges ({method})", "samples"):
            with contextlib.redirect_stdout(io.StringIO()):  # the histogram collector prints per call
                cal.collect_data(FeedReader([feed]))
        with contextlib.redirect_stdout(io.StringIO()), task(progress, f"calibrate ranges: computing {method} ranges"):
            data = cal.compute_data()
        del cal

    amax = {}
    notes = []
    for name in tensors:
        if name not in data:
            notes.append(f"{name}: no range collected")
            continue
        lo, hi = (np.asarray(v, dtype=np.float64) for v in data[name].range_value)
        value = float(max(np.max(np.abs(lo)), np.max(np.abs(hi))))
        if not np.isfinite(value):
            raise BertrtError(f"tensor {name} has a non-finite range ({value}); the model overflows on the "
                              f"calibration data", model_path)
        if value == 0:  # no INT8 scale fits an all-zero tensor (bertrt.ranges.check_amax); it stays in float
            notes.append(f"{name}: all zeros on the calibration data; no range (it stays in float)")
            continue
        amax[name] = value
    if gelu_clamp:
        for name, role in tensors.items():
            if role == "gelu" and name in amax:
                amax[name] = float(gelu_clamp)
    return Calibration(amax=amax, roles={n: tensors[n] for n in amax}, method=method, samples=len(feeds),
                       percentile=percentile if method == "percentile" else None,
                       gelu_clamp=gelu_clamp or None, notes=notes)
