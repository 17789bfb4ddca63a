"""Smoothing (bertrt calibrate smooth): the same function, a smaller INT8 error (numpy and onnxruntime's Q/DQ
agree on it), roles and groups seen through it, full fusion, the CLI, and MiniLM's INT8 accuracy."""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from bertrt.calibrate import smooth
from bertrt.calib_cache import read_cache
from bertrt.calibrate.data_source import squad_feeds
from bertrt.calibrate.evaluate import eval_samples, evaluate, implicit_int8_model
from bertrt.calibrate.mixed import float_gemms, gemm_groups
from bertrt.calibrate.qdq import insert_qdq
from bertrt.calibrate.stats import calibrate
from bertrt.calibrate.tensors import GraphIndex, select_tensors, weight_gemms
from bertrt.cli import cli
from bertrt.convert.zoo import vocab_path
from bertrt.plugins.nodes import QKV_TO_CONTEXT, SKIP_LAYER_NORM, TYPE_INT8, read_scalar_attrs
from bertrt.plugins.runner import ReferenceRunner
from bertrt.surgery import pipeline

DATA = Path(__file__).parents[1] / "calibrate" / "data"


def _cli(*args):
    return CliRunner().invoke(cli, [*map(str, args)])


def _session(model):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # Q/DQ run as written
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def minilm(minilm_onnx):
    """(canonical, smoothed, plan, calibration feeds) for the real-weight minilm at seq 128."""
    feeds = squad_feeds(DATA / "pydoc_qa_calib.json", vocab_path(), 128, num=100)
    canonical = onnx.load(minilm_onnx)
    plan = smooth.plan(canonical, feeds, progress=False)
    return canonical, smooth.apply(canonical, plan), plan, feeds


