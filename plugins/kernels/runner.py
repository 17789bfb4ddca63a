"""A fused graph on the GPU: plugin nodes on NVIDIA's kernels (execute.py), every other node on PyTorch CUDA
(torch_ops.py). The partition into plugin steps and standard segments is the CPU reference runner's, so both
runners walk the same graph the same way."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from bertrt.plugins.kernels.execute import KernelExecutor
from bertrt.plugins.kernels.lib import open_library
from bertrt.plugins.kernels.torch_ops import TorchSegment
from bertrt.plugins.runner import ReferenceRunner, Segment


class KernelRunner(ReferenceRunner):
    """``ReferenceRunner``'s graph walk with NVIDIA's plugin kernels and PyTorch CUDA segments.

    ``lib``/``sm`` come from ``open_library`` (built from the TensorRT OSS checkout ``trt_oss``) unless given.
    """

    def __init__(self, model, amax=None, trt_oss=None, lib=None, sm=None, log=lambda m: None,
                 half_gemms: bool = False):
        self.half_gemms = half_gemms  # MatMul/Gemm in FP16 (what a weakly typed TensorRT FP16 build may pick)
        if lib is None:
            lib, sm = open_library(trt_oss, log=log)
        self.lib, self.sm = lib, sm
        import torch

        self.torch = torch
        super().__init__(model, amax=amax)
        self._consts: dict = {}
        self._segments: dict[int, TorchSegment] = {}

    def _plugin_step(self, node, out_dtypes):
        return KernelExecutor(node, self.lib, self.sm, out_dtypes, self.amax)

    device = "cuda"

    def _const(self, name: str):
        """An initializer as a torch tensor: on the GPU, except int64 ones (shapes, axes), which ops read as
        Python ints and which must not cost a device sync (nor break CUDA graph capture)."""
        if name not in self._consts:
            arr = np.array(numpy_helper.to_array(self._inits[name]))
            t = self.torch.as_tensor(arr)
            self._consts[name] = t if arr.dtype == np.int64 else t.to(self.device)
        return self._consts[name]

    def _segment(self, seg: Segment) -> TorchSegment:
        key = id(seg)
        if key not in self._segments:
            used = {i for n in seg.nodes for i in n.input if i in self._inits}
            self._segments[key] = TorchSegment(seg.nodes, {i: self._const(i) for i in used}, keep=seg.outputs,
                                               half_gemms=self.half_gemms)
        return self._segments[key]

    def run_torch(self, feeds: dict) -> dict:
        """Graph outputs as torch CUDA tensors for feeds given as numpy arrays or torch tensors."""
        torch = self.torch
        env = {}
        for vi in self.input_infos:
            if vi.name not in feeds:
                from bertrt.errors import BertrtError

                raise BertrtError(f"no value given for graph input '{vi.name}'", self.path)
            env[vi.name] = torch.as_tensor(np.asarray(feeds[vi.name])).to(self.device) if not torch.is_tensor(
                feeds[vi.name]) else feeds[vi.name]
        for step, release in zip(self.steps, self._release):
            if isinstance(step, Segment):
                if step.outputs:
                    self._segment(step).run(env)
            else:
                env.update(step([(env[i] if i in env else self._const(i)) if i else None for i in step.inputs]))
            for name in release:
                env.pop(name, None)
        return {name: env[name] if name in env else self._const(name) for name in self.output_names}

    def run(self, feeds):
        out = self.run_torch(feeds)
        return {k: v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy() for k, v in out.items()}

    def close(self):
        for step in self.steps:
            if isinstance(step, KernelExecutor):
                step.close()
