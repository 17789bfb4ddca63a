"""The CPU runner for fused graphs, its Polygraphy runner, and the ``polygraphy run`` extension."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bertrt.errors import BertrtError
from bertrt.onnx_io import save_model
from bertrt.plugins.handbuilt import fused_bert, random_bert_weights, unfused_bert
from bertrt.plugins.runner import ReferenceRunner

LAYERS, HIDDEN, HEADS = 2, 128, 2


@pytest.fixture(scope="module")
def weights():
    return random_bert_weights(LAYERS, HIDDEN, HEADS, 512, seed=7)


def feeds(B=2, S=48, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.array([S // 3, S] + [S // 2] * (B - 2))[:B]
    return {"input_ids": rng.integers(0, 30522, (B, S)).astype(np.int32),
            "segment_ids": rng.integers(0, 2, (B, S)).astype(np.int32),
            "input_mask": (np.arange(S)[None] < lengths[:, None]).astype(np.int32)}


def ort_logits(model, f):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, f)[0]


def test_fused_graph_equals_unfused_on_onnxruntime(weights):
    f = feeds()
    expected = ort_logits(unfused_bert(weights, LAYERS, HEADS), f)
    runner = ReferenceRunner(fused_bert(weights, LAYERS, HEADS))
    got = runner.run(f)["logits"]
    assert got.shape == (2, 48, 2) and got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-5
    # plugins run in numpy, everything between them in ONNX Runtime segments
    kinds = [type(s).__name__ for s in runner.steps]
    assert kinds.count("PluginExecutor") == 1 + 3 * LAYERS and "Segment" in kinds
    # one runner serves another batch and sequence length
    f2 = feeds(B=3, S=20, seed=1)
    assert np.abs(runner.run(f2)["logits"] - ort_logits(unfused_bert(weights, LAYERS, HEADS), f2)).max() < 1e-5


def test_fp16_plugins_round_but_stay_close(weights):
    f = feeds()
    expected = ort_logits(unfused_bert(weights, LAYERS, HEADS), f)
    diff = np.abs(ReferenceRunner(fused_bert(weights, LAYERS, HEADS, "fp16")).run(f)["logits"] - expected).max()
    assert 1e-6 < diff < 2e-2


def test_invalid_plugin_node_is_refused(weights, tmp_path):
    model = fused_bert(weights, LAYERS, HEADS)
    qkv = next(n for n in model.graph.node if n.op_type == "CustomQKVToContextPluginDynamic")
    for a in qkv.attribute:
        if a.name == "plugin_version":
            a.CopyFrom(onnx.helper.make_attribute("plugin_version", 4))  # INT instead of STRING
    path = save_model(model, tmp_path / "bad.onnx")
    with pytest.raises(BertrtError, match="plugin_version is INT, must be a STRING") as e:
        ReferenceRunner(path)
    assert str(path) in str(e.value)


def test_int8_plugin_needs_amax(weights):
    """A QKV v4 in INT8 (type_id 2, EmbLN mha_type_id 2) takes its scales from the amax table."""
    model = fused_bert(weights, LAYERS, HEADS)
    qkvs = [n for n in model.graph.node if n.op_type == "CustomQKVToContextPluginDynamic"]
    emb = next(n for n in model.graph.node if n.op_type == "CustomEmbLayerNormPluginDynamic")
    for qkv in qkvs:
        next(a for a in qkv.attribute if a.name == "type_id").i = 2
    next(a for a in emb.attribute if a.name == "mha_type_id").i = 2
    f = feeds()
    with pytest.raises(BertrtError, match="no amax is given for its tensor"):
        ReferenceRunner(model).run(f)
    amax = {name: a for q in qkvs for name, a in ((q.input[0], 8.0), (q.output[0], 4.0))}
    got = ReferenceRunner(model, amax=amax).run(f)["logits"]
    fp32 = ReferenceRunner(fused_bert(weights, LAYERS, HEADS)).run(f)["logits"]
    assert 0 < np.abs(got - fp32).max() < 0.25


def test_missing_input_is_an_error(weights):
    f = feeds()
    del f["input_mask"]
    with pytest.raises(BertrtError, match="no value given for graph input 'input_mask'"):
        ReferenceRunner(fused_bert(weights, LAYERS, HEADS)).run(f)


def test_polygraphy_run_extension(weights, tmp_path):
    from polygraphy.tools.args.base import BaseRunnerArgs

    from bertrt.plugins.polygraphy_ext import export_argument_groups

    groups = export_argument_groups()
    assert all(isinstance(g, BaseRunnerArgs) for g in groups)
    assert [g.get_name_opt()[1] for g in groups] == ["bertrt-ref", "bertrt-kernels"]

    unfused = save_model(unfused_bert(weights, LAYERS, HEADS), tmp_path / "model.onnx")
    fused = save_model(fused_bert(weights, LAYERS, HEADS), tmp_path / "fused.onnx")
    poly = [sys.executable, "-c", "import sys; from polygraphy.tools import main; sys.exit(main())"]
    shapes = ["--input-shapes"] + [f"{n}:[1,32]" for n in ("input_ids", "segment_ids", "input_mask")]
    ranges = ["--val-range", "input_ids:[0,30000]", "segment_ids:[0,1]", "input_mask:[1,1]"]
    first = subprocess.run(poly + ["run", str(unfused), "--onnxrt", *shapes, *ranges, "--save-inputs",
                                   str(tmp_path / "in.json"), "--save-outputs", str(tmp_path / "ort.json")],
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    second = subprocess.run(poly + ["run", str(fused), "--bertrt-ref", "--load-inputs", str(tmp_path / "in.json"),
                                    "--load-outputs", str(tmp_path / "ort.json"), "--atol", "1e-5", "--rtol", "1e-5"],
                            capture_output=True, text=True)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    assert "PASSED" in second.stdout + second.stderr


def test_float64_gemms_round_each_float_matmul_once_and_leave_int8_ones():
    """--float64-gemms of squad_accuracy: a float MatMul becomes the correctly rounded float32 product (numpy's
    float64 product rounded once, an independent computation); a MatMul of DequantizeLinear outputs (an INT8
    GEMM, which ONNX Runtime sums on the integers) is left as it is."""
    from onnx import TensorProto, helper, numpy_helper

    from bertrt.plugins.runner import float64_matmuls

    rng = np.random.default_rng(0)
    a = rng.standard_normal((16, 768)).astype(np.float32)
    w = rng.standard_normal((768, 32)).astype(np.float32)
    wq = rng.integers(-127, 128, (768, 32)).astype(np.int8)
    nodes = [helper.make_node("MatMul", ["a", "w"], ["float_out"], name="float_mm"),
             helper.make_node("QuantizeLinear", ["a", "s", "zp"], ["aq"], name="q"),
             helper.make_node("DequantizeLinear", ["aq", "s", "zp"], ["adq"], name="dq_a"),
             helper.make_node("DequantizeLinear", ["wq", "s", "zp"], ["wdq"], name="dq_w"),
             helper.make_node("MatMul", ["adq", "wdq"], ["int8_out"], name="int8_mm")]
    wide = float64_matmuls(nodes)
    assert [n.name for n in wide if n.op_type == "MatMul"] == ["float_mm/float64", "int8_mm"]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(wq, "wq"),
             numpy_helper.from_array(np.float32(0.05), "s"), numpy_helper.from_array(np.int8(0), "zp")]
    graph = helper.make_graph(wide, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [16, 768])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                               for o in ("float_out", "int8_out")], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    got, int8 = ort.InferenceSession(model.SerializeToString()).run(None, {"a": a})
    exact = (a.astype(np.float64) @ w.astype(np.float64)).astype(np.float32)
    assert got.dtype == np.float32 and np.array_equal(got, exact)
    assert not np.array_equal(a @ w, exact)  # float32 sums differ in the last bits: the rewrite is what made it
    aq = np.clip(np.rint(a / np.float32(0.05)), -128, 127)
    assert np.allclose(int8, (aq @ wq.astype(np.float64)) * 0.05 * 0.05, rtol=1e-6, atol=1e-6)
