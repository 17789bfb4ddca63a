"""QAT (Q/DQ) graphs go through surgery as they are: the fusions match through the Q/DQ nodes, and the
graph's own scales become the fused graph's INT8 ranges (scale x 127) and QKVToContext's dq_probs."""

import json

import numpy as np
import onnx
from click.testing import CliRunner

from bertrt.cli import cli
from bertrt.surgery import pipeline


def _qdq_scales(model):
    """tensor quantized by a QuantizeLinear -> its per-tensor scale, read straight from the graph."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]].reshape(())) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and inits[n.input[1]].size == 1}


def test_qat_fuses_fully_and_keeps_its_scales(canonical_fixtures, tmp_path):
    qat = canonical_fixtures["qat_qdq"]
    fused, name_map, ranges = tmp_path / "fused.onnx", tmp_path / "map.json", tmp_path / "ranges.json"
    r = CliRunner().invoke(cli, ["surgery", "run", str(qat), "-o", str(fused), "--precision", "int8",
                                 "--name-map", str(name_map)])
    assert r.exit_code == 0, r.output
    assert "34 activation Q/DQ pairs bypassed, 13 weights dequantized" in r.output
    assert "fused: EmbLayerNorm 1, QKVToContext 2, SkipLayerNorm 4" in r.output
    r = CliRunner().invoke(cli, ["calibrate", "qat", str(qat), "--name-map", str(name_map), "-o", str(ranges)])
    assert r.exit_code == 0, r.output

    scales = _qdq_scales(onnx.load(qat))
    mapping = json.loads(name_map.read_text())
    amax = json.loads(ranges.read_text())
    fused_model = onnx.load(fused)
    fused_tensors = {o for n in fused_model.graph.node for o in n.output} | {i.name for i in fused_model.graph.input}
    assert amax and set(amax) <= fused_tensors  # only tensors the fused graph has
    # every range is the largest scale x 127 among the original tensors the fused tensor carries
    carried = {}
    for original, targets in mapping.items():
        for t in targets:
            carried.setdefault(t, []).append(original)
    for name, value in amax.items():
        want = max(scales[o] * 127 for o in carried[name] if o in scales)
        assert np.isclose(value, want, rtol=1e-12), name
    # the context, the QKV GEMM output and the SkipLayerNorm outputs all got theirs
    assert any(k.endswith("/context") for k in amax) and any(k.endswith("qkv_Add") for k in amax)

    # dq_probs of each QKVToContext is the scale of the Q/DQ on that layer's softmax output
    softmax_scales = sorted(s for t, s in scales.items() if t.endswith("Softmax_output_0"))
    dq = sorted(onnx.helper.get_attribute_value(a) for n in fused_model.graph.node
                if n.op_type == "CustomQKVToContextPluginDynamic" for a in n.attribute if a.name == "dq_probs")
    assert len(dq) == 2 and np.allclose(dq, softmax_scales, rtol=1e-6)


def test_float_model_untouched_by_dequantize(tiny_onnx):
    result = pipeline.run(onnx.load(tiny_onnx), passes=["dequantize"])
    assert result.reports[0].rewrites == 0 and result.reports[0].misses == []


def _int8_weight_columns(model):
    """Every output channel of every int8 weight behind a DequantizeLinear, as bytes."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    cols = set()
    for n in model.graph.node:
        q = inits.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if q is not None and q.dtype == np.int8 and q.ndim == 2:
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            q = q if axis == 1 else q.T
            cols |= {q[:, j].tobytes() for j in range(q.shape[1])}
    return cols


def test_trt11_qdq_puts_back_the_qat_weights(canonical_fixtures, tmp_path):
    """On TensorRT 11 the QAT model's int8 weights come back exactly (every channel of a quantize_static model
    reaches +-127, so max |w| / 127 is its scale), and its activation scales through the ranges."""
    qat = canonical_fixtures["qat_qdq"]
    fused, name_map, ranges, qdq = (tmp_path / n for n in ("fused.onnx", "map.json", "ranges.json", "qdq.onnx"))
    r = CliRunner().invoke(cli, ["surgery", "run", str(qat), "-o", str(fused), "--target", "trt11", "--precision",
                                 "int8", "--name-map", str(name_map)])
    assert r.exit_code == 0, r.output
    assert "do not reach" not in r.output
    for args in (["calibrate", "qat", str(qat), "--name-map", str(name_map), "-o", str(ranges)],
                 ["calibrate", "qdq", str(fused), "--ranges", str(ranges), "-o", str(qdq)]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, r.output
    original = _int8_weight_columns(onnx.load(qat))
    assert len(original) > 1000 and _int8_weight_columns(onnx.load(qdq)) == original


def test_dequantize_reports_weights_short_of_full_range(canonical_fixtures):
    model = onnx.load(canonical_fixtures["qat_qdq"])
    inits = {t.name: t for t in model.graph.initializer}
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
              and inits[n.input[0]].data_type == onnx.TensorProto.INT8 and len(inits[n.input[0]].dims) == 2)
    q = onnx.numpy_helper.to_array(inits[dq.input[0]])
    inits[dq.input[0]].CopyFrom(onnx.numpy_helper.from_array((q // 2).astype(np.int8), dq.input[0]))
    report = pipeline.run(model, passes=["dequantize"]).reports[0]
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    assert f"{q.shape[axis]} weight channels do not reach +-127" in " ".join(report.notes)


def test_dequantize_of_a_computed_tensor_is_reported_and_kept(canonical_fixtures):
    """A DequantizeLinear fed by neither a QuantizeLinear nor a constant (here an int8 weight through a Neg;
    an Identity copy of a constant is still that constant) is a miss with its reason, and stays in the graph."""
    model = onnx.load(canonical_fixtures["qat_qdq"])
    inits = {t.name for t in model.graph.initializer}
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits)
    weight = dq.input[0]
    model.graph.node.insert(0, onnx.helper.make_node("Neg", [weight], [weight + "/copy"], name="copy"))
    dq.input[0] = weight + "/copy"
    result = pipeline.run(model, passes=["dequantize"])
    misses = result.reports[0].misses
    assert len(misses) == 1 and "neither a QuantizeLinear nor a constant" in str(misses[0])
    assert any(n.op_type == "DequantizeLinear" and n.input[0] == weight + "/copy" for n in result.model.graph.node)
