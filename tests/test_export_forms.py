"""Every export form users have goes through convert onnx -> surgery -> compare, or is refused with the reason.

The forms are the fixtures of tests/fixtures/README.md (HF at opsets 11/13/14, SDPA dynamo, keras2onnx's 2-D
projections, unnamed nodes, fixed batch 1, odd output names, stale output shapes). The originals run on ONNX
Runtime; the fused graphs on the CPU reference of the plugins.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from bertrt.cli import cli
from bertrt.convert.onnx_intake import convert_onnx
from bertrt.errors import BertrtError
from bertrt.run.compare import compare_models, compare_packed
from bertrt.surgery import pipeline

FIXTURES = Path(__file__).parent / "fixtures"
FORMS = ["hf_qa_opset11", "hf_qa_opset13", "hf_qa_opset14", "hf_qa_sdpa_dynamo", "keras_2d_opset11",
         "unnamed_opset11", "fixed_batch1", "odd_outputs", "stale_shapes_opset11"]
OPTIONS = {"keras_2d_opset11": {"start_logits": "output_1", "end_logits": "output_2"},
           "odd_outputs": {"logits": "output_0"}}
FIXED = {"fixed_batch1": (1, 16)}  # (batch, seq) baked into the export
# Every Hugging Face export: eager and SDPA attention, legacy and dynamo exporter, and the forms made from HF.
HF = ["hf_qa_eager", "hf_qa_sdpa", "torch_dynamo_qa", "hf_qa_sdpa_dynamo", "hf_qa_opset11", "hf_qa_opset13",
      "hf_qa_opset14", "fixed_batch1", "odd_outputs"]
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}


@pytest.fixture(scope="module")
def forms(tmp_path_factory, canonical_fixtures):
    """name -> (canonical model, intake report), for the forms and the first HF fixtures."""
    out = tmp_path_factory.mktemp("forms")
    converted = {}
    for name in FORMS:
        path = out / f"{name}.onnx"
        converted[name] = path, convert_onnx(FIXTURES / f"{name}.onnx", path, **OPTIONS.get(name, {}))
    for name in ("hf_qa_eager", "hf_qa_sdpa", "torch_dynamo_qa"):
        converted[name] = canonical_fixtures[name], None
    return converted


def session(path_or_model):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    model = path_or_model.SerializeToString() if isinstance(path_or_model, onnx.ModelProto) else str(path_or_model)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def batch(B, S, seed=0, vocab=64):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (B, S))
    types = (np.arange(S) >= S // 2).astype(np.int64)[None].repeat(B, 0)
    mask = np.ones((B, S), np.int64)
    mask[-1, S - S // 3:] = 0
    return ids, types, mask


def source_logits(name, ids, types, mask):
    """The source's own answer, as [B, S, 2] logits."""
    outs = session(FIXTURES / f"{name}.onnx").run(None, {"input_ids": ids, "token_type_ids": types,
                                                         "attention_mask": mask})
    if name == "odd_outputs":
        return outs[0]
    return outs[0] if len(outs) == 1 else np.stack(outs, axis=-1)


# --- intake: each form lands on the contract and computes what the source does ---------------------------

@pytest.mark.parametrize("name", FORMS)
def test_canonical_equals_source(forms, name):
    path, _ = forms[name]
    B, S = FIXED.get(name, (3, 40))
    ids, types, mask = batch(B, S)
    (got,) = session(path).run(None, {"input_ids": ids.astype(np.int32), "segment_ids": types.astype(np.int32),
                                      "input_mask": mask.astype(np.int32)})
    np.testing.assert_allclose(got, source_logits(name, ids, types, mask), rtol=0, atol=1e-5)
    model = onnx.load(path)
    (out,) = model.graph.output
    dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert out.name == "logits" and dims == ([1, 16, 2] if name in FIXED else ["batch", "seq", 2])
    assert next(o.version for o in model.opset_import if o.domain == "") >= 17


