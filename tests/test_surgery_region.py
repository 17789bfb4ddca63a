"""Regions evaluated on ONNX Runtime during matching: at the oldest IR version their opsets allow, and a region
that cannot be run is reported as such, not as a pattern that computes something else."""

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from bertrt.surgery import pipeline, region


def test_regions_run_at_the_oldest_ir_version_of_their_opset(monkeypatch):
    # onnx 1.23 writes IR 14 by default, which ONNX Runtime 1.30 refuses ("max supported IR version: 13"):
    # with it every LayerNorm, attention and GELU match failed there and nothing was fused.
    seen = []
    real = region._session
    monkeypatch.setattr(region, "_session", lambda model: seen.append(model.ir_version) or real(model))
    x = gs.Variable("x", np.float32, (2, 3))
    y = gs.Variable("y", np.float32, (2, 3))
    graph = gs.Graph(nodes=[gs.Node("Relu", inputs=[x], outputs=[y])], inputs=[x], outputs=[y], opset=13)
    x0 = np.array([[-1, 0, 2], [3, -4, 5]], np.float32)
    (got,) = region.evaluate(graph, [y], [(x, x0)])
    np.testing.assert_array_equal(got, np.maximum(x0, 0))
    assert seen == [7] and onnx.IR_VERSION > 7  # opset 13 came with IR 7


def test_a_region_that_cannot_run_is_reported_as_such(tiny_onnx, monkeypatch):
    def refuse(model):
        raise RuntimeError("Unsupported model IR version: 14, max supported IR version: 13")

    monkeypatch.setattr(region, "_session", refuse)
    result = pipeline.run(onnx.load(tiny_onnx), precision="fp16")
    misses = {r.name: [m.reason for m in r.misses] for r in result.reports}
    assert not result.complete
    cannot = "cannot evaluate the region around it: RuntimeError: Unsupported model IR version: 14"
    # Every LayerNorm of the tiny model (embeddings + 2 per layer, 2 layers) and both GELUs say why.
    assert sum(m.startswith(cannot) for m in misses["layernorm"]) == 5, misses["layernorm"]
    assert len(misses["gelu"]) == 2 and all(m.startswith(cannot) for m in misses["gelu"]), misses["gelu"]


def test_int8_report_gives_each_plugins_own_reason(tiny_onnx):
    result = pipeline.run(onnx.load(tiny_onnx), precision="int8")
    notes = [n for r in result.reports if r.name == "precision" for n in r.notes]
    assert "INT8: QKVToContext 2/2, SkipLayerNorm 0/4 (the rest FP16); GEMMs take INT8 from the ranges" in notes
    assert "SkipLayerNorm FP16 x4: INT8 needs hidden size 768 or 1024, not 128" in notes
    assert not any(n.startswith("QKVToContext FP16") for n in notes)
