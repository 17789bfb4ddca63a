"""A Polygraphy runner around KernelRunner (NVIDIA's plugin kernels + PyTorch CUDA), as BertrtRefRunner is
around the CPU reference: ``polygraphy run fused.onnx --bertrt-kernels`` and ``bertrt compare --backend kernels``."""

from __future__ import annotations

import os

import onnx
from polygraphy import util

from bertrt.plugins.poly_runner import BertrtRefRunner


class BertrtKernelsRunner(BertrtRefRunner):
    def __init__(self, model, amax: dict[str, float] | None = None, name: str | None = None, trt_oss=None):
        super().__init__(model, amax=amax, name=name)
        self._trt_oss = trt_oss

    @util.check_called_by("activate")
    def activate_impl(self):
        from bertrt.plugins.kernels.runner import KernelRunner

        model, _ = util.invoke_if_callable(self._model)
        if not isinstance(model, (onnx.ModelProto, str, os.PathLike)):
            raise TypeError(f"expected a path or an ONNX model, got {type(model).__name__}")
        self.runner = KernelRunner(model, amax=self._amax, trt_oss=self._trt_oss)

    @util.check_called_by("deactivate")
    def deactivate_impl(self):
        self.runner.close()
        del self.runner
