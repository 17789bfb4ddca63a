"""Plugin specs and the validator: a valid node passes; each kind of wrong node is rejected with a reason."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper

from bertrt.plugins.nodes import (EMB_LAYER_NORM, GELU, PLUGIN_DOMAIN, QKV_TO_CONTEXT, SKIP_LAYER_NORM,
                                  declare_plugin_domain, make_plugin_node)
from bertrt.plugins.specs import MAX_PACKED_HEAD_SIZE, MAX_SEQLEN, SPECS, get_spec, spec_of, validate, versions

E, N = 64, 2


def emb_fields(E=E):
    return {"bert_embeddings_layernorm_beta": np.zeros(E, np.float32),
            "bert_embeddings_layernorm_gamma": np.ones(E, np.float32),
            "bert_embeddings_word_embeddings": np.zeros((10, E), np.float32),
            "bert_embeddings_token_type_embeddings": np.zeros((2, E), np.float32),
            "bert_embeddings_position_embeddings": np.zeros((16, E), np.float32)}


def var(name, dtype=np.float32, shape=None):
    return gs.Variable(name, dtype=dtype, shape=shape)


def qkv_node(version=4, fields=None, mask=None, qkv_shape=("S", "B", 3 * E, 1, 1), **kw):
    f = {"type_id": 0, "hidden_size": E, "num_heads": N, "has_mask": 1}
    f.update(fields or {})
    inputs = [var("qkv", shape=list(qkv_shape))]
    if f.get("has_mask"):
        inputs.append(mask if mask is not None else var("mask_idx", np.int32, ["B", 1]))
    return make_plugin_node(get_spec(QKV_TO_CONTEXT, version), inputs, [var("ctx")], f, name="qkv", **kw)


def skip_node(version=5, **fields):
    f = {"type_id": 0, "ld": E, "beta": np.zeros(E, np.float32), "gamma": np.ones(E, np.float32)}
    f.update(fields)
    f = {k: v for k, v in f.items() if v is not None}
    return make_plugin_node(get_spec(SKIP_LAYER_NORM, version), [var("x", shape=["S", "B", E, 1, 1]),
                                                       var("skip", shape=["S", "B", E, 1, 1])], [var("y")], f, name="s")


def graph_of(*nodes):
    return gs.Graph(nodes=list(nodes))


def test_every_version_has_a_spec():
    assert versions(EMB_LAYER_NORM) == list("123456")
    assert versions(QKV_TO_CONTEXT) == list("123456")
    assert versions(SKIP_LAYER_NORM) == list("12345678")
    assert not get_spec(GELU, 1).emitted and "removed in 11.0" in get_spec(GELU, 1).why_not
    for spec in SPECS.values():
        assert spec.inputs and spec.outputs
        assert spec.emitted == (spec.hidden_from is not None)


def test_valid_nodes_pass():
    emb = make_plugin_node(get_spec(EMB_LAYER_NORM, 6), [var(n, np.int32, ["S", "B"]) for n in ("i", "s", "m")],
                           [var("emb"), var("mask_idx", np.int32)], emb_fields(), name="emb")
    q = qkv_node(mask=emb.outputs[1])
    assert validate(emb) == [] and validate(q) == [] and validate(skip_node()) == []
    assert validate(q, graph_of(emb, q)) == []
    assert validate(gs.export_onnx(graph_of(skip_node())).graph.node[0]) == []  # the NodeProto form too


def test_plugin_version_must_be_a_string():
    node = qkv_node()
    node.attrs["plugin_version"] = 4
    problems = validate(node)
    assert any("plugin_version is INT, must be a STRING" in p for p in problems)


def test_missing_version_and_namespace():
    node = qkv_node()
    del node.attrs["plugin_version"]
    del node.attrs["plugin_namespace"]
    problems = validate(node)
    assert any("missing plugin_version" in p for p in problems)
    assert any("missing plugin_namespace" in p for p in problems)


def test_unknown_version_and_wrong_domain():
    node = qkv_node()
    node.attrs["plugin_version"] = "9"
    node.domain = ""
    problems = validate(node)
    assert any("has no version '9'" in p for p in problems)
    assert any(f"expected '{PLUGIN_DOMAIN}'" in p for p in problems)


def test_model_must_declare_the_domain():
    model = gs.export_onnx(graph_of(skip_node()))
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", 17))
    assert any("does not declare the domain" in p for p in validate(model.graph.node[0], model))
    declare_plugin_domain(model)
    assert validate(model.graph.node[0], model) == []


def test_missing_required_field():
    node = qkv_node()
    del node.attrs["num_heads"]
    assert any("missing required field num_heads (INT)" in p for p in validate(node))


def test_int_field_given_as_float():
    node = qkv_node(fields={"hidden_size": float(E)})
    assert any("hidden_size is FLOAT, must be INT" in p for p in validate(node))


def test_weight_of_the_wrong_length():
    node = skip_node(gamma=np.ones(E + 1, np.float32))
    assert any("weight gamma has 65 values, expected E = 64 (from ld)" in p for p in validate(node))
    emb_f = emb_fields()
    emb_f["bert_embeddings_word_embeddings"] = np.zeros(10 * E + 3, np.float32)
    emb = make_plugin_node(get_spec(EMB_LAYER_NORM, 6), [var(n, np.int32) for n in "ism"], [var("o")], emb_f)
    assert any("not whole rows of E = 64" in p for p in validate(emb))


def test_weight_of_the_wrong_type():
    node = skip_node(beta=np.zeros(E, np.int32))
    assert any("int32 tensor" not in p and "INT32 tensor, must be float32 or float16" in p for p in validate(node))


def test_value_out_of_choices_and_unknown_attribute():
    node = qkv_node(fields={"type_id": 5, "ld": E})
    problems = validate(node)
    assert any("type_id = 5, must be one of [0, 1, 2]" in p for p in problems)
    assert any("ld is not a field" in p and "silently ignore" in p for p in problems)


def test_mask_input_must_fit_the_version():
    # v4 takes [B, P] from EmbLN v1/v6; a 1-D [B] maskIdx is v2/v5 (var_seqlen=0) only.
    one_d = var("mask_1d", np.int32, ["B"])
    assert any("rank 1" in p and "[B, P]" in p for p in validate(qkv_node(4, mask=one_d), graph_of(qkv_node(4, mask=one_d))))
    two_d = var("mask_2d", np.int32, ["B", 1])
    n5 = qkv_node(5, mask=two_d)
    assert any("rank 2" in p and "1-D [B] maskIdx" in p for p in validate(n5, graph_of(n5)))
    # With no recorded shape, the producing EmbLN version tells the rank.
    emb = make_plugin_node(get_spec(EMB_LAYER_NORM, 6), [var(n, np.int32) for n in "ism"],
                           [var("emb"), gs.Variable("mi")], emb_fields())
    n5b = qkv_node(5, mask=emb.outputs[1])
    assert any("rank 2" in p for p in validate(n5b, graph_of(emb, n5b)))


def test_mha_type_id_must_equal_qkv_type_id():
    emb = make_plugin_node(get_spec(EMB_LAYER_NORM, 6), [var(n, np.int32) for n in "ism"],
                           [var("emb"), var("mi", np.int32, ["B", 1])], {**emb_fields(), "mha_type_id": 1})
    q = qkv_node(mask=emb.outputs[1])
    assert any("mha_type_id 1" in p for p in validate(q, graph_of(emb, q)))


def test_varseqlen_rules():
    f = {"type_id": 0, "var_seqlen": 1}
    node = make_plugin_node(get_spec(QKV_TO_CONTEXT, 5),
                            [var("qkv"), var("d"), var("cu", np.int32), var("mx", np.int32)], [var("c")], {"hidden_size": E, "num_heads": N, "has_mask": 1, **f})
    assert any("var_seqlen=1 needs type_id FP16" in p for p in validate(node))
    node.attrs["type_id"] = 1
    assert validate(node) == []
    node.inputs.pop()
    assert any("takes 4 inputs" in p for p in validate(node))


def test_wrong_input_count_and_channel_count():
    node = qkv_node(qkv_shape=("S", "B", 3 * E + 3, 1, 1))
    assert any(f"expected 3 * hidden_size = {3 * E}" in p for p in validate(node, graph_of(node)))
    no_mask = qkv_node(fields={"has_mask": 0})
    no_mask.inputs.append(var("extra", np.int32))
    assert any("takes 1 inputs here, the node has 2" in p for p in validate(no_mask))


def test_int8_limits():
    assert any("INT8 needs hidden size 768 or 1024, not 64" in p for p in validate(skip_node(type_id=2)))
    assert any("INT8 needs has_mask=1" in p for p in validate(qkv_node(fields={"type_id": 2, "has_mask": 0})))
    il = make_plugin_node(get_spec(QKV_TO_CONTEXT, 6), [var("q"), var("cu", np.int32), var("m")], [var("c")],
                          {"hidden_size": 96, "num_heads": 3})
    assert any("runs head size 64 only" in p for p in validate(il))


def test_not_emitted_plugin_is_rejected():
    gelu = make_plugin_node(get_spec(GELU, 1), [var("x")], [var("y")], {"type_id": 0})
    assert any("not emitted by bertrt" in p for p in validate(gelu))


def test_sequence_longer_than_position_table():
    emb = make_plugin_node(get_spec(EMB_LAYER_NORM, 6), [var(n, np.int32, [32, 1]) for n in "ism"], [var("o")],
                           emb_fields())
    assert any("exceeds the 16 position embeddings" in p for p in validate(emb, graph_of(emb)))


# Per plugin: version -> layout, as shared/specs/trt-bert-plugins.md §3-4 gives them.
LAYOUTS = {
    EMB_LAYER_NORM: {"1": "fixed", "6": "fixed", "2": "varseqlen", "3": "varseqlen", "4": "varseqlen", "5": "varseqlen"},
    QKV_TO_CONTEXT: {"1": "fixed", "4": "fixed", "2": "varseqlen", "5": "varseqlen", "3": "interleaved",
                     "6": "interleaved"},
    SKIP_LAYER_NORM: {"1": "fixed", "5": "fixed", "2": "varseqlen", "6": "varseqlen", "3": "interleaved",
                      "4": "interleaved", "7": "interleaved", "8": "interleaved"},
}


def test_the_table_carries_what_code_branches_on():
    for plugin, layouts in LAYOUTS.items():
        for version, layout in layouts.items():
            spec = get_spec(plugin, version)
            assert spec.layout == layout, (plugin, version)
            assert spec.int8_only == (layout == "interleaved"), (plugin, version)
            assert spec.pre_ln_output == (spec.variant.endswith("MTron")), (plugin, version)
    # QKV 2/5 run the fixed layout with var_seqlen=0 (and then have no INT8): they pad and pack.
    v5 = get_spec(QKV_TO_CONTEXT, 5)
    assert v5.takes_padded and v5.packed({"var_seqlen": 1}) and not v5.packed({"var_seqlen": 0})
    assert "unfused" in v5.int8_problem(values={"var_seqlen": 0}) and v5.int8_problem(values={"var_seqlen": 1}) is None
    assert not get_spec(SKIP_LAYER_NORM, 6).takes_padded and not get_spec(EMB_LAYER_NORM, 4).takes_padded
    # The limits of spec §4: fused kernels for H = 64, INT8 attention at S 128 / 384, INT8 SkipLN at E 768 / 1024.
    v4 = get_spec(QKV_TO_CONTEXT, 4)
    assert v4.int8_problem(head_size=64, seq=384) is None and v4.int8_problem(head_size=64, seq=128) is None
    assert "head size 64" in v4.int8_problem(head_size=32, seq=384)
    assert "128 or 384" in v4.int8_problem(head_size=64, seq=256)
    assert get_spec(SKIP_LAYER_NORM, 5).int8_problem(hidden=1024) is None
    assert "768 or 1024" in get_spec(SKIP_LAYER_NORM, 5).int8_problem(hidden=384)
    assert get_spec(SKIP_LAYER_NORM, 7).int8_problem(hidden=2048) is None
    assert (MAX_SEQLEN, MAX_PACKED_HEAD_SIZE) == (384, 64)
    assert [get_spec(SKIP_LAYER_NORM, v).hidden_axis for v in "12345678"] == [2, None, 1, 1, 2, None, 1, 1]


def test_make_plugin_node_fills_what_the_spec_implies():
    f = {"type_id": 0, "beta": np.zeros(E, np.float32), "gamma": np.ones(E, np.float32)}
    ins = [var("x", shape=["S", "B", E, 1, 1]), var("skip", shape=["S", "B", E, 1, 1])]
    v5 = make_plugin_node(get_spec(SKIP_LAYER_NORM, 5), ins, [var("y")], f, name="s5")
    v6 = make_plugin_node(get_spec(SKIP_LAYER_NORM, 6), ins, [var("y")], f, name="s6")
    assert v5.attrs["ld"] == E and "ld" not in v6.attrs  # v1/v5 have the ld field, v2/v6 not
    assert v5.attrs["plugin_version"] == "5" and spec_of(v5) is get_spec(SKIP_LAYER_NORM, 5)
    assert validate(v5) == [] and validate(v6) == []
