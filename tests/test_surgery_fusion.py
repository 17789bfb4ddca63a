"""Surgery fuses every exporter's BERT fully, on every target and precision, and stays equal to the original.

The originals run on ONNX Runtime; the fused graphs on the CPU reference of the plugins (bertrt compare).
"""

import numpy as np
import onnx
import pytest

from bertrt.run.compare import compare_models
from bertrt.surgery import pipeline

SOURCES = ("tf2onnx", "tf2onnx_dynamic_seq", "hf_qa_eager", "hf_qa_sdpa", "torch_dynamo_qa", "torch_legacy_bert")
TARGETS = ("trt10", "trt10-legacy", "trt11")
PLUGIN_VERSIONS = {"trt10": ("6", "4", "5"), "trt10-legacy": ("1", "1", "1"), "trt11": ("6", "4", "5")}


@pytest.fixture(scope="module")
def sources(tiny_onnx, tiny_dynamic_onnx, canonical_fixtures):
    return {"tf2onnx": tiny_onnx, "tf2onnx_dynamic_seq": tiny_dynamic_onnx, **{k: v for k, v in canonical_fixtures.items() if k in SOURCES}}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("source", SOURCES)
def test_full_fusion_and_equal(sources, source, target, precision, tmp_path):
    path = sources[source]
    result = pipeline.run(onnx.load(path), target=target, precision=precision)
    tot = pipeline.plugin_totals(result.counts)
    assert tot == {"EmbLayerNorm": 1, "QKVToContext": 2, "SkipLayerNorm": 4}, pipeline.report_table(result)
    assert result.leftover == {} and result.complete
    assert result.problems == []
    emb, qkv, skip = PLUGIN_VERSIONS[target]
    assert set(result.counts) == {f"CustomEmbLayerNormPluginDynamic v{emb}", f"CustomQKVToContextPluginDynamic v{qkv}",
                                  f"CustomSkipLayerNormPluginDynamic v{skip}"}
    fused = tmp_path / "fused.onnx"
    result.save(fused)
    seq = 64 if source == "tf2onnx" else 48
    atol = 1e-4 if precision == "fp32" else 2e-2
    cmp = compare_models(path, fused, batch=2, seq=None if source == "tf2onnx" else seq, iterations=2, atol=atol,
                         rtol=1e10)
    assert cmp.passed, cmp.table()
    assert cmp.outputs[0].max_abs <= atol


def test_transposes_only_at_the_edges(sources):
    """Sequence-major inside: the only Transposes are on the three inputs and before the logits."""
    result = pipeline.run(onnx.load(sources["tf2onnx"]))
    model = result.model
    transposes = [n for n in model.graph.node if n.op_type == "Transpose"]
    graph_inputs = {i.name for i in model.graph.input}
    assert len(transposes) == 4
    assert sum(n.input[0] in graph_inputs for n in transposes) == 3
    assert [n for n in transposes if n.output[0] == "logits"]


def test_fp16_types_per_target(sources):
    trt10 = pipeline.run(onnx.load(sources["tf2onnx"]), target="trt10", precision="fp16").model
    trt11 = pipeline.run(onnx.load(sources["tf2onnx"]), target="trt11", precision="fp16").model
    attrs = {n.op_type: [] for n in trt10.graph.node}
    for n in trt10.graph.node:
        attrs[n.op_type].append({a.name: onnx.helper.get_attribute_value(a) for a in n.attribute})
    (emb,) = attrs["CustomEmbLayerNormPluginDynamic"]
    assert emb["output_fp16"] == 1 and emb["mha_type_id"] == 1
    plugins = attrs["CustomQKVToContextPluginDynamic"] + attrs["CustomSkipLayerNormPluginDynamic"]
    assert len(plugins) == 6 and all(a["type_id"] == 1 for a in plugins)
    # trt10: the graph stays float32 (TensorRT's FP16 flag); trt11: float16 weights and a Cast before the output
    assert {i.data_type for i in trt10.graph.initializer if i.data_type in (1, 10)} == {onnx.TensorProto.FLOAT}
    matmul_weights = {n.input[1] for n in trt11.graph.node if n.op_type == "MatMul"}
    assert {i.data_type for i in trt11.graph.initializer if i.name in matmul_weights} == {onnx.TensorProto.FLOAT16}
    last = next(n for n in trt11.graph.node if "logits" in n.output)
    assert last.op_type == "Cast"


def test_qkv_weight_is_per_head_interleaved(sources):
    """The fused QKV weight's column n*3H + t*H + h is head n's Q/K/V (t) column h."""
    result = pipeline.run(onnx.load(sources["tf2onnx"]))
    w = next(t for t in result.model.graph.initializer if t.name == "attention_1/qkv_weight")
    w = onnx.numpy_helper.to_array(w).reshape(128, 2, 3, 64)  # [E, N, 3, H]
    init = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(sources["tf2onnx"]).graph.initializer}
    q = init["bert/encoder/layer_0/attention/self/query/kernel"]
    k = init["bert/encoder/layer_0/attention/self/key/kernel"]
    v = init["bert/encoder/layer_0/attention/self/value/kernel"]
    np.testing.assert_allclose(w[:, 1, 1, :], k[:, 64:128], rtol=1e-6)
    np.testing.assert_allclose(w[:, 0, 2, :], v[:, 0:64], rtol=1e-6)
    # Q would carry a score scale other than 1/sqrt(H) folded in; tf2onnx's is exactly 1/sqrt(H).
    np.testing.assert_allclose(w[:, 1, 0, :], q[:, 64:128], rtol=1e-5)


def test_deterministic(sources, tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    pipeline.run(onnx.load(sources["hf_qa_sdpa"])).save(a)
    pipeline.run(onnx.load(sources["hf_qa_sdpa"])).save(b)
    assert a.read_bytes() == b.read_bytes()


def test_single_head_model(tmp_path):
    """With one head tf2onnx writes the head split as one Reshape to [B, 1, S, H] (no Transpose)."""
    import shutil

    from bertrt.convert.checkpoint import BertConfig, write_checkpoint
    from bertrt.convert.tf_convert import convert_checkpoint
    from bertrt.convert.zoo import random_weights, vocab_path

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    cfg = BertConfig(num_hidden_layers=1, hidden_size=128, num_attention_heads=1, intermediate_size=256,
                     vocab_size=30522)
    write_checkpoint(ckpt, random_weights(cfg, 5, 0.1))
    (ckpt / "bert_config.json").write_text(cfg.to_google_json())
    shutil.copy(vocab_path(), ckpt / "vocab.txt")
    model = tmp_path / "m.onnx"
    convert_checkpoint(ckpt, model, seq=64, log=lambda m: None)
    result = pipeline.run(onnx.load(model))
    assert result.complete, pipeline.report_table(result)
    fused = tmp_path / "fused.onnx"
    result.save(fused)
    assert compare_models(model, fused, batch=2).outputs[0].max_abs <= 1e-4