def test_int8_gemm_error_matches_onnxruntime_qdq():
    """The error alpha is chosen by, against the same GEMM quantized by insert_qdq and run by onnxruntime."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, 16)).astype(np.float32)
    x[:, 5] *= 20  # an outlier channel
    w = rng.normal(size=(16, 8)).astype(np.float32)
    amax = float(np.abs(x).max())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="gemm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 8])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    qdq, report = insert_qdq(model, {"x": amax})
    assert report.quantized == ["gemm"]
    y_q = _session(qdq).run(["y"], {"x": x})[0].astype(np.float64)
    ref = x.astype(np.float64) @ w
    expected = np.linalg.norm(ref - y_q) / np.linalg.norm(ref)
    assert smooth.int8_gemm_error(x, w, amax) == pytest.approx(expected, rel=1e-4)


def test_choose_moves_an_outlier_channel_into_the_weights():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 32))
    x[:, 7] *= 30
    w = rng.normal(size=(32, 24)) * 0.05
    stats = smooth._Stats(np.abs(x).max(axis=0), x.astype(np.float32))
    alpha, before, after, s = choose_result = smooth.choose(stats, w)
    assert alpha is not None and after < before / 2, choose_result[:3]
    assert s[7] == s.max()  # the outlier channel is divided the most
    # The chosen error is what int8_gemm_error says for those scales (no other quantity is reported).
    assert after == pytest.approx(smooth.int8_gemm_error(x / s, w * s[:, None], float(np.max(stats.absmax / s))))
    # Channels with no signal keep s = 1, and s stays within its limits.
    s0 = smooth.smoothing_scale(np.array([0.0, 1e6, 1.0]), np.array([1.0, 1e-9, 1.0]), 1.0)
    assert s0[0] == 1.0 and s0[1] == 1.0 and s0[2] == 1.0
    assert smooth.smoothing_scale(np.array([1e9]), np.array([1.0]), 1.0)[0] == smooth.SCALE_LIMIT


@pytest.mark.slow
def test_smoothed_minilm_computes_the_same(minilm, minilm_onnx):
    canonical, smoothed, plan, feeds = minilm
    chosen = [p for p in plan if p.alpha is not None]
    assert len(plan) == 6 * 4 + 1  # QKV (one activation for Q, K and V), attention out, FFN1, FFN2; the head
    assert len(chosen) >= 20 and all(p.error_after < p.error_before for p in chosen)
    assert sum(n.op_type == "Mul" and n.name.endswith("/Smooth") for n in smoothed.graph.node) == len(chosen)
    a, b = _session(minilm_onnx), _session(smoothed)
    for feed in feeds[:4]:
        ref, got = a.run(["logits"], feed)[0], b.run(["logits"], feed)[0]
        assert np.max(np.abs(ref - got)) <= 1e-5 * max(1.0, np.max(np.abs(ref)))
    # The weights really changed (the test above would pass on an untouched copy otherwise).
    w0 = {i.name: numpy_helper.to_array(i) for i in canonical.graph.initializer}
    changed = [i.name for i in smoothed.graph.initializer if i.name in w0
               and not np.array_equal(w0[i.name], numpy_helper.to_array(i))]
    assert len(changed) == sum(len(p.gemms) for p in chosen)


@pytest.mark.slow
def test_roles_and_groups_see_through_the_smoothing(minilm):
    canonical, smoothed, plan, feeds = minilm
    before, after = select_tensors(canonical), select_tensors(smoothed)
    assert {k: v for k, v in after.items() if k in before} == before  # every tensor keeps its role
    added = {k: v for k, v in after.items() if k not in before}
    assert added == {p.activation + smooth.SMOOTHED: "gemm_input" for p in plan if p.alpha is not None}
    assert gemm_groups(smoothed) == gemm_groups(canonical)
    # The GELU outputs stay GELU outputs (the clamp is theirs), not the smoothed tensors after them.
    gelu = [t for t, r in after.items() if r == "gelu"]
    assert len(gelu) == 6 and not any(t.endswith(smooth.SMOOTHED) for t in gelu)


@pytest.mark.slow
def test_skipped_gemms_are_left_alone(minilm):
    canonical, _, _, feeds = minilm
    skip = float_gemms(canonical, ["ffn2"])
    plan = smooth.plan(canonical, feeds[:8], skip_gemms=skip, progress=False)
    assert len(plan) == 6 * 3 + 1
    assert not {g for p in plan for g in p.gemms} & set(skip)


@pytest.mark.slow
def test_surgery_fuses_the_smoothed_model(minilm, minilm_onnx, tmp_path):
    _, smoothed, plan, feeds = minilm
    path = tmp_path / "smoothed.onnx"
    onnx.save(smoothed, path)
    result = pipeline.run_file(path, target="trt10", precision="fp32")
    assert result.complete
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("CustomEmbLayerNormPluginDynamic") == 1 and ops.count("CustomQKVToContextPluginDynamic") == 6
    assert ops.count("CustomSkipLayerNormPluginDynamic") == 12
    names = result.name_map()
    assert all(p.activation + smooth.SMOOTHED in names for p in plan if p.alpha is not None)
    runner = ReferenceRunner(result.model)
    ref = _session(minilm_onnx)
    for feed in feeds[:2]:
        assert np.max(np.abs(ref.run(["logits"], feed)[0] - runner.run(feed)["logits"])) < 1e-4


@pytest.mark.slow
def test_minilm_int8_closer_to_fp32_smoothed(minilm, minilm_onnx):
    """Full INT8 GEMMs (Q/DQ, minmax ranges) on MiniLM: below the 0.99 cosine target as converted, above it
    smoothed; leaving the FFN2 GEMMs in float (smoothing the rest) comes closer still."""
    canonical, smoothed, _, feeds = minilm
    samples = eval_samples(DATA / "pydoc_qa_eval.json", vocab_path(), 128, 100)
    plain = insert_qdq(canonical, calibrate(minilm_onnx, feeds, method="minmax", progress=False).amax)[0]
    e_plain = evaluate(minilm_onnx, plain, samples, progress=False)
    amax = calibrate_model(smoothed, feeds)
    roles = select_tensors(smoothed)
    assert all(amax[t] == 10.0 for t, r in roles.items() if r == "gelu")  # the GELU clamp, where it belongs
    assert all(amax[t] < 10.0 for t in roles if t.endswith(smooth.SMOOTHED))
    e_smooth = evaluate(minilm_onnx, insert_qdq(smoothed, amax)[0], samples, progress=False)
    print(f"\nminilm seq 128 full INT8 (minmax): as converted {e_plain.summary()}\n  smoothed {e_smooth.summary()}")
    assert min(e_plain.cos_start, e_plain.cos_end) < 0.99 < min(e_smooth.cos_start, e_smooth.cos_end)
    assert e_smooth.agree_start + e_smooth.agree_end > e_plain.agree_start + e_plain.agree_end


def calibrate_model(model, feeds):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.onnx"
        onnx.save(model, path)
        return calibrate(path, feeds, method="minmax", progress=False).amax


def test_smooth_command_and_the_int8_flow(tiny_onnx, tmp_path):
    """calibrate smooth -> surgery --precision int8 -> ranges -> cache on the tiny model: the output is the same
    bytes twice, and the cache covers every tensor the INT8 engine reads or writes, the smoothed ones too."""
    calib = DATA / "pydoc_qa_calib.json"
    outs = []
    for i in range(2):
        out = tmp_path / f"s{i}.onnx"
        r = _cli("calibrate", "smooth", tiny_onnx, "--squad-json", calib, "--calib-num", 8, "--report",
                 tmp_path / "smooth.json", "-o", out)
        assert r.exit_code == 0, r.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    report = json.loads((tmp_path / "smooth.json").read_text())
    assert report["samples"] == 8 and len(report["smoothing"]) == 2 * 4 + 1
    chosen = [row for row in report["smoothing"] if row["alpha"] is not None]
    assert chosen and all(row["int8_error_after"] < row["int8_error_before"] for row in chosen)
    smoothed = tmp_path / "s0.onnx"
    assert _cli("surgery", "run", smoothed, "-o", tmp_path / "fused.onnx", "--target", "trt10", "--precision",
                "int8", "--name-map", tmp_path / "map.json").exit_code == 0
    assert _cli("calibrate", "ranges", smoothed, "--squad-json", calib, "--calib-num", 8, "--name-map",
                tmp_path / "map.json", "-o", tmp_path / "ranges.json").exit_code == 0
    assert _cli("calibrate", "cache", tmp_path / "ranges.json", "--trt-version", "10.16", "-o",
                tmp_path / "calib.cache").exit_code == 0
    fused = onnx.load(tmp_path / "fused.onnx")
    cache = read_cache(tmp_path / "calib.cache")
    plugins = [n for n in fused.graph.node if n.op_type in (QKV_TO_CONTEXT, SKIP_LAYER_NORM)
               and read_scalar_attrs(n)["type_id"].value == TYPE_INT8]
    needed = {t for n in plugins for t in [n.input[0], *n.output]}
    needed |= {t for node, act in weight_gemms(GraphIndex(fused)) for t in (act, node.output[0])}
    assert len(plugins) == 2 and any(t.split("/smoothed")[0] != t for t in needed)
    assert not needed - set(cache.scales), sorted(needed - set(cache.scales))
    assert set(cache.scales) <= {t for n in fused.graph.node for t in [*n.input, *n.output]}
    _, rep = implicit_int8_model(fused, cache.amax)
    assert len(rep.quantized) == 9 and not rep.skipped


@pytest.mark.parametrize("case", ["missing model", "missing squad", "no source", "qat model"])
def test_smooth_errors_leave_no_output(case, tiny_onnx, canonical_fixtures, tmp_path):
    out = tmp_path / "out.onnx"
    model = {"missing model": tmp_path / "nope.onnx", "qat model": canonical_fixtures["qat_qdq"]}.get(case, tiny_onnx)
    source = [] if case == "no source" else ["--squad-json",
                                             tmp_path / "nope.json" if case == "missing squad" else
                                             DATA / "pydoc_qa_calib.json"]
    r = _cli("calibrate", "smooth", model, *source, "-o", out)
    assert r.exit_code != 0 and not out.exists()
    expected = {"missing model": "nope.onnx", "missing squad": "nope.json", "no source": "--squad-json",
                "qat model": "quantized already"}[case]
    assert expected in r.output
    if case != "no source":
        assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["hf_qa_eager", "hf_qa_sdpa", "torch_dynamo_qa", "torch_legacy_bert"])
def test_every_exporter_fuses_smoothed(name, canonical_fixtures, tmp_path):
    """Smoothing adds a Mul before GEMMs whatever the exporter; surgery still fuses all of it, and the fused
    graph on the plugin reference matches the original model on ONNX Runtime."""
    path = canonical_fixtures[name]
    model = onnx.load(path)
    dtypes = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    seq = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value or 64
    rng = np.random.default_rng(0)
    feeds = []
    for _ in range(4):
        mask = np.ones((1, seq), np.int64)
        mask[0, rng.integers(seq // 2, seq):] = 0
        feed = {"input_ids": rng.integers(0, 100, size=(1, seq)), "input_mask": mask,
                "segment_ids": (np.arange(seq)[None] > seq // 3).astype(np.int64)}
        feeds.append({k: v.astype(np.int32 if dtypes[k] == TensorProto.INT32 else np.int64)
                      for k, v in feed.items() if k in dtypes})
    plan = smooth.plan(model, feeds, progress=False)
    smoothed = smooth.apply(model, plan)
    assert sum(n.name.endswith("/Smooth") for n in smoothed.graph.node) == sum(p.alpha is not None for p in plan) > 0
    assert gemm_groups(smoothed) == gemm_groups(model)
    out = tmp_path / "smoothed.onnx"
    onnx.save(smoothed, out)
    result = pipeline.run_file(out, target="trt10", precision="fp32")
    ops = [n.op_type for n in result.model.graph.node]
    assert result.complete and ops.count("CustomQKVToContextPluginDynamic") == 2
    ref, runner = _session(path), ReferenceRunner(result.model)
    for feed in feeds[:2]:
        assert np.max(np.abs(ref.run(["logits"], feed)[0] - runner.run(feed)["logits"])) < 1e-4


def test_gemm_transposed_weight_and_shared_weights():
    """A Gemm with transB scales its weight's columns; a weight two GEMMs share is left alone (scaling it for
    one input would change the other GEMM)."""
    rng = np.random.default_rng(1)
    w_t = rng.normal(size=(8, 16)).astype(np.float32)  # [out, in]
    shared = rng.normal(size=(16, 8)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w_t", "b"], ["y"], name="gemm", transB=1),
             helper.make_node("MatMul", ["x2", "shared"], ["z1"], name="mm1"),
             helper.make_node("MatMul", ["x3", "shared"], ["z2"], name="mm2")]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [32, 16]) for n in ("x", "x2", "x3")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "z1", "z2")]
    inits = [numpy_helper.from_array(w_t, "w_t"), numpy_helper.from_array(np.ones(8, np.float32), "b"),
             numpy_helper.from_array(shared, "shared")]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    feeds = []
    for _ in range(4):
        x = rng.normal(size=(32, 16)).astype(np.float32)
        x[:, 3] *= 40
        feeds.append({"x": x, "x2": x, "x3": x})
    plan = smooth.plan(model, feeds, progress=False)
    assert [(p.activation, p.alpha is not None, p.reason) for p in plan] == [
        ("x", True, ""), ("x2", False, "a weight is shared with another node"),
        ("x3", False, "a weight is shared with another node")]
    smoothed = smooth.apply(model, plan)
    a, b = _session(model), _session(smoothed)
    for feed in feeds:
        for ref, got in zip(a.run(None, feed), b.run(None, feed)):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
    w_new = next(numpy_helper.to_array(i) for i in smoothed.graph.initializer if i.name == "w_t")
    np.testing.assert_allclose(w_new, w_t * plan[0].scale[None, :], rtol=1e-6)