def test_old_opsets_are_upgraded_and_the_softmax_unwrapped(forms):
    for name, opset in [("hf_qa_opset11", 11), ("hf_qa_opset13", 13), ("hf_qa_opset14", 14)]:
        path, report = forms[name]
        assert report["opset"] == [opset, 17]
        ops = Counter(n.op_type for n in onnx.load(path).graph.node)
        source = Counter(n.op_type for n in onnx.load(FIXTURES / f"{name}.onnx").graph.node)
        assert ops["Softmax"] == 2 and ops["Flatten"] == source["Flatten"]  # the converter's Flattens are gone
    # Only opset 11 has the Softmax the converter wraps (Softmax changed meaning in opset 13).
    assert forms["hf_qa_opset11"][1]["softmax_unwrapped"] == 2
    assert forms["hf_qa_opset13"][1]["softmax_unwrapped"] == 0
    assert "opset 11 -> 17 (onnx.version_converter)" in forms["hf_qa_opset11"][1]["changes"]


def test_unnamed_nodes_get_unique_names(forms):
    source = onnx.load(FIXTURES / "unnamed_opset11.onnx")
    assert all(not n.name for n in source.graph.node)
    path, report = forms["unnamed_opset11"]
    names = [n.name for n in onnx.load(path).graph.node]
    assert report["named"] >= len(source.graph.node) and all(names) and len(set(names)) == len(names)


def test_stale_declared_output_shape_is_inferred_again(forms):
    declared = onnx.load(FIXTURES / "stale_shapes_opset11.onnx").graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in declared] == ["batch", 128, 2]
    # test_canonical_equals_source runs it at seq 40; the contract's output is [batch, seq, 2]
    result = pipeline.run(onnx.load(forms["stale_shapes_opset11"][0]))
    assert result.complete


def test_named_outputs_are_taken_and_the_others_dropped(forms):
    assert forms["odd_outputs"][1]["dropped"] == ["output_1"]
    assert forms["keras_2d_opset11"][1]["joined"] == ["output_1", "output_2"]


@pytest.mark.parametrize("options,words", [
    ({}, "outputs fit no contract (output_0 [?, ?, 2], output_1 [?, ?, 64])"),
    ({"logits": "output_9"}, "no output named 'output_9' (for the logits logits); outputs are: output_0, output_1"),
    ({"logits": "output_1"}, "output 'output_1' [?, ?, 64] cannot be the logits logits: expected [batch, seq, 2]"),
    ({"start_logits": "output_0"}, "the start and the end logits are named together"),
    ({"start_logits": "output_0", "end_logits": "output_0"}, "the start and the end logits are both 'output_0'"),
    ({"start_logits": "output_0", "end_logits": "output_1"}, "cannot be the start logits: expected [batch, seq]"),
    ({"logits": "output_0", "end_logits": "output_1"}, "either as one [batch, seq, 2] output or as start and end"),
])
def test_output_choice_errors(options, words, tmp_path):
    src = FIXTURES / "odd_outputs.onnx"
    with pytest.raises(BertrtError) as info:
        convert_onnx(src, tmp_path / "out.onnx", **options)
    message = info.value.message
    assert message.startswith(f"{src}: ") and words in message and "\n" not in message, message
    assert list(tmp_path.iterdir()) == []


# --- convert onnx --seq ---------------------------------------------------------------------------------

