"""sanitize: folds constants, drops Identity/Dropout, keeps Q/DQ, and computes exactly what it was given."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bertrt.sanitize import sanitize

FIXTURES = Path(__file__).parent / "fixtures"


def run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    # No ORT graph optimizations: each graph runs as written, so equal graphs give equal bits.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def small_qdq_model() -> onnx.ModelProto:
    """x -> Identity -> Dropout -> MatMul(DQ(Q(W))) -> Div(Sqrt(16)) -> Identity -> y, plus a folded constant."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")
    scale = numpy_helper.from_array(np.array(0.02, np.float32), "w_scale")
    zero = numpy_helper.from_array(np.array(0, np.int8), "w_zero")
    sixteen = numpy_helper.from_array(np.array(16.0, np.float32), "sixteen")
    ratio = numpy_helper.from_array(np.array(0.1, np.float32), "ratio")
    nodes = [
        helper.make_node("Identity", ["x"], ["x_copy"]),
        helper.make_node("Dropout", ["x_copy", "ratio"], ["x_drop"]),
        helper.make_node("QuantizeLinear", ["w", "w_scale", "w_zero"], ["w_q"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"]),
        helper.make_node("MatMul", ["x_drop", "w_dq"], ["mm"]),
        helper.make_node("Sqrt", ["sixteen"], ["four"]),
        helper.make_node("Div", ["mm", "four"], ["scaled"]),
        helper.make_node("Identity", ["scaled"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [w, scale, zero, sixteen, ratio])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_small_graph_is_cleaned_and_equal():
    model = small_qdq_model()
    stats = {}
    out = sanitize(model, stats)
    assert stats == {"Identity": 2, "Dropout": 1, "nodes_before": 8, "nodes_after": 4}
    before, after = ops(model), ops(out)
    assert before["Identity"] == 2 and before["Dropout"] == 1 and before["Sqrt"] == 1
    assert after["Identity"] == 0 and after["Dropout"] == 0
    assert after["Sqrt"] == 0  # sqrt(16) was folded into a constant
    assert after["QuantizeLinear"] == 1 and after["DequantizeLinear"] == 1  # the weight's Q/DQ stays
    assert [o.name for o in out.graph.output] == ["y"]  # the output kept its name through the Identity
    assert [i.name for i in out.graph.input] == ["x"]
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    (y0,), (y1,) = run(model, {"x": x}), run(out, {"x": x})
    assert np.array_equal(y0, y1)
    # Independent check: float64 fake-quantized weight, divided by 4.
    w = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    wq = np.clip(np.round(w / 0.02), -128, 127) * 0.02
    np.testing.assert_allclose(y1, x.astype(np.float64) @ wq / 4, rtol=1e-5, atol=1e-6)


def test_identity_between_input_and_output_is_kept():
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "passthrough",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    out = sanitize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert ops(out)["Identity"] == 1  # removing it would leave an output with no producer
    assert [o.name for o in out.graph.output] == ["y"]


def test_dropout_whose_mask_is_used_is_kept():
    nodes = [helper.make_node("Dropout", ["x"], ["y", "mask"]),
             helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "mask_used",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]),
                               helper.make_tensor_value_info("m", TensorProto.FLOAT, [2])])
    out = sanitize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert ops(out)["Dropout"] == 1


@pytest.mark.parametrize("name", ["hf_qa_eager", "qat_qdq"])
def test_exporter_graph(name):
    model = onnx.load(FIXTURES / f"{name}.onnx")
    out = sanitize(model)
    before, after = ops(model), ops(out)
    assert before["Constant"] > 0  # exporters leave Constant nodes (Identity is covered by the hand-made graph)
    assert after["Identity"] == 0 and after["Constant"] == 0 and after["Dropout"] == 0
    assert after["QuantizeLinear"] == before["QuantizeLinear"]
    assert after["DequantizeLinear"] == before["DequantizeLinear"]
    assert len(out.graph.node) < len(model.graph.node)
    onnx.checker.check_model(out)
    rng = np.random.default_rng(2)
    feed = {"input_ids": rng.integers(0, 128, (2, 24)), "token_type_ids": rng.integers(0, 2, (2, 24)),
            "attention_mask": np.ones((2, 24), np.int64)}
    feed["attention_mask"][1, 17:] = 0
    for a, b in zip(run(model, feed), run(out, feed), strict=True):
        assert np.array_equal(a, b)


def test_deterministic():
    model = onnx.load(FIXTURES / "qat_qdq.onnx")
    assert sanitize(model).SerializeToString() == sanitize(model).SerializeToString()
