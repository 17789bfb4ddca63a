"""bertrt build: the BuildPlan per target × precision, Polygraphy's loaders, and exit 3 without TensorRT."""

import importlib.util
import struct
import subprocess
import sys

import onnx
import pytest
from click.testing import CliRunner

from bertrt.cli import cli
from bertrt.errors import BertrtError
from bertrt.plugins.handbuilt import fused_bert, random_bert_weights
from bertrt.ranges import read_ranges
from bertrt.calib_cache import read_cache
from bertrt.run.engine_build import check_profiles, make_loaders, make_plan, model_facts, tactic_source_bits

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
INPUTS = ("input_ids", "segment_ids", "input_mask")


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    path = tmp_path_factory.mktemp("build") / "fused.onnx"
    onnx.save(fused_bert(random_bert_weights(2, 128, 2, 512), 2, 2), path)
    return path


@pytest.fixture
def ranges(tmp_path):
    path = tmp_path / "ranges.json"
    path.write_text('{"emb_7": 4.5, "l0_qkv_out_13": 12.0}')
    return path


@pytest.fixture
def cache(tmp_path):
    path = tmp_path / "calib.cache"
    scale = struct.pack(">f", 4.5 / 127).hex()
    path.write_text(f"TRT-101600-EntropyCalibration2\ninput_ids: {scale}\nemb_7: {scale}\n")
    return path


# target, precision -> (strongly typed, FP16 flag, INT8 flag)
EXPECTED = {
    ("trt10-legacy", "fp32"): (False, False, False),
    ("trt10-legacy", "fp16"): (False, True, False),
    ("trt10-legacy", "int8"): (False, True, True),
    ("trt10", "fp32"): (False, False, False),
    ("trt10", "fp16"): (False, True, False),
    ("trt10", "int8"): (False, True, True),
    ("trt11", "fp32"): (True, False, False),
    ("trt11", "fp16"): (True, False, False),
    ("trt11", "int8"): (True, False, False),
}


@pytest.mark.parametrize("target,precision", sorted(EXPECTED))
def test_plan_per_target_and_precision(target, precision, ranges):
    strongly_typed, fp16, int8 = EXPECTED[target, precision]
    kwargs = {}
    if precision == "int8":
        kwargs = {"has_qdq": True} if strongly_typed else {"ranges": ranges}
    plan = make_plan("fused.onnx", "engine.plan", target=target, precision=precision, batches=(8, 1), seqs=(384,),
                     **kwargs)
    assert (plan.strongly_typed, plan.fp16, plan.int8) == (strongly_typed, fp16, int8)
    assert plan.profiles == (
        {n: ((1, 384), (1, 384), (1, 384)) for n in INPUTS},
        {n: ((1, 384), (8, 384), (8, 384)) for n in INPUTS},
    )
    assert plan.ranges == (str(ranges) if precision == "int8" and not strongly_typed else None)
    assert plan.tactic_sources == (() if strongly_typed else ("+CUBLAS", "-CUDNN"))
    assert plan.workspace_mb == 2500 and plan.avg_timing_iterations == 8
    assert f"--target {target} --precision {precision} --batch 1,8 --seq 384" in plan.command()


def test_profiles_per_batch_and_seq():
    plan = make_plan("f.onnx", "e.plan", target="trt10", precision="fp16", batches=(1, 4), seqs=(384, 128))
    shapes = [p["input_mask"] for p in plan.profiles]
    assert shapes == [((1, 128), (1, 128), (1, 128)), ((1, 384), (1, 384), (1, 384)),
                      ((1, 128), (4, 128), (4, 128)), ((1, 384), (4, 384), (4, 384))]


def test_varseqlen_profiles():
    plan = make_plan("f.onnx", "e.plan", target="trt10", precision="fp16", batches=(1, 8), seqs=(128, 256),
                     varseqlen=True)
    assert plan.workspace_mb is None  # builder_varseqlen.py: unlimited unless -w
    assert plan.profiles[1] == {"input_ids": ((1,), (2048,), (2048,)), "segment_ids": ((1,), (2048,), (2048,)),
                                "cu_seqlens": ((1,), (9,), (9,)), "max_seqlen": ((1,), (256,), (256,))}
    assert plan.profiles[0]["cu_seqlens"] == ((1,), (2,), (2,))