def test_seq_fixes_the_axis_and_reaches_int8_attention(tmp_path):
    """hf_qa_opset14 has heads of 64: fixed at 128 its attention runs in INT8, as a `convert tf --seq` model's."""
    fixed, free = tmp_path / "fixed.onnx", tmp_path / "free.onnx"
    report = convert_onnx(FIXTURES / "hf_qa_opset14.onnx", fixed, seq=128)
    convert_onnx(FIXTURES / "hf_qa_opset14.onnx", free)
    model = onnx.load(fixed)
    assert report["seq"] == 128 and "sequence fixed at 128" in report["changes"]
    for i in model.graph.input:
        assert [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] == ["batch", 128]

    def int8_attention(path):
        result = pipeline.run(onnx.load(path), precision="int8")
        assert result.complete, pipeline.report_table(result)
        return [n.attrs["type_id"] for n in result.graph.nodes if n.op == "CustomQKVToContextPluginDynamic"]

    assert int8_attention(fixed) == [2, 2]
    assert int8_attention(free) == [1, 1]  # FP16: INT8 attention needs a fixed 128 or 384
    ids, types, mask = batch(2, 128)
    (got,) = session(fixed).run(None, {"input_ids": ids.astype(np.int32), "segment_ids": types.astype(np.int32),
                                       "input_mask": mask.astype(np.int32)})
    np.testing.assert_allclose(got, source_logits("hf_qa_opset14", ids, types, mask), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name,seq,words", [
    ("hf_qa_opset14", 129, "sequence length 129 is longer than the position table (128 rows)"),
    ("fixed_batch1", 32, "the sequence axis is already fixed at 16; it cannot become 32"),
])
def test_seq_refused(name, seq, words, tmp_path):
    with pytest.raises(BertrtError, match=words.replace("(", r"\(").replace(")", r"\)")):
        convert_onnx(FIXTURES / f"{name}.onnx", tmp_path / "out.onnx", seq=seq)
    assert list(tmp_path.iterdir()) == []


def test_seq_at_the_fixed_length_is_accepted(tmp_path):
    assert convert_onnx(FIXTURES / "fixed_batch1.onnx", tmp_path / "out.onnx", seq=16)["seq"] == 16


# --- models nothing can run, invalid sources: one line, nothing written --------------------------------

def _toy(nodes, outputs, opset=17, extra_inits=()):
    table = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(16, 4), "table")
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])]
    graph = helper.make_graph(nodes, "toy", inputs, outputs, [table, axes, *extra_inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_a_model_onnx_runtime_cannot_run_is_refused(tmp_path):
    """The hidden states joined with the mask by a Concat of a rank-3 and a rank-2 tensor: onnx.checker passes it."""
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["emb"]),
             helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
             helper.make_node("Concat", ["emb", "mask_f"], ["last_hidden_state"], axis=-1)]
    out = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", 5])]
    src = tmp_path / "mixed.onnx"
    onnx.save(_toy(nodes, out), src)
    onnx.checker.check_model(onnx.load(src))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(BertrtError) as info:
        convert_onnx(src, out_dir / "model.onnx")
    message = info.value.message
    assert message.startswith(f"{src}: ONNX Runtime cannot run") and "\n" not in message, message
    assert list(out_dir.iterdir()) == []


