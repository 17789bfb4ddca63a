"""A Polygraphy runner around ReferenceRunner, so Comparator can run fused graphs like any backend."""

from __future__ import annotations

import os
import time
from collections import OrderedDict

import onnx
from onnx import helper
from polygraphy import util
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from bertrt.plugins.runner import ReferenceRunner


class BertrtRefRunner(BaseRunner):
    """Runs a fused graph with bertrt's CPU reference (ONNX Runtime + numpy plugins)."""

    def __init__(self, model, amax: dict[str, float] | None = None, name: str | None = None):
        """
        Args:
            model: a path, an onnx ModelProto, or a callable returning either.
            amax: tensor name -> INT8 amax, for plugins running in INT8.
        """
        super().__init__(name=name, prefix="bertrt-ref-runner")
        self._model = model
        self._amax = amax

    @util.check_called_by("activate")
    def activate_impl(self):
        model, _ = util.invoke_if_callable(self._model)
        if not isinstance(model, (onnx.ModelProto, str, os.PathLike)):
            raise TypeError(f"expected a path or an ONNX model, got {type(model).__name__}")
        self.runner = ReferenceRunner(model, amax=self._amax)

    @util.check_called_by("get_input_metadata")
    def get_input_metadata_impl(self):
        meta = TensorMetadata()
        for vi in self.runner.input_infos:
            tt = vi.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
            meta.add(vi.name, dtype=helper.tensor_dtype_to_np_dtype(tt.elem_type), shape=shape)
        return meta

    @util.check_called_by("infer")
    def infer_impl(self, feed_dict):
        feeds = {name: util.array.to_numpy(t) for name, t in feed_dict.items()}
        start = time.time()
        outs = self.runner.run(feeds)
        self.inference_time = time.time() - start
        return OrderedDict(outs)

    @util.check_called_by("deactivate")
    def deactivate_impl(self):
        del self.runner
