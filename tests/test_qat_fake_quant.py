"""PyTorch fake-quant (QAT) exports, one fixture per Q/DQ placement (tests/fixtures/make_qat_fixtures.py), taken
as they are: they fuse completely, compute like the QAT model on ONNX Runtime, and their own scales become
the fused graph's INT8 ranges (scale x 127, exactly) and, for TensorRT 11, its weights' int8 grid."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from bertrt.cli import cli
from bertrt.run.compare import compare_models
from conftest import FIXTURES, need_shared

PLACEMENTS = ("linear", "matmul", "attention", "residual")
# (activation Q/DQ pairs, weights, Transposes folded) each placement's dequantize pass reports: 2 layers of 6
# Linears, plus 4 attention-matmul inputs or 2 x 2 residual-add inputs per layer.
FORMS = {"linear": (12, 12, 12), "matmul": (12, 12, 0), "attention": (20, 12, 12), "residual": (20, 12, 12)}
# Tensors quantized: per layer the Q/K/V input (one tensor, three QuantizeLinear), the context, the FFN1 and
# FFN2 inputs; plus q, k, probabilities and v, or the two dense outputs before the residual adds.
TENSORS = {"linear": 8, "matmul": 8, "attention": 16, "residual": 12}


def _run(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


def _constants(model):
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    values.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
                   if n.op_type == "Constant"})
    return values


def activation_scales(model) -> dict[str, list[float]]:
    """tensor -> the scales of the QuantizeLinear nodes on it (activations only), read from the graph."""
    c = _constants(model)
    out = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in c:
            out.setdefault(n.input[0], []).append(float(c[n.input[1]]))
    return out


def _axis(node, default=1):
    return next((a.i for a in node.attribute if a.name == "axis"), default)


def qat_weight_columns(model) -> set:
    """(int8 output channel, its scale as float16) of every Q/DQ weight of the QAT model, quantized here
    with numpy from its float weight and scale (ONNX QuantizeLinear: round half to even, saturate)."""
    c = _constants(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    cols = set()
    for dq in model.graph.node:
        q = producer.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] not in c:
            continue
        w, s, axis = c[q.input[0]], c[q.input[1]], _axis(q)
        w = w if axis == 0 else w.T  # channels first
        ints = np.clip(np.rint(w / s.reshape(-1, 1)), -128, 127).astype(np.int8)
        cols |= {(ints[j].tobytes(), np.float16(s[j]).tobytes()) for j in range(len(s))}
    return cols


def graph_weight_columns(model) -> set:
    """(int8 output channel, its scale) of every int8 weight behind a DequantizeLinear in a (fused) graph."""
    c = _constants(model)
    cols = set()
    for n in model.graph.node:
        w = c.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if w is not None and w.dtype == np.int8 and w.ndim == 2:
            s, axis = c[n.input[1]], _axis(n)
            w = w if axis == 0 else w.T
            cols |= {(w[j].tobytes(), np.float16(s[j]).tobytes()) for j in range(len(s))}
    return cols


@pytest.fixture(scope="module")
def canonical(tmp_path_factory):
    """placement -> (canonical model path through `convert onnx`, a folder for its outputs)."""
    out = {}
    for p in PLACEMENTS:
        folder = tmp_path_factory.mktemp(p)
        _run("convert", "onnx", FIXTURES / f"qat_fq_{p}.onnx", "-o", folder / "model.onnx")
        out[p] = folder / "model.onnx", folder
    return out


def _surgery(model, folder, target):
    fused, name_map = folder / f"fused-{target}.onnx", folder / f"map-{target}.json"
    if not fused.exists():
        log = _run("surgery", "run", model, "-o", fused, "--target", target, "--precision", "int8",
                   "--name-map", name_map)
        (folder / f"surgery-{target}.txt").write_text(log)
    return fused, name_map, (folder / f"surgery-{target}.txt").read_text()


@pytest.mark.parametrize("target", ["trt10", "trt11"])
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_fuses_completely_and_computes_like_the_qat_model(canonical, placement, target):
    model, folder = canonical[placement]
    fused, _, log = _surgery(model, folder, target)
    pairs, weights, folded = FORMS[placement]
    assert f"{pairs} activation Q/DQ pairs bypassed, {weights} weights dequantized" in log
    assert (f"({folded} Transposes folded into them)" in log) == bool(folded)
    assert "fused: EmbLayerNorm 1, QKVToContext 2, SkipLayerNorm 4" in log and "complete:" in log
    assert ("8 weights on their QAT int8 grid" in log) == (target == "trt11")
    assert "weight channels do not reach +-127" in log  # the fixtures' weights moved after their scales were set
    # ONNX Runtime runs the QAT model's Q/DQ; the fused graph (CPU reference) computes with its weights on
    # their grid and its activations in float (FP16 on trt11): within INT8's tolerance.
    result = compare_models(model, fused, batch=2, seq=16, precision="int8")
    assert result.passed, result


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_ranges_are_the_models_scales_times_127_exactly(canonical, placement):
    model, folder = canonical[placement]
    _, name_map, _ = _surgery(model, folder, "trt10")
    scales = activation_scales(onnx.load(model))
    assert len(scales) == TENSORS[placement]
    _run("calibrate", "qat", model, "-o", folder / "own.json")
    own = json.loads((folder / "own.json").read_text())
    assert own == {t: max(s) * 127 for t, s in scales.items()}

    # Named after the fused graph: each range is the largest scale x 127 of the tensors it carries.
    _run("calibrate", "qat", model, "--name-map", name_map, "-o", folder / "fused.json")
    fused = json.loads((folder / "fused.json").read_text())
    carried = {}
    for original, targets in json.loads(name_map.read_text()).items():
        for t in targets:
            carried.setdefault(t, []).append(original)
    assert fused and all(value == max(own[o] for o in carried[t] if o in own) for t, value in fused.items())
    mapped = {o for t in fused for o in carried[t]}
    lost = {t for t in own if t not in mapped}
    # Only the attention's probabilities have no tensor in the fused graph: QKVToContext reads their scale.
    assert all(t.endswith("Softmax_output_0") for t in lost) and len(lost) == (2 if placement == "attention" else 0)
    if placement == "residual":  # the dense output quantized before the residual add: SkipLayerNorm's input
        sums = [own[t] for t in own if t.endswith("dense/Add_output_0")]
        assert len(sums) == 4 and sorted(v for t, v in fused.items() if t.endswith("in0/to_5d")) == sorted(sums)


def test_probability_scale_is_qkv_to_context_dq_probs(canonical):
    model, folder = canonical["attention"]
    fused, _, _ = _surgery(model, folder, "trt10")
    probs = sorted(s[0] for t, s in activation_scales(onnx.load(model)).items() if t.endswith("Softmax_output_0"))
    dq = sorted(onnx.helper.get_attribute_value(a) for n in onnx.load(fused).graph.node
                if n.op_type == "CustomQKVToContextPluginDynamic" for a in n.attribute if a.name == "dq_probs")
    assert len(probs) == 2 and dq == [np.float32(p) for p in probs]


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_trt11_qdq_graph_has_the_models_weight_grid(canonical, placement):
    """calibrate qdq keeps the QAT weights: every output channel's int8 values and scale (in the graph's float16)
    are the QAT model's, the fused QKV GEMM's included; activations get the model's scales."""
    model, folder = canonical[placement]
    fused, name_map, _ = _surgery(model, folder, "trt11")
    ranges, qdq = folder / "ranges-trt11.json", folder / "fused.qdq.onnx"
    _run("calibrate", "qat", model, "--name-map", name_map, "-o", ranges)
    _run("calibrate", "qdq", fused, "--ranges", ranges, "-o", qdq)
    want = qat_weight_columns(onnx.load(FIXTURES / f"qat_fq_{placement}.onnx"))
    assert len(want) == 2 * (3 * 128 + 128 + 128 + 128) and graph_weight_columns(onnx.load(qdq)) == want
    amax = json.loads(ranges.read_text())
    qdq_model = onnx.load(qdq)
    c = _constants(qdq_model)
    acts = {n.input[0]: c[n.input[1]] for n in qdq_model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in c}
    assert len(acts) == 8 and all(s == np.float16(np.float32(amax[t] / 127)) for t, s in acts.items())
    float_gemms = [n for n in qdq_model.graph.node if n.op_type == "MatMul" and n.input[1] in c]
    assert len(float_gemms) == 1 and float_gemms[0].input[0] not in acts  # the QA head, float as in the model
    assert compare_models(model, qdq, batch=2, seq=16, precision="int8").passed


