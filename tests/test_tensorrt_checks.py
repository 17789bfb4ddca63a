"""What TensorRT would trip on (#14), refused before a GPU is involved: plugin types in a strongly typed network,
profiles past the position table, a target outside its TensorRT range, a cache header for another TensorRT."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from bertrt.cli import cli
from bertrt.errors import BertrtError


def bertrt(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def fused(tiny_onnx, tmp_path_factory):
    """target/precision -> the tiny model (seq 128) fused by `bertrt surgery run`, and its name map."""
    folder = tmp_path_factory.mktemp("fused")
    out = {}
    for target, precision, extra in (("trt10", "int8", ()), ("trt11", "int8", ()), ("trt10-legacy", "fp16", ()),
                                     ("trt10", "fp16", ("--varseqlen",))):
        path = folder / f"{target}-{precision}{'-packed' if extra else ''}.onnx"
        r = bertrt("surgery", "run", tiny_onnx, "-o", path, "--target", target, "--precision", precision,
                   "--name-map", folder / f"{path.stem}.map.json", *extra)
        assert r.exit_code == 0, r.output
        out[path.stem] = path
    return out


@pytest.fixture(scope="module")
def tiny_ranges(fused, tiny_onnx):
    """amax of every GEMM input of the trt10 fused graph (values need not be measured for these checks)."""
    from bertrt.calibrate.tensors import GraphIndex, weight_gemms

    model = onnx.load(fused["trt10-int8"])
    return {act: 4.0 for _node, act in weight_gemms(GraphIndex(model))}


# ---------------------------------------------------------------- 1. plugin types in a strongly typed network


def test_validator_checks_plugin_types_only_for_a_strongly_typed_network(fused):
    from bertrt.plugins.specs import graph_typing_problems, validate

    trt10, trt11 = onnx.load(fused["trt10-int8"]), onnx.load(fused["trt11-int8"])
    qkv = next(n for n in trt10.graph.node if n.op_type == "CustomQKVToContextPluginDynamic")
    assert validate(qkv, trt10) == []  # weakly typed: TensorRT 10's FP16 flag converts at the plugin
    problems = validate(qkv, trt10, strongly_typed=True)
    assert any("input 0 (qkv)" in p and "is float32, but type_id = 2 (INT8) needs int8" in p for p in problems)
    emb = next(n for n in trt10.graph.node if n.op_type == "CustomEmbLayerNormPluginDynamic")
    assert any("output_fp16 = 1 needs float16" in p for p in validate(emb, trt10, strongly_typed=True))
    # 2 INT8 QKV (input, output), 4 FP16 SkipLayerNorm (two inputs, the output), EmbLayerNorm's output: 17 tensors.
    assert len(graph_typing_problems(trt10)) == 17
    assert graph_typing_problems(trt11) == []


def test_calibrate_qdq_refuses_a_graph_typed_for_trt10(fused, tiny_ranges, tmp_path):
    from bertrt.plugins.specs import graph_typing_problems

    ranges = tmp_path / "ranges.json"
    ranges.write_text(json.dumps(tiny_ranges))
    out = tmp_path / "fused.qdq.onnx"
    r = bertrt("calibrate", "qdq", fused["trt10-int8"], "--ranges", ranges, "-o", out)
    assert r.exit_code == 1, r.output
    assert r.output.count("\n") == 1 and r.output.startswith(f"Error: {fused['trt10-int8']}: its plugin nodes are "
                                                             "typed for a weakly typed TensorRT 10 build")
    assert "--target trt11" in r.output and not out.exists()
    trt11_ranges = tmp_path / "ranges11.json"
    trt11 = onnx.load(fused["trt11-int8"])
    from bertrt.calibrate.tensors import GraphIndex, weight_gemms

    trt11_ranges.write_text(json.dumps({act: 4.0 for _n, act in weight_gemms(GraphIndex(trt11))}))
    r = bertrt("calibrate", "qdq", fused["trt11-int8"], "--ranges", trt11_ranges, "-o", out)
    assert r.exit_code == 0, r.output
    assert graph_typing_problems(onnx.load(out)) == []


def test_build_refuses_a_trt10_int8_graph_qdqd_for_trt11(fused, tiny_ranges, tmp_path):
    """Acceptance: README's former recipe (trt10 surgery, then Q/DQ for TensorRT 11) is refused by build."""
    from bertrt.calibrate.qdq import insert_qdq
    from bertrt.onnx_io import save_model

    qdq, _ = insert_qdq(onnx.load(fused["trt10-int8"]), tiny_ranges)  # the library, as calibrate qdq did before
    path = save_model(qdq, tmp_path / "trt10.qdq.onnx")
    r = bertrt("build", path, "-o", tmp_path / "e.plan", "--target", "trt11", "--precision", "int8", "--dry-run")
    assert r.exit_code == 1, r.output
    assert r.output.count("\n") == 1  # one line, and nothing of a plan before it
    line = r.output.strip()
    assert line.startswith(f"Error: {path}: TensorRT cannot build it as planned: ")
    assert "is float32, but" in line and "a strongly typed network converts no types for a plugin" in line
    assert "bertrt surgery run --target trt11" in line and not (tmp_path / "e.plan").exists()


