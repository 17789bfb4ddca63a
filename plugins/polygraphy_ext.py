"""``polygraphy run --bertrt-ref``: run fused graphs with bertrt's CPU reference inside Polygraphy.

Polygraphy's ``run`` tool loads every entry point in the group ``polygraphy.run.plugins``, calls it, and
adds the argument groups it returns; a ``BaseRunnerArgs`` group becomes a runner option named by
``get_name_opt``. So, with outputs saved from ONNX Runtime on the original model::

    polygraphy run model.onnx --onnxrt --save-inputs in.json --save-outputs ort.json
    polygraphy run fused.onnx --bertrt-ref --load-inputs in.json --load-outputs ort.json
"""

from __future__ import annotations

from polygraphy.tools.args import ModelArgs
from polygraphy.tools.args.base import BaseRunnerArgs
from polygraphy.tools.script import make_invocable


class BertrtRefRunnerArgs(BaseRunnerArgs):
    """
    bertrt CPU reference: runs graphs with TensorRT BERT plugin nodes (ONNX Runtime + numpy plugins).

    Depends on:

        - ModelArgs
    """

    def get_name_opt_impl(self):
        return "bertrt CPU Reference", "bertrt-ref"

    def get_extra_help_text_impl(self):
        return "Executes TensorRT BERT plugin nodes with bertrt's numpy references, the rest with ONNX Runtime."

    def add_to_script_impl(self, script):
        script.add_import(imports=["BertrtRefRunner"], frm="bertrt.plugins.poly_runner")
        script.add_runner(make_invocable("BertrtRefRunner", self.arg_groups[ModelArgs].path))


class BertrtKernelsRunnerArgs(BaseRunnerArgs):
    """
    bertrt kernels: runs graphs with TensorRT BERT plugin nodes on NVIDIA's plugin kernels (GPU), the rest on
    PyTorch CUDA; the TensorRT OSS checkout comes from $BERTRT_TRT_OSS.

    Depends on:

        - ModelArgs
    """

    def get_name_opt_impl(self):
        return "bertrt Kernels", "bertrt-kernels"

    def get_extra_help_text_impl(self):
        return "Executes TensorRT BERT plugin nodes with NVIDIA's plugin kernels on the GPU, the rest with PyTorch."

    def add_to_script_impl(self, script):
        script.add_import(imports=["BertrtKernelsRunner"], frm="bertrt.plugins.kernels.poly_runner")
        script.add_runner(make_invocable("BertrtKernelsRunner", self.arg_groups[ModelArgs].path))


def export_argument_groups():
    """The entry point Polygraphy calls: the argument groups this extension adds to ``polygraphy run``."""
    return [BertrtRefRunnerArgs(), BertrtKernelsRunnerArgs()]