# --- the real QAT model (../shared/models/minilm-squad-qat) --------------------------------------------------

@pytest.fixture(scope="module")
def real_qat(tmp_path_factory):
    (src,) = need_shared("models/minilm-squad-qat/model.qat.onnx")
    folder = tmp_path_factory.mktemp("minilm-qat")
    _run("convert", "onnx", src, "-o", folder / "model.onnx")
    return src, folder / "model.onnx", folder


@pytest.mark.parametrize("target", ["trt10", "trt11"])
def test_real_qat_model_fuses_completely_and_keeps_its_scales(real_qat, target):
    src, model, folder = real_qat
    fused, name_map, log = _surgery(model, folder, target)
    assert "36 activation Q/DQ pairs bypassed, 36 weights dequantized (36 Transposes folded into them)" in log
    assert "fused: EmbLayerNorm 1, QKVToContext 6, SkipLayerNorm 12" in log and "complete:" in log
    assert "do not reach" not in log  # every channel of its weights reaches +-127
    ranges = folder / f"ranges-{target}.json"
    _run("calibrate", "qat", model, "--name-map", name_map, "-o", ranges)
    own = {t: max(s) * 127 for t, s in activation_scales(onnx.load(model, load_external_data=False)).items()}
    assert len(own) == 24  # per layer: q/k/v input, context, FFN1 and FFN2 inputs (q, k, v share one)
    carried = {}
    for original, targets in json.loads(name_map.read_text()).items():
        for t in targets:
            carried.setdefault(t, []).append(original)
    amax = json.loads(ranges.read_text())
    assert amax and all(v == max(own[o] for o in carried[t] if o in own) for t, v in amax.items())
    if target == "trt10":  # the export as it is (Identity copies of shared scales) gives the same ranges
        _run("calibrate", "qat", src, "-o", folder / "raw.json")
        _run("calibrate", "qat", model, "-o", folder / "own.json")
        assert json.loads((folder / "raw.json").read_text()) == json.loads((folder / "own.json").read_text()) == own
    if target == "trt11":
        qdq = folder / "fused.qdq.onnx"
        _run("calibrate", "qdq", fused, "--ranges", ranges, "-o", qdq)
        want = qat_weight_columns(onnx.load(src))
        assert len(want) == 6 * (3 * 384 + 384 + 1536 + 384) and graph_weight_columns(onnx.load(qdq)) == want


