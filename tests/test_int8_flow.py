"""INT8 end to end on the tiny model: ranges named after the fused graph, the TensorRT 10.16 calibration cache
covering every tensor an INT8 engine needs, the CPU simulation of the engine against FP32, mixed precision,
and the accuracy metrics themselves."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from bertrt.calib_cache import read_cache
from bertrt.calibrate.evaluate import (eval_samples, evaluate, implicit_int8_model, score_feature, summarize)
from bertrt.calibrate.mixed import float_gemm_drops, float_gemms, gemm_groups
from bertrt.calibrate.qdq import insert_qdq
from bertrt.calibrate.tensors import GraphIndex, weight_gemms
from bertrt.cli import cli
from bertrt.convert.zoo import vocab_path
from bertrt.errors import BertrtError
from bertrt.plugins.nodes import QKV_TO_CONTEXT, SKIP_LAYER_NORM, TYPE_FP16, TYPE_INT8, read_scalar_attrs

DATA = Path(__file__).parents[1] / "calibrate" / "data"
EVAL_NUM = 24

# What TensorRT 10 needs a range for in the tiny model fused at INT8 (trt10, seq 128): both QKVToContext run
# INT8 (head size 64, S = 128), the SkipLayerNorms FP16 (hidden 128 has no INT8 kernel).
INT8_PLUGIN_TENSORS = [  # inputs and outputs of the INT8 plugins (their int32 mask_idx input takes no range)
    "attention_1/to_5d", "attention_1/context",
    "attention_2/to_5d", "attention_2/context",
]
GEMM_TENSORS = [  # input and output of every MatMul with a constant weight
    "emb_layernorm_1/from_5d", "attention_1/qkv_MatMul",        # layer 0 QKV
    "attention_1/from_5d", "MatMul_7/sb",                       # layer 0 attention output dense
    "skip_layernorm_1/from_5d", "MatMul_8/sb",                  # layer 0 intermediate dense
    "Mul_14/Gelu/sb", "MatMul_9/sb",                            # layer 0 output dense
    "skip_layernorm_2/from_5d", "attention_2/qkv_MatMul",       # layer 1 QKV
    "attention_2/from_5d", "MatMul_15/sb",
    "skip_layernorm_3/from_5d", "MatMul_16/sb",
    "Mul_26/Gelu/sb", "MatMul_17/sb",
    "skip_layernorm_4/from_5d", "MatMul_18/sb",                 # QA head
]


def _cli(*args):
    return CliRunner().invoke(cli, [*map(str, args)])


@pytest.fixture(scope="module")
def flow(tiny_onnx, tmp_path_factory):
    """The documented flow through the CLI: surgery --precision int8 --name-map, ranges --name-map, cache."""
    d = tmp_path_factory.mktemp("int8")
    for target in ("trt10", "trt11"):
        r = _cli("surgery", "run", tiny_onnx, "-o", d / f"{target}.onnx", "--target", target, "--precision", "int8",
                 "--name-map", d / f"{target}.map.json")
        assert r.exit_code == 0, r.output
    r = _cli("calibrate", "ranges", tiny_onnx, "--squad-json", DATA / "pydoc_qa_calib.json", "--calib-num", 16,
             "--name-map", d / "trt10.map.json", "-o", d / "ranges.json")
    assert r.exit_code == 0, r.output
    r = _cli("calibrate", "cache", d / "ranges.json", "--trt-version", "10.16", "-o", d / "calib.cache")
    assert r.exit_code == 0, r.output
    return d


@pytest.fixture(scope="module")
def samples():
    return eval_samples(DATA / "pydoc_qa_eval.json", vocab_path(), 128, EVAL_NUM)


def _tensor_names(model):
    return {t for n in model.graph.node for t in [*n.input, *n.output] if t}


def test_cache_parses_back_to_the_ranges(flow):
    ranges = json.loads((flow / "ranges.json").read_text())
    cache = read_cache(flow / "calib.cache")
    assert (cache.version, cache.algorithm) == (101600, "EntropyCalibration2")
    assert sorted(cache.scales) == sorted(ranges)
    for name, amax in ranges.items():
        assert cache.scales[name] == np.float32(amax / 127.0)  # the float32 TensorRT reads
        assert cache.amax[name] == pytest.approx(amax, rel=1e-6)


def test_cache_names_only_fused_tensors(flow):
    fused = onnx.load(flow / "trt10.onnx")
    names = _tensor_names(fused)
    cache = read_cache(flow / "calib.cache")
    assert set(cache.scales) <= names, sorted(set(cache.scales) - names)


def test_every_tensor_trt_needs_has_a_range(flow):
    fused = onnx.load(flow / "trt10.onnx")
    # The explicit list matches the graph: the INT8 plugins and the weight GEMMs found from its structure.
    int8_plugins = [n for n in fused.graph.node if n.op_type in (QKV_TO_CONTEXT, SKIP_LAYER_NORM)
                    and read_scalar_attrs(n)["type_id"].value == TYPE_INT8]
    assert [n.op_type for n in int8_plugins] == [QKV_TO_CONTEXT] * 2
    assert all(read_scalar_attrs(n)["type_id"].value == TYPE_FP16
               for n in fused.graph.node if n.op_type == SKIP_LAYER_NORM)
    assert {t for n in int8_plugins for t in [n.input[0], *n.output]} == set(INT8_PLUGIN_TENSORS)
    gemms = weight_gemms(GraphIndex(fused))
    assert len(gemms) == 9
    assert {t for node, act in gemms for t in (act, node.output[0])} == set(GEMM_TENSORS)

    cache = read_cache(flow / "calib.cache")
    missing = [t for t in INT8_PLUGIN_TENSORS + GEMM_TENSORS if t not in cache.scales]
    assert not missing
    assert all(cache.scales[t] > 0 for t in INT8_PLUGIN_TENSORS + GEMM_TENSORS)
    assert cache.amax["Mul_14/Gelu/sb"] == pytest.approx(10.0)  # the GELU clamp reached the fused name
    # So the simulated engine runs every GEMM in INT8.
    _, report = implicit_int8_model(fused, read_cache(flow / "calib.cache").amax)
    assert len(report.quantized) == 9 and not report.skipped


def test_int8_simulation_close_to_fp32_and_a_wrong_range_hurts(flow, tiny_onnx, samples):
    fused = onnx.load(flow / "trt10.onnx")
    ranges = json.loads((flow / "ranges.json").read_text())
    sim, _ = implicit_int8_model(fused, ranges)
    good = evaluate(tiny_onnx, sim, samples, amax=ranges, progress=False)
    plugins_only = evaluate(tiny_onnx, fused, samples, amax=ranges, progress=False)
    wrong = dict(ranges, **{"skip_layernorm_1/from_5d": ranges["skip_layernorm_1/from_5d"] * 100})
    bad_model, _ = implicit_int8_model(fused, wrong)
    bad = evaluate(tiny_onnx, bad_model, samples, amax=wrong, progress=False)
    print(f"\ntiny INT8 ({EVAL_NUM} features): plugins only {plugins_only.summary()}\n  GEMMs too {good.summary()}"
          f"\n  one GEMM input x100 {bad.summary()}")
    assert good.features == EVAL_NUM
    assert good.cos_start > 0.99 and good.cos_end > 0.985
    assert good.min_cos_start > 0.98 and good.min_cos_end > 0.97
    assert good.agree_start >= 0.75 and good.agree_end >= 0.75
    # INT8 GEMMs add error on top of the INT8 attention alone.
    assert plugins_only.cos_start > good.cos_start and plugins_only.cos_end > good.cos_end
    # The intermediate dense input quantized with a step 100x too coarse: most of it rounds to zero.
    assert bad.cos_start < good.cos_start - 0.05 and bad.cos_end < good.cos_end - 0.05
    assert bad.agree_start + bad.agree_end < good.agree_start + good.agree_end


def test_trt11_qdq_on_the_float16_graph(flow, tiny_onnx, samples):
    fused = onnx.load(flow / "trt11.onnx")
    # trt10 and trt11 fuse to the same tensor names, so one ranges file serves both.
    assert (flow / "trt11.map.json").read_text() == (flow / "trt10.map.json").read_text()
    ranges = json.loads((flow / "ranges.json").read_text())
    assert set(ranges) <= _tensor_names(fused)
    qdq, report = insert_qdq(fused, ranges)
    assert len(report.quantized) == 9 and not report.skipped
    onnx.checker.check_model(qdq)
    scales = [i for i in qdq.graph.initializer if i.name.endswith("_scale")]  # activation and weight scales
    assert scales and all(i.data_type == onnx.TensorProto.FLOAT16 for i in scales)
    result = evaluate(tiny_onnx, qdq, samples, progress=False)
    print(f"\ntiny trt11 Q/DQ: {result.summary()}")
    assert result.cos_start > 0.99 and result.cos_end > 0.985


def test_metrics_by_hand():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((10, 2))
    valid = np.arange(10) < 8
    passage = (np.arange(10) >= 4) & valid
    s = score_feature(ref, 3 * ref, valid, passage)
    assert s["cos_start"] == pytest.approx(1.0) and s["agree_start"] and s["agree_end"]
    # Only valid tokens count: garbage at padded positions changes nothing.
    noisy = ref.copy()
    noisy[8:] = 1e6
    assert score_feature(ref, noisy, valid, passage)["cos_end"] == pytest.approx(1.0)
    # Cosine of [1, 0] against [1, 1] on the start column, computed by hand.
    a = np.zeros((4, 2))
    a[:, 0] = [1, 0, 0, 0]
    b = np.zeros((4, 2))
    b[:, 0] = [1, 1, 0, 0]
    s = score_feature(a, b, np.array([True, True, False, False]), np.array([False, True, True, False]))
    assert s["cos_start"] == pytest.approx(1 / np.sqrt(2))
    # Passage argmax: a[1:3] ties at 0 -> position 1; b's is position 1 too.
    assert s["agree_start"]
    b[2, 0] = 5
    assert not score_feature(a, b, np.array([True] * 4), np.array([False, True, True, False]))["agree_start"]
    # A larger logit outside the passage (the [CLS]) does not change the passage argmax.
    c = ref.copy()
    c[0] = 100
    assert score_feature(ref, c, valid, passage)["agree_start"]
    e = summarize([{"cos_start": 1.0, "cos_end": 0.5, "agree_start": True, "agree_end": False},
                   {"cos_start": 0.8, "cos_end": 0.7, "agree_start": False, "agree_end": False}])
    assert (e.cos_start, e.cos_end, e.agree_start, e.agree_end) == pytest.approx((0.9, 0.6, 0.5, 0.0))
    assert (e.min_cos_start, e.min_cos_end) == (0.8, 0.5) and not e.meets()


def test_canonical_against_itself(tiny_onnx, samples):
    e = evaluate(tiny_onnx, tiny_onnx, samples[:8], progress=False, batch=3)
    assert e.features == 8 and e.min_cos_start > 0.999999 and e.agree_start == e.agree_end == 1.0
    assert all(s["agree_start"] for s in e.per_feature)


def test_gemm_groups(tiny_onnx, flow):
    canonical = onnx.load(tiny_onnx, load_external_data=False)
    layer = ["qkv"] * 3 + ["attn_out", "ffn1", "ffn2"]
    assert list(gemm_groups(canonical).values()) == layer * 2 + ["head"]
    assert list(gemm_groups(onnx.load(flow / "trt10.onnx")).values()) == \
        ["qkv", "attn_out", "ffn1", "ffn2"] * 2 + ["head"]
    assert float_gemm_drops(canonical, ["ffn1", "ffn2"]) == {"MatMul_8", "Add_13", "Mul_14",
                                                             "MatMul_16", "Add_27", "Mul_26"}
    assert float_gemm_drops(canonical, ["head"]) == {"MatMul_18", "Add_33"}
    with pytest.raises(BertrtError, match="qkv cannot be left in float"):
        float_gemm_drops(canonical, ["qkv"])
    with pytest.raises(BertrtError, match="unknown GEMM group"):
        float_gemms(canonical, ["ffn3"])


def test_float_ffn_through_the_cli(flow, tiny_onnx, samples, tmp_path):
    """ranges --float-gemms ffn1,ffn2 (trt10) and qdq --float-gemms ffn1,ffn2 (trt11) leave the same 4 GEMMs
    in float, and the simulated engine gets closer to FP32 than with every GEMM in INT8."""
    r = _cli("calibrate", "ranges", tiny_onnx, "--squad-json", DATA / "pydoc_qa_calib.json", "--calib-num", 16,
             "--name-map", flow / "trt10.map.json", "--float-gemms", "ffn1,ffn2", "-o", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    mixed = json.loads((tmp_path / "r.json").read_text())
    full = json.loads((flow / "ranges.json").read_text())
    assert sorted(set(full) - set(mixed)) == ["Add_13/sb", "Add_27/sb", "MatMul_16/sb", "MatMul_8/sb",
                                              "Mul_14/Gelu/sb", "Mul_26/Gelu/sb"]
    fused = onnx.load(flow / "trt10.onnx")
    sim, report = implicit_int8_model(fused, mixed)
    assert sorted(report.skipped) == ["MatMul_16/sb", "MatMul_17/sb", "MatMul_8/sb", "MatMul_9/sb"]
    assert len(report.quantized) == 5
    e_mixed = evaluate(tiny_onnx, sim, samples, amax=mixed, progress=False)
    e_full = evaluate(tiny_onnx, implicit_int8_model(fused, full)[0], samples, amax=full, progress=False)
    assert e_mixed.cos_start > e_full.cos_start and e_mixed.cos_end > e_full.cos_end

    r = _cli("calibrate", "qdq", flow / "trt11.onnx", "--ranges", flow / "ranges.json", "--float-gemms",
             "ffn1,ffn2", "-o", tmp_path / "q.onnx")
    assert r.exit_code == 0, r.output
    q = onnx.load(tmp_path / "q.onnx")
    dq_out = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    quantized = sorted(n.name for n in q.graph.node if n.op_type == "MatMul" and n.input[1] in dq_out)
    assert quantized == ["MatMul_15/sb", "MatMul_18/sb", "MatMul_7/sb", "attention_1/qkv_MatMul",
                         "attention_2/qkv_MatMul"]

    r = _cli("calibrate", "ranges", tiny_onnx, "--squad-json", DATA / "pydoc_qa_calib.json", "--float-gemms", "qkv",
             "-o", tmp_path / "no.json")
    assert r.exit_code == 1 and "qkv cannot be left in float" in r.output and not (tmp_path / "no.json").exists()


def test_evaluate_command(flow, tiny_onnx, tmp_path):
    data = DATA / "pydoc_qa_eval.json"
    r = _cli("calibrate", "evaluate", tiny_onnx, flow / "trt10.onnx", "--squad-json", data, "--num", 6,
             "--amax", flow / "ranges.json", "-o", tmp_path / "e.json")
    assert r.exit_code == 0, r.output
    assert "9 GEMMs INT8" in r.output and "targets: cosine >= 0.99" in r.output
    scores = json.loads((tmp_path / "e.json").read_text())
    assert scores["features"] == 6 and 0.9 < scores["cos_start"] <= 1.0
    # A candidate far from the original fails --check with exit 1.
    wrong = {k: v * 100 for k, v in json.loads((flow / "ranges.json").read_text()).items()}
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    r = _cli("calibrate", "evaluate", tiny_onnx, flow / "trt10.onnx", "--squad-json", data, "--num", 6,
             "--amax", tmp_path / "wrong.json", "--check")
    row = next(line for line in r.output.splitlines() if line.startswith("trt10.onnx"))
    assert r.exit_code == 1 and row.split()[-1] == "no"
    # ... and passes a check loose enough for it (the targets are options).
    r = _cli("calibrate", "evaluate", tiny_onnx, flow / "trt10.onnx", "--squad-json", data, "--num", 6,
             "--amax", tmp_path / "wrong.json", "--check", "--min-cos", -1, "--min-agree", 0)
    assert r.exit_code == 0, r.output
    row = next(line for line in r.output.splitlines() if line.startswith("trt10.onnx"))
    assert row.split()[-1] == "yes" and "targets: cosine >= -1" in r.output  # the table shows the check's verdict
    # INT8 plugins without their ranges: a one-line error naming the candidate, no output file.
    r = _cli("calibrate", "evaluate", tiny_onnx, flow / "trt10.onnx", "--squad-json", data, "--num", 2,
             "-o", tmp_path / "none.json")
    assert r.exit_code == 1 and "give the ranges" in r.output and "trt10.onnx" in r.output
    assert not (tmp_path / "none.json").exists()


def test_squad_amax_runs_the_simulation_calibrate_evaluate_scores(flow, tiny_onnx, tmp_path):
    """`bertrt squad --amax` and `calibrate evaluate --amax`: one TensorRT 10 simulation (INT8 plugins and GEMMs),
    so the same answers, hence the same EM/F1; without the GEMMs in INT8 (plugins only) the answers differ."""
    ranges = json.loads((flow / "ranges.json").read_text())
    samples = eval_samples(DATA / "pydoc_qa_eval.json", vocab_path(), 128, EVAL_NUM, answers=True)
    sim = evaluate(tiny_onnx, implicit_int8_model(onnx.load(flow / "trt10.onnx"), ranges)[0], samples,
                   amax=ranges, progress=False)
    out = tmp_path / "p.json"
    r = _cli("squad", "--onnx", flow / "trt10.onnx", "--amax", flow / "ranges.json", "--squad-json",
             DATA / "pydoc_qa_eval.json", "--limit", EVAL_NUM, "-o", out, "--report", tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    assert "9 GEMMs in INT8" in r.output
    scores = json.loads((tmp_path / "s.json").read_text())
    assert (scores["exact_match"], scores["f1"]) == pytest.approx((sim.exact_match, sim.f1), abs=1e-9)
    from bertrt.run.backends import ReferenceBackend
    from bertrt.run.squad_predict import predict_examples
    from bertrt.run.tokenization import load_tokenizer

    with ReferenceBackend(flow / "trt10.onnx", amax=ranges) as plugins_only:
        texts = {k: p.text for k, p in predict_examples(plugins_only, load_tokenizer(vocab_path()),
                                                        samples.examples, seq=128).items()}
    assert texts != json.loads(out.read_text())


@pytest.mark.parametrize("name", ["hf_qa_eager", "torch_dynamo_qa"])
def test_head_of_an_hf_export_is_found(canonical_fixtures, name):
    """A PyTorch export's QA head reaches the graph output through the split into start and end logits and
    `convert onnx`'s join of them into logits: `--float-gemms head` finds it, in the canonical and the fused graph."""
    from bertrt.surgery.pipeline import run_file

    canonical = onnx.load(canonical_fixtures[name])
    layer = ["qkv"] * 3 + ["attn_out", "ffn1", "ffn2"]
    groups = gemm_groups(canonical)
    assert list(groups.values()) == layer * 2 + ["head"]
    (head,) = float_gemms(canonical, ["head"])
    out = next(n.output[0] for n in canonical.graph.node if n.name == head)
    bias = next(n.output[0] for n in canonical.graph.node if n.op_type == "Add" and out in n.input)
    assert float_gemm_drops(canonical, ["head"]) == {out, bias}
    fused = run_file(canonical_fixtures[name], target="trt11", precision="int8").model
    assert list(gemm_groups(fused).values()) == ["qkv", "attn_out", "ffn1", "ffn2"] * 2 + ["head"]
    amax = dict.fromkeys({t for n in fused.graph.node for t in n.input}, 1.0)
    _, report = insert_qdq(fused, amax, skip_nodes=float_gemms(fused, ["head"]))
    assert len(report.quantized) == 8 and list(report.skipped) == float_gemms(fused, ["head"])


