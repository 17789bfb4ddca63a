"""Round float32 values to the nearest FP16 value (IEEE round-to-nearest-even), kept in float32.

numpy's float32 -> float16 cast converts one element at a time; on the activations of a BERT layer it costs
more than the layer's GEMMs. ONNX Runtime's Cast is vectorized (F16C) and rounds the same way, so large arrays
go through a two-node Cast graph (float32 -> float16 -> float32); small ones stay in numpy. Both give the same
bits for every input, NaN, infinities and subnormals included (tests/test_plugin_reference.py checks it).
"""

from __future__ import annotations

import functools

import numpy as np

ORT_MIN_SIZE = 1 << 15  # below this many elements numpy is as fast as a session call


@functools.lru_cache(maxsize=1)
def _session():
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
         helper.make_node("Cast", ["h"], ["y"], to=TensorProto.FLOAT)],
        "round_fp16", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    # IR 8 is opset 17's: a newer onnx's default IR version is refused by older ONNX Runtimes.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep both casts
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def round_fp16(x: np.ndarray) -> np.ndarray:
    """Values as an FP16 tensor would hold them, as a new float32 array."""
    x = np.asarray(x, dtype=np.float32)
    if x.size < ORT_MIN_SIZE:
        with np.errstate(over="ignore"):  # beyond 65504 is inf in FP16, as it should be
            return x.astype(np.float16).astype(np.float32)
    return _session().run(["y"], {"x": np.ascontiguousarray(x)})[0]
