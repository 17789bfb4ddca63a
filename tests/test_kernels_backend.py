"""The kernels backend (NVIDIA's plugin kernels on a GPU) as far as a machine without a GPU can check it: reading a
TensorRT OSS tree (a small synthetic one written here: no NVIDIA code is in the repo), the call boundary into the
compiled shim, the plugins' launch choices, the PyTorch side of the graph, and the refusals. No kernel result is
made up: the GPU results live in benchmarks/results/kernels-h200.md."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from bertrt.cli import cli
from bertrt.errors import BertrtError, ToolMissing
from bertrt.plugins.kernels import lib as klib
from bertrt.plugins.kernels.execute import varseqlen_bucket
from bertrt.plugins.kernels.tree import ENV, TrtOssTree, find_checkout, read_cubin_arrays

ELF = b"\x7fELF" + bytes(range(12))


def _c_array(name: str, data: bytes) -> str:
    body = ", ".join(f"0x{b:02x}" for b in data)
    return f"unsigned char {name}[] = {{\n  {body}\n}};\nunsigned int {name}_len = {len(data)};\n"


@pytest.fixture
def tree(tmp_path):
    """A TensorRT OSS checkout in miniature: the files the backend reads, in TensorRT's layout and formats."""
    root = tmp_path / "TensorRT"
    mha = root / "plugin/bertQKVToContextPlugin"
    (root / "include").mkdir(parents=True)
    (root / "include/NvInfer.h").write_text("// header\n")
    (root / "plugin/common").mkdir(parents=True)
    (root / "plugin/common/bertCommon.h").write_text("constexpr int32_t kSM_90 = 90;\n")
    (mha / "fused_multihead_attention").mkdir(parents=True)
    (mha / "fused_multihead_attention_v2").mkdir(parents=True)
    (mha / "fused_multihead_attention/fused_multihead_attention.h").write_text(
        "static const struct FusedMultiHeadAttentionKernelMetaInfoV1 { ... } sMhaKernelMetaInfos[] = {\n"
        "#if defined(ENABLE_SM90)\n"
        "    {DATA_TYPE_INT8, 384, 64, kSM_90, cubin_fmha_v1_int8_384_64_sm90_cu_cubin,\n"
        "        cubin_fmha_v1_int8_384_64_sm90_cu_cubin_len, \"fmha_v1_int8_384_64_sm90_kernel\", 73728, 256},\n"
        "#endif\n"
        "    {DATA_TYPE_FP16, 128, 64, kSM_80, x_cubin, x_cubin_len, \"fmha_v1_fp16_128_64_sm80_kernel\", 32768, 128},\n"
        "};\n")
    (mha / "fused_multihead_attention_v2/fused_multihead_attention_v2.h").write_text(
        "} sMhaKernelMetaInfosV2[] = {\n"
        "    {DATA_TYPE_FP16, 384, 64, kSM_90, cubin_fmha_v2_fp16_384_64_sm90_cu_cubin,\n"
        "        cubin_fmha_v2_fp16_384_64_sm90_cu_cubin_len, \"fmha_v2_fp16_384_64_ldgsts_sm90_kernel_nl\", 115712,"
        " 128, 64, false},\n"
        "    {DATA_TYPE_INT8, 128, 64, kSM_90, cubin_fmha_v2_il_int8_128_64_sm90_cu_cubin,\n"
        "        cubin_fmha_v2_il_int8_128_64_sm90_cu_cubin_len, \"fmha_v2_il_int8_128_64_sm90_kernel\", 24576, 128, 0,"
        " true},\n"
        "};\n")
    (mha / "fused_multihead_attention/fused_multihead_attention_int8_384_64_kernel.sm90.cpp").write_text(
        "namespace x {\n" + _c_array("cubin_fmha_v1_int8_384_64_sm90_cu_cubin", ELF) + "}\n")
    (mha / "fused_multihead_attention_v2/fused_multihead_attention_v2_fp16_384_64_kernel.sm90.cpp").write_text(
        _c_array("cubin_fmha_v2_fp16_384_64_sm90_cu_cubin", ELF + b"\x01\x02"))
    (mha / "fused_multihead_attention_v2/fused_multihead_attention_v2_fp16_384_64_kernel.sm80.cpp").write_text(
        _c_array("cubin_fmha_v2_fp16_384_64_sm80_cu_cubin", ELF))
    return root


