"""Streaming model I/O: weights are read and written one at a time, in one file or with external data."""

import numpy as np
import onnx
import pytest

from bertrt.errors import BertrtError
from bertrt.graph_io import import_streaming, read_streaming, save_graph


def _initializers(model):
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def test_read_streaming_equals_onnx_load(tiny_onnx):
    model, weights = read_streaming(tiny_onnx)
    reference = onnx.load(tiny_onnx)
    want = _initializers(reference)
    assert weights and set(weights) < set(want)  # the large ones are streamed, the small ones stay in the proto
    for name, value in weights.items():
        np.testing.assert_array_equal(value, want[name])
    assert [n.name for n in model.graph.node] == [n.name for n in reference.graph.node]
    stub = next(t for t in model.graph.initializer if t.name in weights)
    assert not stub.raw_data and list(stub.dims) == list(want[stub.name].shape)


@pytest.mark.parametrize("external", [False, True])
def test_save_and_read_back(tiny_onnx, tmp_path, external):
    graph = import_streaming(tiny_onnx)
    out = tmp_path / "m.onnx"
    save_graph(graph, out, external_data=external)
    assert (tmp_path / "m.onnx.data").exists() == external
    back = onnx.load(out)  # onnx reads either form
    want = _initializers(onnx.load(tiny_onnx))
    got = _initializers(back)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value)
    _, weights = read_streaming(out)  # and so does the streaming reader
    for name, value in weights.items():
        np.testing.assert_array_equal(value, want[name])


def test_surgery_on_an_external_data_model(tiny_onnx, tmp_path):
    from bertrt.surgery import pipeline

    src = tmp_path / "ext.onnx"
    save_graph(import_streaming(tiny_onnx), src, external_data=True)
    result = pipeline.run_file(src)
    assert result.complete


def test_damaged_file(tiny_onnx, tmp_path):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(open(tiny_onnx, "rb").read()[:100_000])
    with pytest.raises(BertrtError, match="not a readable ONNX model"):
        import_streaming(cut)
