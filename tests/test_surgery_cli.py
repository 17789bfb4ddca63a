"""`bertrt surgery` commands: list, run (table, dumps, JSON report, full-or-nothing), pass, inspect, bad input."""

import json

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import helper

from bertrt.cli import cli
from bertrt.surgery.pipeline import DEFAULT_PASSES


def _run(*args):
    return CliRunner().invoke(cli, ["surgery", *map(str, args)])


def test_list_names_every_pass():
    r = _run("list")
    assert r.exit_code == 0
    listed = [line.split()[0] for line in r.output.splitlines() if line and not line.startswith("targets")]
    assert listed[:len(DEFAULT_PASSES)] == DEFAULT_PASSES
    assert "trt10-legacy" in r.output


def test_run_writes_fused_dumps_and_report(tiny_onnx, tmp_path):
    out, dumps, report = tmp_path / "fused.onnx", tmp_path / "dumps", tmp_path / "report.json"
    r = _run("run", tiny_onnx, "-o", out, "--target", "trt10", "--dump-dir", dumps, "--report", report)
    assert r.exit_code == 0, r.output
    assert "complete: every encoder op fused" in r.output
    assert "fused: EmbLayerNorm 1, QKVToContext 2, SkipLayerNorm 4" in r.output
    assert sorted(p.name for p in dumps.iterdir()) == [f"{i:02d}-{n}.onnx" for i, n in enumerate(DEFAULT_PASSES, 1)]
    after_attention = onnx.load(dumps / f"{DEFAULT_PASSES.index('attention') + 1:02d}-attention.onnx")
    assert sum(n.op_type == "CustomQKVToContextPluginDynamic" for n in after_attention.graph.node) == 2
    assert not any(n.op_type == "CustomEmbLayerNormPluginDynamic" for n in after_attention.graph.node)
    data = json.loads(report.read_text())
    assert data["complete"] is True and [p["pass"] for p in data["passes"]] == DEFAULT_PASSES
    assert data["plugins"]["CustomQKVToContextPluginDynamic v4"] == 2
    onnx.checker.check_model(onnx.load(out), full_check=False)


def test_every_dump_runs_and_matches(tiny_onnx, tmp_path):
    """Each intermediate graph is valid and still computes the same logits (adapters keep it runnable)."""
    from bertrt.run.compare import compare_models

    dumps = tmp_path / "dumps"
    assert _run("run", tiny_onnx, "-o", tmp_path / "f.onnx", "--dump-dir", dumps).exit_code == 0
    for dump in sorted(dumps.iterdir()):
        result = compare_models(tiny_onnx, dump, batch=2)
        assert result.passed, f"{dump.name}\n{result.table()}"


def test_one_pass_alone(tiny_onnx, tmp_path):
    out = tmp_path / "ln.onnx"
    r = _run("pass", "layernorm", tiny_onnx, "-o", out)
    assert r.exit_code == 0, r.output
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert ops.count("LayerNormalization") == 5 and "ReduceMean" not in ops and "Softmax" in ops
    r = _run("pass", "nosuch", tiny_onnx, "-o", out)
    assert r.exit_code == 1 and "no pass named 'nosuch'" in r.output


def test_inspect(tiny_onnx, tmp_path):
    out = tmp_path / "fused.onnx"
    _run("run", tiny_onnx, "-o", out, "--target", "trt10-legacy", "--precision", "fp16")
    r = _run("inspect", out)
    assert r.exit_code == 0
    assert "CustomQKVToContextPluginDynamic (has_mask=1, hidden_size=128, num_heads=2, plugin_version=1, type_id=1)" in r.output
    assert "unfused encoder ops: none" in r.output and "validator (weakly typed): no problems" in r.output
    # A trt10 graph keeps float32 tensors around FP16 plugins: fine for TensorRT 10's builder flag, no implementation
    # in a strongly typed network (#14), which inspect says as well.
    assert "validator (strongly typed, trt11): 17 more problem(s)" in r.output
    assert "is float32, but type_id = 1 (FP16) needs float16" in r.output
    _run("run", tiny_onnx, "-o", out, "--target", "trt11", "--precision", "fp16")
    r = _run("inspect", out)
    assert "validator (weakly typed): no problems" in r.output and "(strongly typed, trt11): no more problems" in r.output
    raw = _run("inspect", tiny_onnx)
    assert "plugin nodes: none" in raw.output and "Softmax x2" in raw.output