def test_tree_reads_both_kernel_tables(tree):
    t = TrtOssTree(tree)
    v1 = t.kernel_table(1)
    assert [(k.dtype, k.seq, k.sm, k.func, k.shared_mem, k.threads) for k in v1] == [
        ("INT8", 384, 90, "fmha_v1_int8_384_64_sm90_kernel", 73728, 256),
        ("FP16", 128, 80, "fmha_v1_fp16_128_64_sm80_kernel", 32768, 128)]
    v2 = t.kernels(90, version=2)
    assert [(k.func, k.unroll, k.interleaved, k.cubin) for k in v2] == [
        ("fmha_v2_fp16_384_64_ldgsts_sm90_kernel_nl", 64, False, "cubin_fmha_v2_fp16_384_64_sm90_cu_cubin"),
        ("fmha_v2_il_int8_128_64_sm90_kernel", 0, True, "cubin_fmha_v2_il_int8_128_64_sm90_cu_cubin")]
    assert {k.sm for k in t.kernels(90)} == {90}


def test_tree_extracts_cubins_of_the_sm(tree):
    t = TrtOssTree(tree)
    assert [p.name for p in t.cubin_sources(90)] == [
        "fused_multihead_attention_int8_384_64_kernel.sm90.cpp",
        "fused_multihead_attention_v2_fp16_384_64_kernel.sm90.cpp"]
    assert t.cubin("cubin_fmha_v2_fp16_384_64_sm90_cu_cubin", 90) == ELF + b"\x01\x02"
    assert t.cubin("cubin_fmha_v1_int8_384_64_sm90_cu_cubin", 90) == ELF
    with pytest.raises(BertrtError, match="no cubin array"):
        t.cubin("cubin_fmha_v2_fp16_384_64_sm80_cu_cubin", 90)  # it is there, but for sm_80
    with pytest.raises(BertrtError, match="no fused-MHA cubins for sm_100"):
        t.cubin_sources(100)


def test_cubin_array_that_is_not_elf_is_refused(tmp_path):
    p = tmp_path / "x.sm90.cpp"
    p.write_text(_c_array("bad", b"NOTELF!!"))
    with pytest.raises(BertrtError, match="not an ELF"):
        read_cubin_arrays(p)


