"""PyTorch fake-quant (QAT) exports, one fixture per Q/DQ placement (tests/fixtures/make_qat_fixtures.py), taken
as they are: they fuse completely, compute like the QAT model on ONNX Runtime, and their own scales become
the fused graph's INT8 ranges (scale x 127, exactly) and, for TensorRT 11, its weights' int8 grid."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from bertrt.calibrate.qat import several_scales, unify_scales
from bertrt.cli import cli
from bertrt.run.compare import compare_models, random_inputs
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
    # ONNX Runtime runs the QAT model's Q/DQ; the fused graph runs (CPU reference) as TensorRT would: trt10 with
    # the model's ranges (and measured ones on its GEMM outputs) as implicit INT8, trt11 as its Q/DQ graph.
    if target == "trt10":
        result = compare_models(model, fused, batch=2, seq=16, iterations=2, amax=_trt10_ranges(model, folder))
    else:
        result = compare_models(model, _trt11_qdq(model, folder), batch=2, seq=16, iterations=2)
    assert result.precision == "int8" and result.passed, result.table()


def _trt10_ranges(model, folder) -> dict:
    """`calibrate qat --fill` as make engine runs it for trt10: the model's own ranges, measured ones (on random
    token ids, saved as .npz) for the outputs of its quantized GEMMs."""
    filled = folder / "filled-trt10.json"
    if not filled.exists():
        _, name_map, _ = _surgery(model, folder, "trt10")
        npz = folder / "npz"
        npz.mkdir()
        rng = np.random.default_rng(0)
        for i in range(2):
            ids = rng.integers(0, 128, (1, 16)).astype(np.int32)
            np.savez(npz / f"{i}.npz", input_ids=ids, segment_ids=np.zeros_like(ids), input_mask=np.ones_like(ids))
        _run("calibrate", "ranges", model, "--npz-dir", npz, "--method", "minmax", "--name-map", name_map,
             "-o", folder / "measured-trt10.json")
        _run("calibrate", "qat", model, "--name-map", name_map, "--fill", folder / "measured-trt10.json", "-o", filled)
    return json.loads(filled.read_text())


def _trt11_qdq(model, folder):
    """`calibrate qat` + `calibrate qdq` as make engine runs them for trt11: the Q/DQ graph TensorRT 11 builds."""
    qdq = folder / "fused.qdq.onnx"
    if not qdq.exists():
        fused, name_map, _ = _surgery(model, folder, "trt11")
        _run("calibrate", "qat", model, "--name-map", name_map, "-o", folder / "ranges-trt11.json")
        _run("calibrate", "qdq", fused, "--ranges", folder / "ranges-trt11.json", "-o", qdq)
    return qdq


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
    qdq = _trt11_qdq(model, folder)
    ranges = folder / "ranges-trt11.json"
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


def _ort(model, feeds, level=None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if level is not None:
        options.graph_optimization_level = level
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(["logits"], f)[0] for f in feeds])


def _without_activation_qdq(model):
    """The QAT model with its activation Q/DQ pairs taken out by hand (its weights' Q/DQ kept, for ONNX Runtime to
    run): the float function its fused graph computes around the quantization points."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    c = _constants(m)
    producer = {o: n for n in m.graph.node for o in n.output}
    bypass = {}
    for dq in m.graph.node:
        q = producer.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in c:
            bypass[dq.output[0]] = q.input[0]
    for n in m.graph.node:
        n.input[:] = [bypass.get(t, t) for t in n.input]
    return m


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_fused_graph_is_the_qat_models_float_function(canonical, placement):
    """INT8 graphs cannot be compared element by element (one value rounding to the other step moves all after
    it), so surgery's exactness is checked where it is exact: with the activation Q/DQ out of the QAT model (by
    hand here), the fused FP32 graph computes what ONNX Runtime computes on it, the weights on their grid."""
    import onnxruntime as ort

    from bertrt.plugins.runner import ReferenceRunner

    model, folder = canonical[placement]
    fused = folder / "fused-fp32.onnx"
    _run("surgery", "run", model, "-o", fused, "--target", "trt10", "--precision", "fp32")
    feeds = random_inputs(onnx.load(model), batch=2, seq=16, iterations=2)
    # Graph optimizations off: on a MatMul whose only Q/DQ is the weight's, they quantize the input on the fly.
    want = _ort(_without_activation_qdq(onnx.load(model)), feeds, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    runner = ReferenceRunner(onnx.load(fused))
    got = np.concatenate([runner.run(f)["logits"] for f in feeds])
    assert np.abs(got - want).max() < 1e-5


def _lower_key_scales(model, factor=0.8):
    """The model with its K inputs' quantizers (and their DequantizeLinear) on a smaller scale than Q's and V's,
    as in an export whose three quantizers of one tensor were calibrated apart."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    c = _constants(m)
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in c and "/key/" in n.name:
            name = f"{n.name}/lowered_scale"
            m.graph.initializer.append(numpy_helper.from_array(np.float32(c[n.input[1]] * factor), name))
            for dq in m.graph.node:
                if dq.op_type == "DequantizeLinear" and dq.input[0] == n.output[0]:
                    dq.input[1] = name
            n.input[1] = name
    return m


def test_several_scales_of_one_tensor_are_told_and_unified(canonical, tmp_path):
    """A tensor quantized with several scales (Q, K and V's input) is named by surgery, calibrate qat and compare;
    the fused QKV GEMM keeps the largest, and unify_scales makes the QAT model compute exactly so."""
    model, folder = canonical["linear"]
    original = onnx.load(model)
    lowered = _lower_key_scales(original)
    several = several_scales(lowered)
    assert several_scales(original) == {} and len(several) == 2  # the Q/K/V input of each layer
    assert all(len(s) == 3 and max(s) / min(s) == pytest.approx(1.25) for s in several.values())
    unified, scales = unify_scales(lowered)
    assert scales == {t: max(s) for t, s in several.items()} and several_scales(unified) == {}
    feeds = random_inputs(original, batch=2, seq=16, iterations=2)
    assert np.array_equal(_ort(unified, feeds), _ort(original, feeds))  # every scale back on the largest
    assert not np.array_equal(_ort(lowered, feeds), _ort(original, feeds))

    path = tmp_path / "lowered.onnx"
    onnx.save(lowered, path)
    log = _run("surgery", "run", path, "-o", tmp_path / "fused.onnx", "--precision", "int8",
               "--name-map", tmp_path / "map.json")
    assert "2 activations are quantized with several scales, up to 25.0% apart" in log
    log = _run("calibrate", "qat", path, "-o", tmp_path / "lowered.json")
    assert "2 tensors are quantized with several scales, up to 25.0% apart" in log
    _run("calibrate", "qat", model, "-o", tmp_path / "original.json")
    assert json.loads((tmp_path / "lowered.json").read_text()) == json.loads((tmp_path / "original.json").read_text())
    # compare: a fused B is compared with A' = the lowered model with its scales unified (the original model
    # here), and A' against A as exported is reported; --as-exported compares with A itself.
    fused = onnx.load(tmp_path / "fused.onnx")
    result = compare_models(lowered, fused, inputs=feeds)
    assert result.precision == "int8" and result.reference == "A'"
    (note,) = [n for n in result.notes if n.startswith("A quantizes 2 tensors with several scales")]
    moved = np.abs(_ort(original, feeds) - _ort(lowered, feeds))
    assert f"A' against A as exported: logits max {moved.max():.4g} mean {moved.mean():.4g}" in note
    same = compare_models(original, fused, inputs=feeds)
    assert same.reference == "A" and not same.notes and same.outputs == result.outputs
    exported = compare_models(lowered, fused, inputs=feeds, as_exported=True)
    assert exported.reference == "A" and not exported.notes and exported.outputs != result.outputs
    r = CliRunner().invoke(cli, ["compare", str(path), str(tmp_path / "fused.onnx"), "--batch", "2", "--seq", "16"])
    assert "B is compared with A' = A with those scales unified" in r.output and "A' on onnxrt vs B" in r.output
    r = CliRunner().invoke(cli, ["compare", str(path), str(tmp_path / "fused.onnx"), "--batch", "2", "--seq", "16",
                                 "--as-exported"])
    assert "unified" not in r.output and "A on onnxrt vs B" in r.output


def test_int8_tolerance_is_two_steps_of_the_outputs_grid(canonical):
    """INT8 is checked on the mean absolute error of each output, bounded by 2 steps of that output's INT8 grid
    (max |A| / 127 each): computed here from ONNX Runtime's and the reference's outputs. A graph that computes
    something else, the Q/DQ graph with the model's ranges halved, is outside it."""
    from bertrt.plugins.runner import ReferenceRunner

    model, folder = canonical["linear"]
    qdq = _trt11_qdq(model, folder)
    feeds = random_inputs(onnx.load(model), batch=2, seq=16, iterations=2)
    want = [_ort(onnx.load(model), [f]) for f in feeds]
    runner = ReferenceRunner(onnx.load(qdq))
    got = [runner.run(f)["logits"] for f in feeds]
    bound = 2 * max(np.abs(w).max() for w in want) / 127
    mean = float(np.mean([np.abs(g - w).mean() for g, w in zip(got, want)]))
    result = compare_models(model, qdq, inputs=feeds)
    (out,) = result.outputs
    assert result.error_stat == "mean" and out.atol == pytest.approx(bound, rel=1e-6)
    assert out.mean_abs == pytest.approx(mean, rel=1e-4) and out.passed == (mean <= bound) == result.passed
    assert f"logits {bound:.4g}" in result.table()
    # The model's ranges halved (its activations clipped at half their range): the graph computes something else.
    from bertrt.calibrate.qdq import insert_qdq

    fused, _, _ = _surgery(model, folder, "trt11")
    halved = {t: v / 2 for t, v in json.loads((folder / "ranges-trt11.json").read_text()).items()}
    clipped = compare_models(model, insert_qdq(onnx.load(fused), halved)[0], inputs=feeds)
    assert not clipped.passed and clipped.outputs[0].mean_abs > 1.5 * clipped.outputs[0].atol, clipped.table()
    assert compare_models(model, insert_qdq(onnx.load(fused), halved)[0], inputs=feeds, atol=1.0).passed  # absolute


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


@pytest.mark.slow
def test_real_qat_model_within_int8_tolerance_on_dev_features(real_qat, tmp_path):
    """On real dev features, the fused graphs as TensorRT runs them are within INT8 tolerance (the mean error
    within 2 steps of the logits' INT8 grid) of the QAT model on ONNX Runtime (with its Q/K/V scales unified, as
    compare does), and a graph computing something else is not. Surgery is exact up to INT8's own
    noise: in FP32 with the model's quantization points, the fused graph is as close to the QAT model with its
    Q/K/V scales unified (as its one QKV GEMM has them) as ONNX Runtime's integer kernels are to its float Q/DQ
    kernels on that same graph; the unification is the rest of the difference to the QAT model."""
    import onnxruntime as ort

    from bertrt.run.features import examples_features, stack_features
    from bertrt.run.squad_data import read_squad
    from bertrt.run.tokenization import load_tokenizer

    dev, vocab, train = need_shared("data/squad/dev-v1.1.json", "models/minilm-squad/vocab.txt",
                                    "data/squad/train-v1.1.first44.json")
    src, model, folder = real_qat
    examples = read_squad(dev)[:8]
    features = [f for fs in examples_features(load_tokenizer(vocab), examples, max_seq_length=384) for f in fs][:8]
    feeds = [stack_features(features[:4]), stack_features(features[4:])]

    fused11, map11, _ = _surgery(model, folder, "trt11")
    _run("calibrate", "qat", model, "--name-map", map11, "-o", tmp_path / "r11.json")
    _run("calibrate", "qdq", fused11, "--ranges", tmp_path / "r11.json", "-o", tmp_path / "fused11.qdq.onnx")
    trt11 = compare_models(model, tmp_path / "fused11.qdq.onnx", inputs=feeds)
    assert trt11.precision == "int8" and trt11.reference == "A'" and trt11.passed, trt11.table()
    assert any("A quantizes 6 tensors with several scales" in n for n in trt11.notes)

    fused10, map10, _ = _surgery(model, folder, "trt10")
    _run("calibrate", "ranges", model, "--squad-json", train, "--calib-num", 8, "--vocab", vocab, "--seq", 384,
         "--method", "minmax", "--name-map", map10, "-o", tmp_path / "measured.json")
    _run("calibrate", "qat", model, "--name-map", map10, "--fill", tmp_path / "measured.json", "-o", tmp_path / "r10.json")
    amax = json.loads((tmp_path / "r10.json").read_text())
    trt10 = compare_models(model, fused10, inputs=feeds, amax=amax)
    assert trt10.passed and any("24 GEMMs in INT8" in n for n in trt10.notes), trt10.table()
    floating = compare_models(model, fused10, inputs=feeds, precision="int8")  # its activations left in float
    assert not floating.passed and floating.outputs[0].mean_abs > 3 * trt10.outputs[0].mean_abs

    fused32 = folder / "fused-fp32.onnx"
    _run("surgery", "run", model, "-o", fused32, "--precision", "fp32", "--name-map", tmp_path / "map32.json")
    _run("calibrate", "qat", model, "--name-map", tmp_path / "map32.json", "-o", tmp_path / "r32.json")
    _run("calibrate", "qdq", fused32, "--ranges", tmp_path / "r32.json", "--allow-missing",
         "-o", tmp_path / "fused32.qdq.onnx")  # the head: float in the model
    unified, _ = unify_scales(onnx.load(model))
    floor = float(np.abs(_ort(unified, feeds) - _ort(unified, feeds, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)).mean())
    exact = compare_models(model, tmp_path / "fused32.qdq.onnx", inputs=feeds).outputs[0].mean_abs  # against A'
    as_exported = compare_models(model, tmp_path / "fused32.qdq.onnx", inputs=feeds,
                                 as_exported=True).outputs[0].mean_abs
    assert exact <= 1.5 * floor and as_exported >= 1.3 * exact, (floor, exact, as_exported)


def test_fill_gives_trt10_the_outputs_of_the_quantized_gemms(canonical, tmp_path):
    """A model quantizing only GEMM inputs has no range on their outputs, so TensorRT 10 would run no GEMM in
    INT8: --fill takes measured ranges for exactly those outputs, the model's own scales stay as they are, and
    the float QA head stays float."""
    from bertrt.calibrate.evaluate import implicit_int8_model

    model, folder = canonical["linear"]
    fused, name_map, _ = _surgery(model, folder, "trt10")
    filled = _trt10_ranges(model, folder)
    _run("calibrate", "qat", model, "--name-map", name_map, "-o", tmp_path / "own.json")
    own, measured = (json.loads(p.read_text()) for p in (tmp_path / "own.json", folder / "measured-trt10.json"))
    added = {t: v for t, v in filled.items() if t not in own}
    assert {t: filled[t] for t in own} == own and added and all(measured[t] == v for t, v in added.items())
    fused_model = onnx.load(fused)
    assert len(implicit_int8_model(fused_model, own)[1].quantized) == 0
    _, report = implicit_int8_model(fused_model, filled)
    assert len(report.quantized) == 8 and list(report.skipped.values()) == ["no range for its output"]  # the head


@pytest.mark.parametrize("target", ["trt10", "trt11"])
def test_make_engine_takes_a_qat_export_with_its_own_scales(target, tmp_path):
    """`make engine ONNX=... PREC=int8` tells a Q/DQ export by its nodes: no smoothing or recalibration of its
    scales (calibrate qat; on trt10 measured ranges on SQuAD train questions only for its GEMM outputs), gated
    as a real model on SQuAD F1 on dev questions, against the QAT model itself, with the vocab given."""
    import subprocess
    import sys

    root = FIXTURES.parents[1]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n")

    def make(onnx_file, *extra, dry=True):
        return subprocess.run(["make", *(["-n"] if dry else []), "engine", f"ONNX={onnx_file}", "PREC=int8",
                               f"TARGET={target}", f"BUILD={tmp_path}", f"PYTHON={sys.executable}", *extra],
                              cwd=root, capture_output=True, text=True)

    def plan(onnx_file, *extra):
        r = make(onnx_file, *extra)
        assert r.returncode == 0, r.stderr
        return r.stdout

    qat = plan(FIXTURES / "qat_fq_linear.onnx", f"VOCAB={vocab}")
    assert "convert onnx" in qat and "calibrate smooth" not in qat and "calibrate qat" in qat
    assert ("--fill" in qat) == (target == "trt10") and ("calibrate qdq" in qat) == (target == "trt11")
    evaluate = next(line for line in qat.splitlines() if "calibrate evaluate" in line)
    assert "calibrate evaluate " + str(tmp_path / f"qat_fq_linear-384-int8-{target}" / "model.onnx") in evaluate
    assert "dev-v1.1.json" in evaluate and "--max-f1-drop 1.0" in evaluate and f"--vocab {vocab}" in evaluate
    if target == "trt10":  # the --fill ranges: measured on SQuAD train questions, tokenized with the given vocab
        measured = next(line for line in qat.splitlines() if "calibrate ranges" in line)
        assert "train-v1.1.first44.json" in measured and f"--vocab {vocab}" in measured
    assert "--float-gemms" not in qat  # its own Q/DQ say which GEMMs are INT8
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "vocab.txt").write_text("[PAD]\n")
    assert f"--vocab {hf / 'vocab.txt'}" in plan(FIXTURES / "qat_fq_linear.onnx", f"HF={hf}")

    # No vocab beside the export and none given: one clear line, exit 2, nothing made.
    r = make(FIXTURES / "qat_fq_linear.onnx", dry=False)
    assert r.returncode == 2 and "no vocab.txt beside it; give VOCAB=path/to/vocab.txt or HF=" in r.stderr
    r = make(FIXTURES / "qat_fq_linear.onnx", f"VOCAB={tmp_path / 'missing.txt'}", dry=False)
    assert r.returncode == 2 and f"no file {tmp_path / 'missing.txt'}" in r.stderr
    assert not any(tmp_path.glob("qat_fq_linear-*"))

    float_export = plan(FIXTURES / "hf_qa_eager.onnx")
    assert "calibrate smooth" in float_export and "calibrate qat" not in float_export


def test_packed_int8_bound_is_each_sequences_own_steps(canonical, tmp_path):
    """compare_packed at int8 bounds each sequence's mean error by 2 steps of that sequence's padded output. The
    packed graph computes in FP16 (the var-seqlen plugins have no INT8 here): within the bound of the padded FP16
    graph, outside it on some sequence against the QAT model's INT8; a given atol still overrides the bound."""
    from bertrt.run.compare import compare_packed

    model, folder = canonical["linear"]
    packed, padded = tmp_path / "packed.onnx", tmp_path / "padded.onnx"
    _run("surgery", "run", model, "-o", packed, "--target", "trt11", "--varseqlen")
    _run("surgery", "run", model, "-o", padded, "--target", "trt11", "--precision", "fp16")
    same = compare_packed(padded, packed, batch=4, seq=16, precision="int8")
    assert same.atol is None and same.passed and "2 steps of the output's INT8 grid" in same.table()
    qat = compare_packed(model, packed, batch=4, seq=16)
    assert qat.precision == "int8" and not all(s.passed for s in qat.sequences)
    assert compare_packed(model, packed, batch=4, seq=16, atol=1.0).passed  # a given atol is absolute