def test_an_op_not_in_the_models_opset_is_one_line(tmp_path):
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["emb"]),
             helper.make_node("Gelu", ["emb"], ["last_hidden_state"])]  # Gelu is an opset-20 op
    out = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", 4])]
    src = tmp_path / "gelu17.onnx"
    onnx.save(_toy(nodes, out), src)
    r = CliRunner().invoke(cli, ["convert", "onnx", str(src), "-o", str(tmp_path / "out.onnx")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    (line,) = r.output.strip().splitlines()
    assert line.startswith(f"Error: {src}: not a valid ONNX model: ") and "Gelu" in line
    assert not (tmp_path / "out.onnx").exists()


def test_cli_options(tmp_path):
    out = tmp_path / "k.onnx"
    r = CliRunner().invoke(cli, ["convert", "onnx", str(FIXTURES / "keras_2d_opset11.onnx"), "-o", str(out),
                                 "--start-logits", "output_1", "--end-logits", "output_2", "--seq", "32"])
    assert r.exit_code == 0, r.output
    assert "joined output_1 and output_2 -> logits [batch, seq, 2]" in r.output and "sequence fixed at 32" in r.output
    r = CliRunner().invoke(cli, ["convert", "onnx", str(FIXTURES / "keras_2d_opset11.onnx"), "-o", str(out)])
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1].endswith(
        "; name the output to take as the logits, or the two to take as the start and end logits")


# --- surgery: every form fuses fully and stays equal ----------------------------------------------------

@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("name", FORMS)
def test_form_fuses_fully_and_equal(forms, name, precision, tmp_path):
    path, _ = forms[name]
    result = pipeline.run(onnx.load(path), target="trt10", precision=precision)
    assert pipeline.plugin_totals(result.counts) == {"EmbLayerNorm": 1, "QKVToContext": 2, "SkipLayerNorm": 4}, \
        pipeline.report_table(result)
    assert result.complete and result.problems == []
    names = [n.name for n in result.graph.nodes]
    assert all(names) and len(set(names)) == len(names)
    fused = tmp_path / "fused.onnx"
    result.save(fused)
    B, S = FIXED.get(name, (2, 40))
    cmp = compare_models(path, fused, batch=B, seq=None if name in FIXED else S, iterations=2,
                         atol=TOLERANCE[precision], rtol=1e10)
    assert cmp.passed, cmp.table()


@pytest.mark.parametrize("name", HF)
def test_every_hf_export_packs_for_varseqlen(forms, name, tmp_path):
    """The QA head's Split/Squeeze (and intake's Unsqueeze/Concat) act per token: the packed graph keeps them."""
    path, _ = forms[name]
    result = pipeline.run(onnx.load(path), varseqlen=True)
    packer = next(r for r in result.reports if r.name == pipeline.VARSEQLEN_PASS)
    assert packer.rewrites and not packer.misses, pipeline.report_table(result)
    packed = tmp_path / "packed.onnx"
    result.save(packed)
    B, S = FIXED.get(name, (4, 40))
    cmp = compare_packed(path, packed, batch=B, seq=None if name in FIXED else S)
    assert cmp.passed and len(cmp.sequences) == B, cmp.table()


def test_compare_stays_inside_the_position_table(forms, tmp_path):
    """hf_qa_eager has 64 positions: compare's default length (128) would read past them; it takes 64, and a
    length the model cannot run is one line, not an ONNX Runtime traceback."""
    path, _ = forms["hf_qa_eager"]
    fused = tmp_path / "fused.onnx"
    pipeline.run(onnx.load(path)).save(fused)
    r = CliRunner().invoke(cli, ["compare", str(path), str(fused)])
    assert r.exit_code == 0 and "PASS" in r.output, r.output
    r = CliRunner().invoke(cli, ["compare", str(path), str(fused), "--seq", "100"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.strip().splitlines()[-1].startswith(f"Error: {path}: seq 100 is longer than the model's 64 "
                                                        "positions")  # the cause, before ONNX Runtime is asked (#14)


def test_a_model_exported_in_training_mode_is_refused(tmp_path):
    """Dropout with training_mode set (torch.export of a module left in train()) drops values at random."""
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["emb"]),
             helper.make_node("Dropout", ["emb", "ratio", "training"], ["last_hidden_state"], name="dropout_0")]
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "ratio"),
             numpy_helper.from_array(np.array(True), "training")]
    out = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", 4])]
    src = tmp_path / "train.onnx"
    onnx.save(_toy(nodes, out, extra_inits=inits), src)
    with pytest.raises(BertrtError, match=r"exported in training mode: 1 Dropout node\(s\) drop values at random "
                                          r"\(dropout_0\); export the model after model.eval\(\)"):
        convert_onnx(src, tmp_path / "out.onnx")
    inits[1] = numpy_helper.from_array(np.array(False), "training")
    onnx.save(_toy(nodes, out, extra_inits=inits), src)
    assert convert_onnx(src, tmp_path / "out.onnx")["output"] == "hidden_states"  # inference mode: a no-op