def test_checkout_from_argument_or_environment(tree, tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(BertrtError, match="--trt-oss DIR or set BERTRT_TRT_OSS"):
        find_checkout(None)
    monkeypatch.setenv(ENV, str(tree))
    assert find_checkout(None) == tree
    with pytest.raises(BertrtError, match="not found"):
        find_checkout(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BertrtError, match="no include/NvInfer.h"):
        find_checkout(tmp_path / "empty")


# ---------------------------------------------------------------- the call boundary into shim.cu

_C_TYPES = {"int": ctypes.c_int, "float": ctypes.c_float, "long long": ctypes.c_longlong}


def _shim_prototypes() -> dict[str, tuple]:
    text = (Path(klib.__file__).with_name("shim.cu")).read_text()
    text = text[text.index('extern "C" {'):]
    protos = {}
    for m in re.finditer(r"^(int|void\*|void|long long|char const\*) (bertrt_\w+)\(([^)]*)\)", text, re.M):
        args = [a.strip() for a in m.group(3).replace("\n", " ").split(",") if a.strip()]
        kinds = []
        for a in args:
            decl = a.rsplit(" ", 1)[0].strip()
            kinds.append(ctypes.c_void_p if "*" in a else _C_TYPES[decl])
        ret = {"int": ctypes.c_int, "void*": ctypes.c_void_p, "void": None, "long long": ctypes.c_longlong,
               "char const*": ctypes.c_char_p}[m.group(1)]
        protos[m.group(2)] = (ret, kinds)
    return protos


def test_ctypes_signatures_match_the_shim():
    # A wrong argument type or count at this boundary would pass garbage to the kernels silently.
    protos = _shim_prototypes()
    assert set(protos) == set(klib.SIGNATURES)
    for name, (ret, args) in klib.SIGNATURES.items():
        assert protos[name] == (ret, args), name


@pytest.mark.parametrize("type_id,max_s,bucket", [
    (1, 1, 64), (1, 64, 64), (1, 65, 96), (1, 97, 128), (1, 129, 256), (1, 192, 256), (1, 257, 384), (1, 385, 512),
    (2, 64, 128), (2, 128, 128), (2, 129, 192), (2, 193, 256), (2, 300, 384), (2, 512, 512)])
def test_varseqlen_bucket_follows_the_plugin(type_id, max_s, bucket):
    # QKVToContextVarSeqlenPlugin::enqueue: FP16 has 64/96 kernels and rounds 192 up to 256; INT8 has 192.
    assert varseqlen_bucket(type_id, max_s) == bucket


def test_varseqlen_bucket_refuses_beyond_512():
    with pytest.raises(BertrtError, match="up to 512"):
        varseqlen_bucket(1, 513)


def test_chw32_layout():
    torch = pytest.importorskip("torch")
    from bertrt.plugins.kernels.execute import from_chw32, to_chw32

    C, T = 64, 5
    x = torch.arange(C * T, dtype=torch.int32).reshape(1, C, T, 1)
    buf = to_chw32(x).reshape(-1)
    for c, t in ((0, 0), (31, 4), (32, 0), (63, 3)):  # TensorRT's CHW32: [C/32][T][32]
        assert int(buf[((c // 32) * T + t) * 32 + c % 32]) == int(x[0, c, t, 0])
    assert torch.equal(from_chw32(to_chw32(x), C, T), x)


# ---------------------------------------------------------------- the PyTorch side and the check list


def test_torch_segment_matches_onnxruntime_on_a_standard_graph():
    torch = pytest.importorskip("torch")
    import onnxruntime as ort
    from onnx import numpy_helper

    from bertrt.plugins.handbuilt import random_bert_weights, unfused_bert
    from bertrt.plugins.kernels.torch_ops import TorchSegment

    model = unfused_bert(random_bert_weights(2, 64, 2, 128, vocab=100, max_pos=32), 2, 2)
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 100, (2, 16)).astype(np.int32),
             "segment_ids": rng.integers(0, 2, (2, 16)).astype(np.int32),
             "input_mask": (np.arange(16)[None] < np.array([[16], [9]])).astype(np.int32)}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["logits"], feeds)[0]
    consts = {t.name: torch.as_tensor(np.array(numpy_helper.to_array(t))) for t in model.graph.initializer}
    env = {k: torch.as_tensor(v) for k, v in feeds.items()}
    TorchSegment(list(model.graph.node), consts, keep=["logits"]).run(env)
    np.testing.assert_allclose(env["logits"].numpy(), want, atol=1e-4)


def _qdq_gemm(x_scale, w, w_scale, bias, axis=1):
    """x -> Q -> DQ, int8 weight -> DQ (per column) -> MatMul -> Add: an INT8 GEMM as bertrt's graphs have it."""
    from onnx import numpy_helper as nh

    h = onnx.helper
    nodes = [h.make_node("QuantizeLinear", ["x", "sx", "z"], ["qx"]), h.make_node("DequantizeLinear", ["qx", "sx", "z"], ["dx"]),
             h.make_node("DequantizeLinear", ["w", "sw", "zw"], ["dw"], axis=axis), h.make_node("MatMul", ["dx", "dw"], ["mm"]),
             h.make_node("Add", ["mm", "b"], ["y"])]
    inits = [nh.from_array(np.array(x_scale, np.float32), "sx"), nh.from_array(np.array(0, np.int8), "z"),
             nh.from_array(w, "w"), nh.from_array(w_scale, "sw"), nh.from_array(np.zeros(w_scale.shape, np.int8), "zw"),
             nh.from_array(bias, "b")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, None, w.shape[0]])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def test_int8_gemm_sums_integers_as_onnxruntime_and_tensorrt_do():
    torch = pytest.importorskip("torch")
    import onnxruntime as ort
    from onnx import numpy_helper

    from bertrt.plugins.kernels.torch_ops import INT_MATMUL, TorchSegment

    rng = np.random.default_rng(0)
    K, N = 384, 1152
    w = rng.integers(-127, 128, (K, N)).astype(np.int8)
    sw = (rng.random(N) * 0.01 + 1e-3).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    x = (rng.standard_normal((2, 48, K)) * 2).astype(np.float32)
    model = _qdq_gemm(0.037, w, sw, b)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]
    consts = {t.name: torch.as_tensor(np.array(numpy_helper.to_array(t))) for t in model.graph.initializer}
    seg = TorchSegment(list(model.graph.node), consts, keep=["y"])
    assert [n.op_type for n in seg.nodes] == ["QuantizeLinear", INT_MATMUL, "Add"]
    env = {"x": torch.as_tensor(x)}
    seg.run(env)
    got = env["y"].numpy()
    # By hand: the integer sum (int64), then float32(sum) * float32(0.037 * scale_w), then the bias.
    qx = np.clip(np.rint(x / np.float32(0.037)), -128, 127).astype(np.int64)
    by_hand = (qx @ w.astype(np.int64)).astype(np.float32) * (np.float32(0.037) * sw) + b
    np.testing.assert_array_equal(got, by_hand)
    np.testing.assert_array_equal(got, want)  # ONNX Runtime's MatMulIntegerToFloat: the CPU reference's INT8 GEMM
    # Dequantizing first and summing in float32 (what this replaces) rounds most outputs differently.
    dequantized = (qx.astype(np.float32) * np.float32(0.037)) @ (w.astype(np.float32) * sw) + b
    assert np.mean(dequantized == want) < 0.5


