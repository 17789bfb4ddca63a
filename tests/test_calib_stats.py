"""Range statistics on the tiny canonical model against an independent ONNX Runtime run."""

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from bertrt.calibrate.data_source import squad_feeds
from bertrt.calibrate.stats import calibrate
from bertrt.calibrate.tensors import GraphIndex, select_tensors, weight_gemms
from bertrt.convert.zoo import vocab_path
from bertrt.errors import BertrtError

CALIB_JSON = Path(__file__).parents[1] / "calibrate" / "data" / "pydoc_qa_calib.json"
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def feeds():
    return squad_feeds(CALIB_JSON, vocab_path(), 128, num=12)


@pytest.fixture(scope="module")
def minmax(tiny_onnx, feeds):
    return calibrate(tiny_onnx, feeds, method="minmax", gelu_clamp=None, progress=False)


def _reference_amax(model_path, feeds, names):
    """max |x| over the samples, in float64, from ONNX Runtime with each tensor as an extra graph output."""
    model = onnx.load(model_path)
    for name in names:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    amax = dict.fromkeys(names, 0.0)
    for feed in feeds:
        for name, value in zip(names, sess.run(list(names), feed)):
            amax[name] = max(amax[name], float(np.max(np.abs(value.astype(np.float64)))))
    return amax


@pytest.mark.parametrize("fixture", ["tiny", "torch_legacy_bert", "hf_qa_eager", "torch_dynamo_qa"])
def test_roles_found_in_every_exporters_graph(fixture, tiny_onnx):
    path = tiny_onnx if fixture == "tiny" else FIXTURES / f"{fixture}.onnx"
    model = onnx.load(path)
    roles = select_tensors(model)
    counts = Counter(roles.values())
    # 2 layers: softmax and GELU once each; LayerNorms: embeddings + 2 per layer; residual adds: 2 per layer.
    assert counts["softmax"] == 2 and counts["gelu"] == 2 and counts["layernorm"] == 5
    assert counts["residual"] >= 4
    gemms = weight_gemms(GraphIndex(model))
    assert len(gemms) == 13  # Q, K, V, attention output, FC1, FC2 per layer, and the QA head
    assert all(act in roles for _, act in gemms)


def test_minmax_matches_independent_run(tiny_onnx, feeds, minmax):
    assert len(minmax.amax) == len(select_tensors(onnx.load(tiny_onnx))) == 52
    ref = _reference_amax(tiny_onnx, feeds, list(minmax.amax))
    for name, value in minmax.amax.items():
        assert value == pytest.approx(ref[name], rel=1e-6), name


def test_percentile_is_within_minmax_and_clips_some(tiny_onnx, feeds, minmax):
    pct = calibrate(tiny_onnx, feeds, method="percentile", percentile=99.9, gelu_clamp=None, progress=False)
    assert pct.amax.keys() == minmax.amax.keys()
    assert all(pct.amax[n] <= minmax.amax[n] * (1 + 1e-6) for n in pct.amax)
    assert sum(pct.amax[n] < 0.99 * minmax.amax[n] for n in pct.amax) > len(pct.amax) // 2


def test_entropy_runs_and_stays_within_minmax(tiny_onnx, feeds, minmax):
    ent = calibrate(tiny_onnx, feeds[:4], method="entropy", gelu_clamp=None, progress=False)
    small = calibrate(tiny_onnx, feeds[:4], method="minmax", gelu_clamp=None, progress=False)
    assert ent.amax.keys() == minmax.amax.keys()
    assert all(0 < ent.amax[n] <= small.amax[n] * (1 + 1e-6) for n in ent.amax)


def test_gelu_clamp_fixes_gelu_ranges_only(tiny_onnx, feeds, minmax):
    clamped = calibrate(tiny_onnx, feeds, method="minmax", gelu_clamp=10.0, progress=False)
    gelu = [n for n, r in clamped.roles.items() if r == "gelu"]
    assert len(gelu) == 2
    for name, value in clamped.amax.items():
        assert value == (10.0 if name in gelu else minmax.amax[name])


def test_bad_arguments(tiny_onnx, feeds, tmp_path):
    with pytest.raises(BertrtError, match="method"):
        calibrate(tiny_onnx, feeds, method="kl")
    with pytest.raises(BertrtError, match="percentile"):
        calibrate(tiny_onnx, feeds, percentile=0)
    with pytest.raises(BertrtError, match="no calibration samples"):
        calibrate(tiny_onnx, [])
    with pytest.raises(BertrtError, match="no such file"):
        calibrate(tmp_path / "missing.onnx", feeds)