# ---------------------------------------------------------------- 2. profiles past the position table


def test_build_caps_a_packed_graph_at_its_position_table(fused, tmp_path):
    """Acceptance: the tiny model converted at 128 keeps 128 position rows; a profile of 384 would read past them."""
    packed = fused["trt10-fp16-packed"]
    r = bertrt("build", packed, "-o", tmp_path / "e.plan", "--seq", "384", "--dry-run")
    assert r.exit_code == 1
    assert r.output.strip() == (f"Error: {packed}: seq 384 is longer than the model's 128 positions; "
                                "build for sequences of 128 tokens or fewer")
    r = bertrt("build", packed, "-o", tmp_path / "e.plan", "--dry-run")  # the default: 384, capped at 128
    assert r.exit_code == 0, r.output
    assert "--seq 128" in r.output and "max_seqlen min (1,) opt (128,) max (128,)" in r.output
    from bertrt.run.engine_build import make_plan

    with pytest.raises(BertrtError, match="seq 512 is longer than the 384 tokens a var-seqlen plugin computes"):
        make_plan("p.onnx", "e", target="trt10", precision="fp16", seqs=(512,), varseqlen=True, max_seq=384,
                  positions=512)


# ---------------------------------------------------------------- 3. each target's TensorRT range


def test_each_target_says_the_tensorrt_it_runs_on():
    from bertrt.run.engine_build import check_trt_version, tensorrt_range

    assert tensorrt_range("trt10-legacy") == ((10, 0, 0), (11, 0, 0))  # the Gelu op at opset 20: parser 10.0
    assert tensorrt_range("trt10") == ((10, 6, 0), (11, 0, 0))  # EmbLayerNorm v6 came in 10.6
    assert tensorrt_range("trt11") == ((11, 0, 0), None)
    check_trt_version("trt10-legacy", "10.0.1")
    check_trt_version("trt10", "10.16.1.11")
    for target, version in (("trt10-legacy", "9.3"), ("trt10", "10.5"), ("trt10", "11.1"), ("trt11", "10.16")):
        with pytest.raises(BertrtError, match=f"target {target} is for TensorRT .*, not {version}") as e:
            check_trt_version(target, version)
        fits = {"9.3": "no target of bertrt is for TensorRT 9.3", "10.5": "use --target trt10-legacy",
                "11.1": "use --target trt11", "10.16": "use --target trt10"}[version]
        assert fits in str(e.value)  # the hint: the target that is for that TensorRT, or that none is


def test_build_refuses_a_trt10_legacy_graph_for_tensorrt_8_6(fused, tmp_path):
    """Acceptance: trt10-legacy graphs hold the Gelu op at opset 20, which TensorRT 8.6's parser has not."""
    legacy = fused["trt10-legacy-fp16"]
    assert {o.domain: o.version for o in onnx.load(legacy).opset_import}[""] == 20
    r = bertrt("build", legacy, "-o", tmp_path / "e.plan", "--target", "trt10-legacy", "--trt-version", "8.6",
               "--dry-run")
    assert r.exit_code == 1
    assert r.output.strip() == (f"Error: {legacy}: target trt10-legacy is for TensorRT 10.0 to 10.x, not 8.6; "
                                "no target of bertrt is for TensorRT 8.6 (the oldest, trt10-legacy, needs 10.0)")
    assert not (tmp_path / "e.plan").exists()
    r = bertrt("build", legacy, "-o", tmp_path / "e.plan", "--target", "trt10-legacy", "--trt-version", "10.0",
               "--dry-run")
    assert r.exit_code == 0, r.output