def test_int8_gemm_left_alone_where_it_is_not_one():
    torch = pytest.importorskip("torch")
    from onnx import numpy_helper

    from bertrt.plugins.kernels.torch_ops import INT_MATMUL, TorchSegment

    w = np.random.default_rng(1).integers(-127, 128, (8, 16)).astype(np.int8)
    b = np.zeros(16, np.float32)
    for model in (_qdq_gemm(0.1, w, np.full(8, 0.01, np.float32), b, axis=0),  # a scale per input row
                  _qdq_gemm(0.1, w, np.full(16, 0.01, np.float16), b)):  # float16 scales (TensorRT 11's graph)
        consts = {t.name: torch.as_tensor(np.array(numpy_helper.to_array(t))) for t in model.graph.initializer}
        assert INT_MATMUL not in [n.op_type for n in TorchSegment(list(model.graph.node), consts).nodes]


def test_torch_segment_refuses_an_op_it_lacks():
    pytest.importorskip("torch")
    from bertrt.plugins.kernels.torch_ops import TorchSegment

    node = onnx.helper.make_node("NonMaxSuppression", ["a"], ["b"], name="nms")
    with pytest.raises(BertrtError, match="no PyTorch version of op NonMaxSuppression"):
        TorchSegment([node], {})


def test_check_cases_cover_every_precision_and_layout():
    from bertrt.plugins.kernels.check import cases

    got = {(c.label, c.precision, c.layout, c.seq) for c in cases()}
    for s in (128, 384):
        for want in [("EmbLayerNorm v6", "fp32", "fixed"), ("EmbLayerNorm v6", "fp16", "fixed"),
                     ("EmbLayerNorm v4", "fp16", "varseqlen"), ("QKVToContext v4", "int8", "fixed"),
                     ("QKVToContext v5", "fp16", "varseqlen"), ("QKVToContext v5", "int8", "varseqlen"),
                     ("SkipLayerNorm v5", "int8", "fixed"), ("SkipLayerNorm v7", "int8", "interleaved")]:
            assert (*want, s) in got
    # deterministic: the same seed gives the same inputs
    a, b = cases(3)[0].ref_inputs[0], cases(3)[0].ref_inputs[0]
    assert np.array_equal(a, b)


# ---------------------------------------------------------------- refusals


