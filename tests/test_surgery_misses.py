"""Every kind of place that looks like a pattern but must not be fused is reported with its reason,
and the graph there is left exactly as it was. Each case breaks one thing in the tiny tf2onnx model."""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from bertrt.surgery import pipeline


def _const(model, name, value):
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
    return name


def _uses(model, tensor):
    return [n for n in model.graph.node if tensor in n.input]


def _by_weight(model, weight):
    return next(n for n in model.graph.node if weight in n.input)


def _add_output(model, tensor):
    model.graph.output.append(helper.make_empty_tensor_value_info(tensor))


def _first(m, op):
    return next(n for n in m.graph.node if n.op_type == op)


def _value(m, name):
    t = next((t for t in m.graph.initializer if t.name == name), None)
    return None if t is None else numpy_helper.to_array(t)


def _mul_by(m, value, users=None):
    """The Mul node with a constant input equal to value (among users, if given), and that input's index."""
    for n in users or m.graph.node:
        for i, name in enumerate(n.input):
            v = _value(m, name)
            if n.op_type == "Mul" and v is not None and v.size == 1 and np.isclose(float(v), value):
                return n, i
    raise LookupError(value)


def softmax_axis(m):
    _first(m, "Softmax").attribute.append(helper.make_attribute("axis", 1))


def mask_sign(m):
    mul, i = _mul_by(m, -10000.0)  # (1 - mask) * -10000
    mul.input[i] = _const(m, "broken_mask_scale", 10000.0)


def gelu_half(m):
    erf = _first(m, "Erf")
    scale = next(n for n in m.graph.node if erf.input[0] in n.output)  # x * (1/sqrt(2))
    x = next(i for i in scale.input if _value(m, i) is None)
    half, i = _mul_by(m, 0.5, users=_uses(m, x))
    half.input[i] = _const(m, "broken_half", 0.6)


def onehot_values(m):
    _first(m, "OneHot").input[2] = _const(m, "broken_onehot", [0.0, 2.0])


def layernorm_beta(m):
    sub = next(n for n in m.graph.node if n.op_type == "Sub"
               and n.input[0] == "bert/encoder/layer_0/attention/output/LayerNorm/beta")
    sub.op_type = "Add"


def word_scaled(m):
    gather = next(n for n in m.graph.node if n.op_type == "Gather" and n.input[0] == "bert/embeddings/word_embeddings")
    out = gather.output[0]
    for user in _uses(m, out):
        user.input[list(user.input).index(out)] = "scaled_words"
    m.graph.node.append(helper.make_node("Mul", [out, _const(m, "two", 2.0)], ["scaled_words"], name="scale_words"))


def residual_used_twice(m):
    ln_beta = "bert/encoder/layer_0/attention/output/LayerNorm/beta"
    sub = next(n for n in m.graph.node if n.op_type == "Sub" and n.input[0] == ln_beta)
    mean = next(n for n in m.graph.node if n.output[0] == sub.input[1])  # Mul(mean, g)
    reduce = next(n for n in m.graph.node if n.output[0] in mean.input and n.op_type in ("ReduceMean", "GlobalAveragePool"))
    m.graph.node.append(helper.make_node("Neg", [reduce.input[0]], ["residual_negated"], name="negate_residual"))
    _add_output(m, "residual_negated")


def hidden_exposed(m):
    fc1 = _by_weight(m, "bert/encoder/layer_0/intermediate/dense/kernel")
    _add_output(m, fc1.output[0])


def qkv_different_inputs(m):
    key = _by_weight(m, "bert/encoder/layer_1/attention/self/key/kernel")
    query0 = _by_weight(m, "bert/encoder/layer_0/attention/self/query/kernel")
    key.input[0] = query0.input[0]


def _attention_add(m):
    """The Add of the scores and the mask in the first attention (the one feeding the first Softmax)."""
    sm = _first(m, "Softmax")
    return next(n for n in m.graph.node if sm.input[0] in n.output)


def scores_plus_scores(m):
    add = _attention_add(m)
    scores = next(i for i in add.input if not any(n.op_type == "Mul" and _value(m, n.input[1]) is not None
                                                   and float(_value(m, n.input[1]).reshape(-1)[0]) == -10000.0
                                                   for n in m.graph.node if i in n.output))
    add.input[0], add.input[1] = scores, scores


def relu_before_softmax(m):
    sm = _first(m, "Softmax")
    m.graph.node.append(helper.make_node("Relu", [sm.input[0]], ["relu_scores"], name="relu_scores"))
    sm.input[0] = "relu_scores"


def key_weight_from_input(m):
    key = _by_weight(m, "bert/encoder/layer_0/attention/self/key/kernel")
    key.input[1] = "key_weight"
    m.graph.input.append(helper.make_tensor_value_info("key_weight", onnx.TensorProto.FLOAT, [128, 128]))


def probs_used_twice(m):
    sm = _first(m, "Softmax")
    m.graph.node.append(helper.make_node("Neg", [sm.output[0]], ["probs_negated"], name="negate_probs"))
    _add_output(m, "probs_negated")