def test_int8_scales_rules(ranges, cache):
    with pytest.raises(BertrtError, match="needs scales"):
        make_plan("f.onnx", "e", target="trt10", precision="int8")
    with pytest.raises(BertrtError, match="not both"):
        make_plan("f.onnx", "e", target="trt10", precision="int8", ranges=ranges, calib_cache=cache)
    with pytest.raises(BertrtError, match="does not use them"):
        make_plan("f.onnx", "e", target="trt10", precision="fp16", ranges=ranges)
    with pytest.raises(BertrtError, match="strongly typed"):
        make_plan("f.onnx", "e", target="trt11", precision="int8", has_qdq=True, calib_cache=cache)
    with pytest.raises(BertrtError, match="has none"):
        make_plan("f.onnx", "e", target="trt11", precision="int8")
    plan = make_plan("f.onnx", "e", target="trt10-legacy", precision="int8", calib_cache=cache)
    assert plan.calib_cache == str(cache) and plan.calibrate_before_fusion and plan.ranges is None
    plan = make_plan("f.onnx", "e", target="trt10", precision="int8", has_qdq=True)
    assert plan.int8 and plan.ranges is None and plan.calib_cache is None


def test_loaders_carry_the_plan_and_import_no_tensorrt(ranges, tmp_path):
    plan = make_plan("fused.onnx", "engine.plan", target="trt10", precision="int8", batches=(1, 8), seqs=(384,),
                     ranges=ranges, timing_cache=tmp_path / "timing.cache")
    loaders = make_loaders(plan, out_path=tmp_path / "out.plan")
    from polygraphy.backend.trt import CreateConfig, NetworkFromOnnxPath, PostprocessNetwork, SaveEngine

    assert isinstance(loaders.parse, NetworkFromOnnxPath) and loaders.parse.path == "fused.onnx"
    assert loaders.parse.strongly_typed is False
    assert isinstance(loaders.network, PostprocessNetwork)  # the dynamic ranges step
    assert isinstance(loaders.create_config, CreateConfig)
    assert (loaders.create_config.fp16, loaders.create_config.int8) == (True, True)
    assert loaders.create_config.timing_cache_path == str(tmp_path / "timing.cache")
    assert loaders.engine.timing_cache_path == str(tmp_path / "timing.cache")
    assert isinstance(loaders.save, SaveEngine) and loaders.save.path == str(tmp_path / "out.plan")
    profiles = loaders.create_config.profiles
    assert len(profiles) == 2
    assert [tuple(profiles[1][n]) for n in INPUTS] == [((1, 384), (8, 384), (8, 384))] * 3
    if not HAS_TRT:
        assert "tensorrt" not in sys.modules


def test_strongly_typed_loaders():
    plan = make_plan("fused.onnx", "engine.plan", target="trt11", precision="fp16")
    loaders = make_loaders(plan)
    assert loaders.parse.strongly_typed is True
    assert loaders.network is loaders.parse  # no ranges step
    assert (loaders.create_config.fp16, loaders.create_config.int8) == (False, False)


def test_model_facts_and_profile_check(fused, tiny_onnx):
    facts = model_facts(onnx.load(fused))
    assert {k: facts[k] for k in ("varseqlen", "has_qdq", "dims", "max_seq")} == {
        "varseqlen": False, "has_qdq": False, "dims": {n: (None, None) for n in INPUTS}, "max_seq": 512}
    plan = make_plan(tiny_onnx, "e", target="trt10", precision="fp16", batches=(1, 8), seqs=(384,))
    with pytest.raises(BertrtError, match="fixed dimension 1 = 128.*sequence length 128"):
        check_profiles(plan, model_facts(onnx.load(tiny_onnx))["dims"], tiny_onnx)


def test_read_ranges_and_cache(tmp_path, ranges, cache):
    # One reader of each format for every stage (bertrt.ranges, bertrt.calib_cache); their own tests try the rest.
    assert read_ranges(ranges) == {"emb_7": 4.5, "l0_qkv_out_13": 12.0}
    nested = tmp_path / "nested.json"
    nested.write_text('{"amax": {"a": 1}}')  # not the format: one object of tensor -> amax
    with pytest.raises(BertrtError, match="amax of 'amax' is"):
        read_ranges(nested)
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": -1}')
    with pytest.raises(BertrtError, match="positive finite number"):
        read_ranges(bad)
    parsed = read_cache(cache)
    assert parsed.algorithm == "EntropyCalibration2" and parsed.calibrator == "IInt8EntropyCalibrator2"
    assert parsed.text == cache.read_text()
    bad.write_text("not a cache\n")
    with pytest.raises(BertrtError, match="TRT-<version>-<algorithm>"):
        read_cache(bad)


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_build_without_tensorrt_exits_3_and_says_what_would_run(fused, tmp_path, ranges):
    out = tmp_path / "engine.plan"
    result = CliRunner().invoke(cli, ["build", str(fused), "-o", str(out), "--target", "trt10", "--precision", "int8",
                                      "--batch", "1,8", "--seq", "384", "--ranges", str(ranges)])
    assert result.exit_code == 3, result.output
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("Error: TensorRT is needed to build an engine")
    assert "pip install tensorrt" in message and "GPU" in message
    assert (f"bertrt build {fused} -o {out} --target trt10 --precision int8 --batch 1,8 --seq 384 --ranges {ranges}"
            in message)
    assert "profile 1: input_ids min (1, 384) opt (8, 384) max (8, 384)" in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == [ranges]


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_build_exit_code_in_a_real_process(fused, tmp_path):
    result = subprocess.run([sys.executable, "-m", "bertrt.cli", "build", str(fused), "-o", str(tmp_path / "e.plan")],
                            capture_output=True, text=True)
    assert result.returncode == 3 and "pip install tensorrt" in result.stderr