def test_kernels_backend_runs_every_simulated_int8_gemm_on_integers(flow):
    """The GPU runner (plugins/kernels/torch_ops.py) sums each INT8 GEMM of the TensorRT 10 simulation on the
    integers, as ONNX Runtime does on the CPU: none of the 9 may fall back to dequantize-then-float32."""
    torch = pytest.importorskip("torch")
    from onnx import numpy_helper

    from bertrt.plugins.kernels.torch_ops import INT_MATMUL, TorchSegment
    from bertrt.plugins.runner import ReferenceRunner, Segment

    ranges = json.loads((flow / "ranges.json").read_text())
    sim, report = implicit_int8_model(onnx.load(flow / "trt10.onnx"), ranges)
    runner = ReferenceRunner(sim, amax=ranges)  # the KernelRunner's graph walk too
    consts = {t.name: torch.as_tensor(np.array(numpy_helper.to_array(t))) for t in sim.graph.initializer}
    ops = [n.op_type for seg in runner.steps if isinstance(seg, Segment)
           for n in TorchSegment(seg.nodes, consts, keep=seg.outputs).nodes]
    assert ops.count(INT_MATMUL) == len(report.quantized) == 9
    assert "DequantizeLinear" not in ops


def test_reference_runs_a_simulated_int8_gemm_on_integers(flow):
    """The CPU reference's INT8 GEMM is TensorRT's arithmetic: the integer sum of the quantized activation and
    weight, times the two scales; checked by hand on the first layer's QKV GEMM (its weight's DequantizeLinear
    sits before the EmbLayerNorm plugin in the sorted graph, a segment away from the GEMM)."""
    from onnx import numpy_helper

    from bertrt.plugins.runner import ReferenceRunner

    ranges = json.loads((flow / "ranges.json").read_text())
    sim, _ = implicit_int8_model(onnx.load(flow / "trt10.onnx"), ranges)
    x_name, gemm = "emb_layernorm_1/from_5d", next(n for n in sim.graph.node if n.name == "attention_1/qkv_MatMul")
    sim.graph.output.extend([onnx.ValueInfoProto(name=x_name), onnx.ValueInfoProto(name=gemm.output[0])])
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 1000, (2, 128)).astype(np.int32),
             "segment_ids": (np.arange(128) > 20).astype(np.int32)[None].repeat(2, 0),
             "input_mask": (np.arange(128)[None] < np.array([[128], [70]])).astype(np.int32)}
    out = ReferenceRunner(sim, amax=ranges).run(feeds)
    inits = {t.name: numpy_helper.to_array(t) for t in sim.graph.initializer}
    sx = inits[f"{x_name}_qdq_scale"]
    qw, sw = inits["attention_1/qkv_weight_int8"], inits["attention_1/qkv_weight_scale"]
    qx = np.clip(np.rint(out[x_name] / sx), -128, 127).astype(np.int64)
    by_hand = (qx @ qw.astype(np.int64)).astype(np.float32) * (sx * sw)
    np.testing.assert_array_equal(out[gemm.output[0]], by_hand)
