"""QAT ranges: the fixture's Q/DQ scales x 127, exactly."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from bertrt.calib_cache import read_cache, write_cache
from bertrt.calibrate.qat import qat_ranges
from bertrt.errors import BertrtError

QAT = Path(__file__).parent / "fixtures" / "qat_qdq.onnx"


def test_ranges_are_scales_times_127_exactly(tmp_path):
    model = onnx.load(QAT)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    expected = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            expected[node.input[0]] = float(inits[node.input[1]]) * 127
    result = qat_ranges(model)
    assert len(expected) == 34
    assert result.amax == expected
    assert any("zero point" in note for note in result.notes)  # onnxruntime's activations are asymmetric

    # Through a calibration cache the float32 scales come back bit for bit.
    write_cache(tmp_path / "qat.cache", result.amax, "10.16")
    scales = read_cache(tmp_path / "qat.cache").scales
    for name, amax in expected.items():
        assert np.float32(scales[name]) == np.float32(amax / 127)


def test_model_without_qdq_is_refused(tiny_onnx):
    with pytest.raises(BertrtError, match="not a Q/DQ"):
        qat_ranges(onnx.load(tiny_onnx), tiny_onnx)