def test_fill_gives_trt10_the_outputs_of_the_quantized_gemms(canonical, tmp_path):
    """A model quantizing only GEMM inputs has no range on their outputs, so TensorRT 10 would run no GEMM in
    INT8: --fill takes measured ranges for exactly those outputs, the model's own scales stay as they are, and
    the float QA head stays float."""
    from bertrt.calibrate.evaluate import implicit_int8_model

    model, folder = canonical["linear"]
    fused, name_map, _ = _surgery(model, folder, "trt10")
    rng = np.random.default_rng(0)
    for i in range(2):
        ids = rng.integers(0, 128, (1, 16)).astype(np.int32)
        np.savez(tmp_path / f"{i}.npz", input_ids=ids, segment_ids=np.zeros_like(ids), input_mask=np.ones_like(ids))
    measured, own, filled = tmp_path / "measured.json", tmp_path / "own.json", tmp_path / "filled.json"
    _run("calibrate", "ranges", model, "--npz-dir", tmp_path, "--method", "minmax", "--name-map", name_map,
         "-o", measured)
    _run("calibrate", "qat", model, "--name-map", name_map, "-o", own)
    _run("calibrate", "qat", model, "--name-map", name_map, "--fill", measured, "-o", filled)
    own, filled, measured = (json.loads(p.read_text()) for p in (own, filled, measured))
    added = {t: v for t, v in filled.items() if t not in own}
    assert {t: filled[t] for t in own} == own and added and all(measured[t] == v for t, v in added.items())
    fused_model = onnx.load(fused)
    assert len(implicit_int8_model(fused_model, own)[1].quantized) == 0
    _, report = implicit_int8_model(fused_model, filled)
    assert len(report.quantized) == 8 and list(report.skipped.values()) == ["no range for its output"]  # the head


@pytest.mark.parametrize("target", ["trt10", "trt11"])
def test_make_engine_takes_a_qat_export_with_its_own_scales(target, tmp_path):
    """`make engine ONNX=... PREC=int8` tells a Q/DQ export by its nodes: no smoothing or recalibration of its
    scales (calibrate qat; on trt10 measured ranges only for its GEMM outputs), gated against the QAT model."""
    import subprocess
    import sys

    root = FIXTURES.parents[1]

    def plan(onnx_file):
        r = subprocess.run(["make", "-n", "engine", f"ONNX={onnx_file}", "PREC=int8", f"TARGET={target}",
                            f"BUILD={tmp_path}", f"PYTHON={sys.executable}"], cwd=root, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout

    qat = plan(FIXTURES / "qat_fq_linear.onnx")
    assert "convert onnx" in qat and "calibrate smooth" not in qat and "calibrate qat" in qat
    assert ("--fill" in qat) == (target == "trt10") and ("calibrate qdq" in qat) == (target == "trt11")
    assert "calibrate evaluate " + str(tmp_path / f"qat_fq_linear-384-int8-{target}" / "model.onnx") in qat
    float_export = plan(FIXTURES / "hf_qa_eager.onnx")
    assert "calibrate smooth" in float_export and "calibrate qat" not in float_export