def test_build_refuses_plugin_versions_the_tensorrt_has_not(fused, tmp_path):
    trt10 = fused["trt10-int8"]
    r = bertrt("build", trt10, "-o", tmp_path / "e.plan", "--target", "trt10-legacy", "--trt-version", "10.3",
               "--precision", "fp16", "--dry-run")
    assert r.exit_code == 1
    assert "CustomEmbLayerNormPluginDynamic v6 is in TensorRT's plugin library from 10.6, not in 10.3" in r.output


# ---------------------------------------------------------------- 4. the cache header against the TensorRT


def test_build_gives_tensorrt_the_cache_under_its_own_header(fused, tmp_path):
    from bertrt.calib_cache import write_cache

    cache = tmp_path / "calib.cache"
    names = json.loads((fused["trt10-int8"].parent / "trt10-int8.map.json").read_text())
    write_cache(cache, {n: 3.0 for n in names}, "10.16", name_map=names, drop_unmapped=True)
    args = ["build", fused["trt10-int8"], "-o", tmp_path / "e.plan", "--precision", "int8", "--calib-cache", cache,
            "--dry-run"]
    r = bertrt(*args, "--trt-version", "10.8")
    assert r.exit_code == 0, r.output
    assert ("note: the calibration cache's header is TensorRT 10.16.0's; TensorRT 10.8 gets it with its own header"
            in r.output)
    r = bertrt(*args, "--trt-version", "10.16.0")
    assert r.exit_code == 0 and "header" not in r.output


# ---------------------------------------------------------------- 5. the IR version follows the opset


def test_the_ir_version_is_raised_with_the_opset(tiny_onnx, fused):
    """The gelu pass raises the opset to 20; IR 8 (tf2onnx's) cannot declare it (onnx.helper says 9)."""
    assert onnx.load(tiny_onnx).ir_version == 8
    for path in fused.values():
        model = onnx.load(path)
        need = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
        assert {o.domain: o.version for o in model.opset_import}[""] == 20 and need == 9
        assert model.ir_version >= need
        onnx.checker.check_model(model)


def test_qdq_weights_are_rounded_with_the_scale_the_graph_stores(fused, tiny_ranges):
    """A trt11 graph is float16: its per-channel weight scales are stored as float16, and TensorRT dequantizes
    with those. Each int8 weight must be the nearest step of that scale (hand-computed here), not of the float32
    scale it was cast from (up to 0.05% per channel apart on minilm)."""
    from onnx import numpy_helper

    from bertrt.calibrate.qdq import insert_qdq
    from bertrt.calibrate.tensors import GraphIndex, weight_gemms

    model = onnx.load(fused["trt11-int8"])
    acts = {act: 4.0 for _n, act in weight_gemms(GraphIndex(model))}
    qdq, report = insert_qdq(model, acts)
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    checked = 0
    for node in qdq.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in after or after[node.input[0]].ndim != 2:
            continue
        q, scale = after[node.input[0]], after[node.input[1]]
        w = before[node.input[0][: -len("_int8")]].astype(np.float64)
        axis = next(a.i for a in node.attribute if a.name == "axis")
        assert scale.dtype == np.float16 and w.shape == q.shape
        step = scale.astype(np.float64).reshape([-1, 1] if axis == 0 else [1, -1])
        want = np.clip(np.rint(w / step), -127, 127)
        assert np.array_equal(q, want), node.name
        checked += 1
    assert checked == len(report.quantized) > 0


def test_qdq_names_the_ranges_file_for_what_it_lacks(fused, tiny_ranges, tmp_path):
    ranges = tmp_path / "ranges.json"
    ranges.write_text(json.dumps({"not_in_the_graph": 1.0}))
    r = bertrt("calibrate", "qdq", fused["trt11-int8"], "--ranges", ranges, "-o", tmp_path / "q.onnx")
    assert r.exit_code == 1 and r.output.startswith(f"Error: {ranges}: no range for "), r.output
    model = onnx.load(fused["trt11-int8"])
    from bertrt.calibrate.tensors import GraphIndex, weight_gemms

    huge = {act: 1e7 for _n, act in weight_gemms(GraphIndex(model))}  # scale 78740: past float16's 65504
    ranges.write_text(json.dumps(huge))
    r = bertrt("calibrate", "qdq", fused["trt11-int8"], "--ranges", ranges, "-o", tmp_path / "q.onnx")
    assert r.exit_code == 1 and "is not a positive finite float16" in r.output and not (tmp_path / "q.onnx").exists()