def test_partial_fusion_is_refused_unless_allowed(tiny_onnx, tmp_path):
    model = onnx.load(tiny_onnx)
    next(n for n in model.graph.node if n.op_type == "Softmax").attribute.append(helper.make_attribute("axis", 1))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, broken)
    out = tmp_path / "fused.onnx"
    r = _run("run", broken, "-o", out)
    assert r.exit_code == 1
    assert "softmax axis is 1, expected -1" in r.output
    assert r.output.strip().splitlines()[-1].startswith(f"Error: {broken}: the encoder is only partly fused")
    assert not out.exists() and not list(tmp_path.glob(".fused*"))
    r = _run("run", broken, "-o", out, "--allow-partial")
    assert r.exit_code == 0 and out.exists()


def test_not_a_bert_encoder(tmp_path):
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    src, out = tmp_path / "relu.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    r = _run("run", src, "-o", out)
    assert r.exit_code == 1 and not out.exists()
    assert r.output.strip().splitlines()[-1] == f"Error: {src}: not a BERT encoder: no embedding, attention or " \
                                                 "residual LayerNorm could be fused (see the report above)"


def test_truncated_model(tiny_onnx, tmp_path):
    src, out = tmp_path / "cut.onnx", tmp_path / "out.onnx"
    src.write_bytes(open(tiny_onnx, "rb").read()[:5000])
    r = _run("run", src, "-o", out)
    assert r.exit_code == 1 and not out.exists()
    assert "not a readable ONNX model" in r.output and str(src) in r.output


def test_sequence_beyond_positions(tiny_onnx, tmp_path):
    """A model whose sequence is longer than its position table is not fused into EmbLayerNorm."""
    m = onnx.load(tiny_onnx)
    # Cut the folded position slice to 100 rows: the graph now claims 128 positions from a 100-row table.
    pos = next(t for t in m.graph.initializer if list(t.dims) == [1, 128, 128])
    arr = onnx.numpy_helper.to_array(pos)[:, :100]
    pos.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(arr), pos.name))
    model = tmp_path / "m.onnx"
    onnx.save(m, model)
    # The command refuses it before any pass runs: ONNX Runtime cannot run it (#14) ...
    r = _run("run", model, "-o", tmp_path / "out.onnx")
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert r.output.startswith(f"Error: {model}: ONNX Runtime cannot run it") and "100 by 128" in r.output
    # ... and the embeddings pass, handed it anyway, says why it is no EmbLayerNorm.
    from bertrt.surgery import pipeline

    result = pipeline.run_file(model, target="trt10", precision="fp16")
    misses = [m.reason for r in result.reports if r.name == "embeddings" for m in r.misses]
    assert any("the position table has 100 rows, fewer than the sequence length 128" in m for m in misses), misses


def test_a_fused_graph_onnx_checker_refuses_is_not_written(tiny_onnx, tmp_path, monkeypatch):
    """#14: 15 fuzzed inputs came out as graphs reading a tensor nothing makes; the written graph is checked
    before it takes its name. Here a pass that loses a node stands for the bug."""
    from bertrt.surgery import pipeline

    original = pipeline.run_graph

    def losing_a_node(*args, **kwargs):
        result = original(*args, **kwargs)
        g = result.graph
        victim = next(n for n in g.nodes if n.op == "CustomSkipLayerNormPluginDynamic")
        g.nodes.remove(victim)  # its output is still read by the next node, and nothing makes it now
        return result

    monkeypatch.setattr(pipeline, "run_graph", losing_a_node)
    out = tmp_path / "out" / "fused.onnx"
    r = _run("run", tiny_onnx, "-o", out)
    assert r.exit_code == 1, r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith(f"Error: {tiny_onnx}: the graph made from it fails onnx.checker (") and \
        line.endswith("; nothing written"), line
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