def no_position_embedding(m):
    pos_add = next(n for n in m.graph.node if n.op_type == "Add" and any(
        (v := _value(m, i)) is not None and v.ndim == 3 for i in n.input))  # + the [1, S, E] position slice
    other = next(i for i in pos_add.input if _value(m, i) is None)
    for user in _uses(m, pos_add.output[0]):
        user.input[list(user.input).index(pos_add.output[0])] = other


CASES = [
    (scores_plus_scores, "attention", "before the softmax is not score + mask"),
    (relu_before_softmax, "attention", "between the scores and the softmax is not a scale or a mask"),
    (key_weight_from_input, "attention", "has no constant 2-D weight"),
    (probs_used_twice, "attention", "the probabilities do not feed a single MatMul with V"),
    (no_position_embedding, "embeddings", "no position embedding found among its summands"),
    (softmax_axis, "attention", "softmax axis is 1, expected -1"),
    (mask_sign, "attention", "the attention nodes differ from QKVToContext by"),
    (qkv_different_inputs, "attention", "Q, K and V are projections of different tensors"),
    (gelu_half, "gelu", "no region around it computes GELU"),
    (onehot_values, "embeddings", "has values other than (0, 1)"),
    (word_scaled, "embeddings", "is no word, segment or position lookup"),
    (layernorm_beta, "layernorm", "computes a LayerNorm of its input over the last axis (closest differs by"),
    (residual_used_twice, "skip_layernorm", "is used elsewhere too"),
    (hidden_exposed, "layout", "a layout adapter is left"),
]


@pytest.mark.parametrize("break_it,pass_name,reason", CASES, ids=[c[0].__name__ for c in CASES])
def test_reason_reported_and_not_fused(tiny_onnx, break_it, pass_name, reason):
    model = onnx.load(tiny_onnx)
    break_it(model)
    result = pipeline.run(model)
    report = next(r for r in result.reports if r.name == pass_name)
    assert any(reason in m.reason for m in report.misses), pipeline.report_table(result)
    assert not result.complete or pass_name == "layout"  # a left adapter costs a transpose, not a fusion


def test_gelu_alone_upgrades_the_graph_to_opset_20(tiny_onnx):
    """Gelu is an opset-20 op: run alone on the raw graph, the pass also rewrites the opset-17 ReduceMeans."""
    import onnxruntime as ort

    from bertrt.convert.tf_convert import check_feeds

    original = onnx.load(tiny_onnx)
    result = pipeline.run(onnx.load(tiny_onnx), passes=["gelu"])
    (report,) = result.reports
    assert report.rewrites == 2 and "Erf" not in result.leftover
    model = result.model
    assert next(o.version for o in model.opset_import if o.domain == "") == 20
    reduce = [n for n in model.graph.node if n.op_type == "ReduceMean"]
    assert reduce and all(len(n.input) == 2 and "axes" not in [a.name for a in n.attribute] for n in reduce)
    feeds = check_feeds(2, 128, 30522, seed=4)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(run(model), run(original), atol=1e-5)


def test_a_miss_leaves_that_layer_as_it_was(tiny_onnx):
    """Layer 0's attention is broken: it keeps its Softmax, layer 1 is fused, and outputs stay equal."""
    import onnxruntime as ort

    from bertrt.convert.tf_convert import check_feeds
    from bertrt.plugins.runner import ReferenceRunner

    model = onnx.load(tiny_onnx)
    qkv_different_inputs(model)
    result = pipeline.run(model)
    assert pipeline.plugin_totals(result.counts)["QKVToContext"] == 1
    assert result.leftover.get("Softmax") == 1
    feeds = check_feeds(2, 128, 30522, seed=3)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
    got = ReferenceRunner(result.model).run(feeds)["logits"]
    assert np.abs(got - want).max() < 1e-4


def test_layernorm_over_another_axis_is_not_skip_layernorm(canonical_fixtures):
    model = onnx.load(canonical_fixtures["torch_legacy_bert"])
    ln = [n for n in model.graph.node if n.op_type == "LayerNormalization"][1]  # layer 0, after attention
    for a in ln.attribute:
        if a.name == "axis":
            a.i = 1
    result = pipeline.run(model)
    report = next(r for r in result.reports if r.name == "skip_layernorm")
    assert any("it normalises axis 1, not the hidden axis" in m.reason for m in report.misses)
    assert not result.complete


def test_dequantize_of_a_computed_tensor(canonical_fixtures):
    model = onnx.load(canonical_fixtures["qat_qdq"])
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear"
              and any(q.op_type == "QuantizeLinear" and q.output[0] == n.input[0] for q in model.graph.node))
    q = next(n for n in model.graph.node if n.output[0] == dq.input[0])
    q.op_type = "Identity"  # the DequantizeLinear now reads a float tensor no QuantizeLinear made
    del q.input[1:]
    result = pipeline.run(model, passes=["dequantize"])
    (report,) = result.reports
    assert any(m.where == f"DequantizeLinear {dq.name}" and "neither a QuantizeLinear nor a constant" in m.reason
               for m in report.misses)