@pytest.fixture
def fused_tiny(tmp_path):
    from bertrt.onnx_io import save_model
    from bertrt.plugins.handbuilt import fused_bert, random_bert_weights

    path = tmp_path / "fused.onnx"
    save_model(fused_bert(random_bert_weights(1, 32, 2, 64, vocab=100, max_pos=16), 1, 2, "fp16"), path)
    return path


def _has_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def test_cli_kernels_without_checkout_exits_1(fused_tiny, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    r = CliRunner().invoke(cli, ["infer", "--onnx", str(fused_tiny), "--backend", "kernels", "-p", "a b c", "-q", "b"])
    assert r.exit_code == 1, r.output
    assert "needs a TensorRT OSS checkout" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


@pytest.mark.skipif(_has_gpu(), reason="this machine has a GPU")
def test_cli_kernels_without_gpu_exits_3(fused_tiny, tree):
    r = CliRunner().invoke(cli, ["perf", "--onnx", str(fused_tiny), "--backend", "kernels", "--trt-oss", str(tree),
                                 "-b", "1", "-s", "16"])
    assert r.exit_code == 3, r.output
    assert ("GPU" in r.output or "PyTorch" in r.output) and "Traceback" not in r.output


def test_kernels_backend_takes_only_fused_graphs(tree, tmp_path):
    from bertrt.onnx_io import save_model
    from bertrt.plugins.handbuilt import random_bert_weights, unfused_bert
    from bertrt.run.backends import open_backend

    path = tmp_path / "plain.onnx"
    save_model(unfused_bert(random_bert_weights(1, 32, 2, 64, vocab=100, max_pos=16), 1, 2), path)
    with pytest.raises(BertrtError, match="runs fused graphs"):
        open_backend(onnx=path, backend="kernels", trt_oss=tree)
    with pytest.raises(BertrtError, match="not TensorRT engines"):
        open_backend(engine=tmp_path / "x.plan", backend="kernels", trt_oss=tree)


@pytest.mark.skipif(_has_gpu(), reason="this machine has a GPU")
def test_require_gpu_is_tool_missing():
    with pytest.raises(ToolMissing) as info:
        klib.require_gpu()
    assert info.value.exit_code == 3


# ---------------------------------------------------------------- the fmha v2 parameter struct (direct launches)

_STRUCT = """
struct Fused_multihead_attention_params_v2
{
    // Made-up members with the type sequence that matters for the layout.
    void* p0{};
    void* p1{};
    void* p2{};
    int64_t l0{};
    int64_t l1{};
    int64_t l2;
#if defined(STORE_P)
    void* extra_ptr{};
    int64_t extra_len{};
#endif // defined(STORE_P)
    int32_t i0{};
    int32_t i1{};
    int32_t i2{};
    int32_t i3{};
    uint32_t u0{};
    uint32_t u1{};
    uint32_t u2{};
    bool f0{};
    int32_t* q0{};
    bool f1{};
    bool f2{};
    bool f3{};
    bool f4{};
    int32_t i4{};
    int32_t* q1{};
    float* q2{};

    void reset()
    {
        *this = {};
    }
};
"""


def test_fmha_v2_params_struct_follows_the_c_layout():
    from bertrt.plugins.kernels.fmha_direct import params_struct

    P = params_struct(_STRUCT)
    offsets = {name: getattr(P, name).offset for name, _ in P._fields_}
    # x86-64 C layout, by hand: 3 pointers, 3 int64, 4 int32, 3 uint32, a bool padded to the pointer after it,
    # 4 bools packed, an int32, then pointers.
    assert offsets == {"p0": 0, "p1": 8, "p2": 16, "l0": 24, "l1": 32, "l2": 40, "i0": 48, "i1": 52, "i2": 56,
                       "i3": 60, "u0": 64, "u1": 68, "u2": 72, "f0": 76, "q0": 80, "f1": 88, "f2": 89, "f3": 90,
                       "f4": 91, "i4": 92, "q1": 96, "q2": 104}
    assert ctypes.sizeof(P) == 112
    with_p = params_struct(_STRUCT, defines=("STORE_P",))
    assert with_p.extra_ptr.offset == 48 and with_p.i0.offset == 64  # a build with STORE_P moves what follows


def test_fmha_v2_params_struct_refuses_unknown_members():
    from bertrt.plugins.kernels.fmha_direct import params_struct

    with pytest.raises(BertrtError, match="member type double"):
        params_struct(_STRUCT.replace("int32_t i4{};", "double i4{};"))
    with pytest.raises(BertrtError, match="no struct"):
        params_struct("struct Other {};")


def test_half2_bits_is_set_alpha_for_fp16():
    from bertrt.plugins.kernels.fmha_direct import half2_bits

    assert half2_bits(1.0) == 0x3C003C00  # FP16 1.0 is 0x3C00, twice
    assert half2_bits(0.125) == 0x30003000


@pytest.mark.skipif(_has_gpu(), reason="this machine has a GPU")
def test_compare_with_kernels_backend_without_gpu_exits_3(fused_tiny, tree):
    r = CliRunner().invoke(cli, ["compare", str(fused_tiny), str(fused_tiny), "--backend", "kernels",
                                 "--trt-oss", str(tree), "--seq", "16"])
    assert r.exit_code == 3, r.output
    assert "Traceback" not in r.output


def test_handbuilt_int8_graph_runs_with_min_max_ranges_on_the_reference():
    """The INT8 graph of the latency benchmark: its plugins take the ranges plugin_range_tensors names (measured
    on the FP32 graph through with_outputs), quantize for real and stay close to the FP32 graph."""
    from bertrt.plugins.handbuilt import fused_bert, plugin_range_tensors, random_bert_weights, with_outputs
    from bertrt.plugins.runner import ReferenceRunner

    w = random_bert_weights(1, 768, 12, 256, vocab=100, max_pos=128)
    g = np.random.default_rng(0)
    feeds = {"input_ids": g.integers(0, 100, (1, 128)).astype(np.int32),
             "segment_ids": np.zeros((1, 128), np.int32), "input_mask": np.ones((1, 128), np.int32)}
    m8 = fused_bert(w, 1, 12, "int8")
    types = {n.op_type: {a.name: a.i for a in n.attribute if a.name in ("type_id", "mha_type_id", "output_fp16")}
             for n in m8.graph.node if n.op_type.startswith("Custom")}
    assert types["CustomQKVToContextPluginDynamic"]["type_id"] == 2
    assert types["CustomSkipLayerNormPluginDynamic"]["type_id"] == 2
    assert types["CustomEmbLayerNormPluginDynamic"] == {"output_fp16": 1, "mha_type_id": 2}
    names = plugin_range_tensors(m8)
    assert len(names) == 7  # QKV in and out; each SkipLayerNorm in, skip, out (the first out is the second skip)
    with pytest.raises(BertrtError, match="no amax"):
        ReferenceRunner(m8).run(feeds)
    ref = ReferenceRunner(with_outputs(fused_bert(w, 1, 12, "fp32"), names)).run(feeds)
    amax = {n: float(np.abs(ref[n]).max()) for n in names}
    out = ReferenceRunner(m8, amax=amax).run(feeds)["logits"]
    err = np.abs(out - ref["logits"]).max()
    assert 1e-4 < err < 0.1 * np.abs(ref["logits"]).max()


def test_int8_steps_are_counted_on_the_grid():
    """One value one step off, on grids whose scales differ in their last bits (each side's float32 rounding of
    amax / 127): one step, where max |difference| / scale would read 1.00002."""
    from bertrt.plugins.kernels.check import diff

    q = np.arange(-127, 128, dtype=np.float64)
    s_kernel, s_ref = np.float32(6.0 / 127), np.float32(6.0 / 127) * (1 + 2e-7)
    kernel = (q * s_kernel).astype(np.float32)
    ref = q * s_ref
    kernel[-1] = (126 * s_kernel)  # 127 in the reference, 126 in the kernel
    _, _, steps, _ = diff(kernel, ref, 6.0 / 127)
    assert steps == 1.0
    assert np.abs(kernel.astype(np.float64) - ref).max() / (6.0 / 127) > 1 + 1e-6