def test_dry_run_and_bad_combinations(fused, tiny_onnx, tmp_path):
    result = CliRunner().invoke(cli, ["build", str(fused), "-o", str(tmp_path / "e.plan"), "--dry-run"])
    assert result.exit_code == 0 and "--seq 384" in result.output  # dynamic graph: the demo's 384
    result = CliRunner().invoke(cli, ["build", str(tiny_onnx), "-o", str(tmp_path / "e.plan"), "--dry-run"])
    assert result.exit_code == 0 and "--seq 128" in result.output  # fixed graph: its own length
    result = CliRunner().invoke(cli, ["build", str(tiny_onnx), "-o", str(tmp_path / "e.plan"), "--seq", "384"])
    assert result.exit_code == 1 and "fixed dimension 1 = 128" in result.output
    result = CliRunner().invoke(cli, ["build", str(fused), "-o", str(tmp_path / "e.plan"), "--batch", "1,x"])
    assert result.exit_code == 2
    assert not (tmp_path / "e.plan").exists()


def test_tactic_sources_change_the_default_by_name():
    members = {"CUBLAS": 0, "CUBLAS_LT": 1, "CUDNN": 2, "EDGE_MASK_CONVOLUTIONS": 3}
    default = 0b1110  # what TensorRT 10 enables: cuBLASLt, cuDNN, edge-mask convolutions
    assert tactic_source_bits(default, ("+CUBLAS", "-CUDNN"), members) == 0b1011
    assert tactic_source_bits(default, ("+GONE",), members) == default  # a source this TensorRT lacks


def test_the_plan_comes_from_the_inputs_alone_and_tensorrt_before_the_graph(fused, tmp_path, monkeypatch):
    from bertrt.graph_io import read_skeleton

    skeleton = read_skeleton(fused)
    assert model_facts(skeleton) == model_facts(onnx.load(fused))
    assert [n.op_type for n in skeleton.graph.node] == [n.op_type for n in onnx.load(fused).graph.node]
    # Attributes are there, weights are not: tensors keep their type and dims only.
    full = onnx.load(fused)
    assert [[a.name for a in n.attribute] for n in skeleton.graph.node] == [[a.name for a in n.attribute]
                                                                          for n in full.graph.node]
    tensors = [a.t for n in skeleton.graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    assert tensors and all(not t.raw_data and t.dims for t in tensors)
    assert all(not t.raw_data for t in skeleton.graph.initializer)
    if HAS_TRT:
        return

    def no_loading(*args, **kwargs):
        raise AssertionError("the graph was loaded")

    monkeypatch.setattr(onnx, "load", no_loading)
    monkeypatch.setattr(onnx, "load_model", no_loading)
    result = CliRunner().invoke(cli, ["build", str(fused), "-o", str(tmp_path / "e.plan")])
    assert result.exit_code == 3 and "TensorRT is needed" in result.output
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(fused.read_bytes()[:5000])
    result = CliRunner().invoke(cli, ["build", str(truncated), "-o", str(tmp_path / "e.plan")])
    assert result.exit_code == 1 and f"Error: {truncated}: not a readable ONNX model" in result.output


def test_the_config_is_polygraphys_with_the_plans_settings(cache, tmp_path):
    from polygraphy.backend.trt import CreateConfig

    plan = make_plan("fused.onnx", "e.plan", target="trt10", precision="int8", batches=(1, 8), seqs=(128, 384),
                     calib_cache=cache)
    loaders = make_loaders(plan)
    config = loaders.create_config
    assert isinstance(config, CreateConfig) and config.plan is plan
    assert (config.fp16, config.int8) == (True, True) and len(config.profiles) == 4
    # The TensorRT-enum arguments are set from the plan when TensorRT builds (it is not here):
    assert config.memory_pool_limits is None and config.calibrator is None and config.tactic_sources is None
    assert plan.workspace_mb == 2500 and plan.tactic_sources == ("+CUBLAS", "-CUDNN")
    assert plan.calibrate_before_fusion and plan.calib_cache == str(cache)
