"""The fusion framework: a candidate whose nodes are also used outside the pattern is a miss, not a fusion
that leaves the original compute running; names stay unique whatever the source; graphs whose ranks shape
inference cannot give still fuse; the miss reasons the framework and the packer added."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from bertrt.convert.tf_convert import random_feeds
from bertrt.plugins.runner import ReferenceRunner
from bertrt.run.compare import compare_models
from bertrt.surgery import adapters, pipeline
from bertrt.surgery.framework import Context, FusionPass, Match, NoMatch
from bertrt.surgery.graph_utils import replace_uses
from bertrt.surgery.passes.pack_varseqlen import _per_token_problem


def _by_weight(model, weight):
    return next(n for n in model.graph.node if weight in n.input)


def _consumer(model, tensor):
    return next(n for n in model.graph.node if tensor in n.input)


def _misses(result, pass_name):
    return [m.reason for r in result.reports if r.name == pass_name for m in r.misses]


def _q_head_split(model):
    """Layer 0's Q after the bias and the head-split Reshape (still [B*S... ] values of the projection)."""
    mm = _by_weight(model, "bert/encoder/layer_0/attention/self/query/kernel")
    add = _consumer(model, mm.output[0])
    return add, _consumer(model, add.output[0])


def _equal_to_original(model, result):
    feeds = random_feeds(2, 128, 30522, seed=3)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
    got = ReferenceRunner(result.model).run(feeds)["logits"]
    return np.abs(got - want).max() < 1e-4


def test_a_node_used_outside_its_pattern_is_reported_not_fused(tiny_onnx):
    """The head-split Q of layer 0 also feeds a Neg: fusing would keep the Q projection running beside the fused
    GEMM. The layer is a miss with that reason (before, it was fused and the report said complete)."""
    model = onnx.load(tiny_onnx)
    _, split = _q_head_split(model)
    model.graph.node.append(helper.make_node("Neg", [split.output[0]], ["q_negated"], name="negate_q"))
    model.graph.output.append(helper.make_empty_tensor_value_info("q_negated"))
    result = pipeline.run(model)
    reasons = _misses(result, "attention")
    assert len(reasons) == 1 and f"{split.output[0]} (from {split.op_type} {split.name}) is used elsewhere too, " \
                                  "by Neg negate_q: fusing would leave the original nodes running" in reasons[0]
    assert pipeline.plugin_totals(result.counts)["QKVToContext"] == 1 and result.leftover.get("Softmax") == 1
    assert not result.complete
    assert _equal_to_original(model, result)


def test_a_pattern_tensor_that_is_a_graph_output_is_reported(tiny_onnx):
    model = onnx.load(tiny_onnx)
    add, _ = _q_head_split(model)
    model.graph.output.append(helper.make_empty_tensor_value_info(add.output[0]))
    result = pipeline.run(model)
    reasons = _misses(result, "attention")
    assert any(f"{add.output[0]} (from Add {add.name}) is a graph output too" in r for r in reasons), reasons
    assert pipeline.plugin_totals(result.counts)["QKVToContext"] == 1
    assert _equal_to_original(model, result)


def test_shape_users_inside_the_pattern_do_not_block_it(canonical_fixtures):
    """The plain PyTorch BERT's head split reads the projection's own Shape (t.view(*t.shape[:2], N, H)): that
    Shape goes with the pattern, so the layer fuses."""
    model = onnx.load(canonical_fixtures["torch_legacy_bert"])
    q_add = next(n for n in model.graph.node if n.op_type == "Add" and n.name.endswith("layers.0/q/Add"))
    assert any(n.op_type == "Shape" for n in model.graph.node if q_add.output[0] in n.input)
    assert pipeline.plugin_totals(pipeline.run(model).counts)["QKVToContext"] == 2


def test_node_names_stay_unique_without_source_names(canonical_fixtures, tmp_path):
    """A source whose nodes have no names (PyTorch 1.3) used to get 100 nodes called '/sb'."""
    src = tmp_path / "nameless.onnx"
    model = onnx.load(canonical_fixtures["hf_qa_eager"])
    for n in model.graph.node:
        n.name = ""
    onnx.save(model, src)
    result = pipeline.run(onnx.load(src))
    assert result.complete
    fused = result.model
    names = [n.name for n in fused.graph.node if n.name]
    assert len(set(names)) == len(names) and not any(n.startswith("/sb") for n in names)
    consts = [i.name for i in fused.graph.initializer]
    assert len(set(consts)) == len(consts)
    result.save(tmp_path / "fused.onnx")
    assert compare_models(src, tmp_path / "fused.onnx", batch=2, seq=24).passed


def _rankless(path) -> gs.Graph:
    """The model's graph with every inner shape forgotten (as opset-10/11 exports leave them)."""
    graph = gs.import_onnx(onnx.load(path))
    for t in graph.tensors().values():
        if isinstance(t, gs.Variable) and t not in graph.inputs and t not in graph.outputs:
            t.shape = None
    return graph


def test_a_graph_without_ranks_fuses(forms_canonical, tmp_path):
    path = forms_canonical
    result = pipeline.run_graph(_rankless(path))
    assert result.complete, pipeline.report_table(result)
    assert "measured on ONNX Runtime" in " ".join(result.reports[0].notes)
    result.save(tmp_path / "fused.onnx")
    assert compare_models(path, tmp_path / "fused.onnx", batch=2, seq=24).passed


def test_attention_rewrites_at_an_unknown_rank(forms_canonical):
    """Without sanitize's measurement the attention pass works the rank out itself (it used to raise
    'unexpected rank None' in the rewrite)."""
    result = pipeline.run_graph(_rankless(forms_canonical), passes=["layernorm", "attention"])
    assert next(r for r in result.reports if r.name == "attention").rewrites == 2


@pytest.fixture(scope="module")
def forms_canonical(tmp_path_factory):
    from pathlib import Path

    from bertrt.convert.onnx_intake import convert_onnx

    out = tmp_path_factory.mktemp("rankless") / "hf_qa_opset11.onnx"
    convert_onnx(Path(__file__).parent / "fixtures" / "hf_qa_opset11.onnx", out)
    return out


def test_model_rank_reasons():
    ids = gs.Variable("input_ids", np.int32, ["batch", "seq"])
    floats = gs.Variable("floats", np.float32, None)
    cube = gs.Variable("cube", np.float32, None)
    graph = gs.Graph(nodes=[gs.Node("Cast", inputs=[ids], outputs=[floats], attrs={"to": onnx.TensorProto.FLOAT}),
                            gs.Node("Unsqueeze", inputs=[floats, gs.Constant("axes", np.array([2, 3]))],
                                    outputs=[cube])],
                     inputs=[ids], outputs=[cube], opset=17)
    ctx = Context(target={})
    with pytest.raises(NoMatch, match=r"cube has rank 4; hidden states are \[batch, seq, hidden\]"):
        adapters.model_rank(graph, cube, ctx)
    bad = gs.Variable("bad", np.float32, None)
    graph.nodes.append(gs.Node("Expand", inputs=[floats, gs.Constant("to", np.array([3, 3]))],
                               outputs=[bad]))  # [2, 8] does not broadcast to [3, 3]
    with pytest.raises(NoMatch, match="the rank of bad is unknown and it cannot be computed"):
        adapters.model_rank(graph, bad, ctx)


def test_skip_layernorm_that_differs_from_the_plugin(canonical_fixtures):
    """An epsilon of 1 is not the plugin's: the numeric proof against the SkipLayerNorm reference catches it."""
    model = onnx.load(canonical_fixtures["torch_legacy_bert"])
    ln = [n for n in model.graph.node if n.op_type == "LayerNormalization"][1]
    next(a for a in ln.attribute if a.name == "epsilon").f = 1.0
    result = pipeline.run(model)
    reasons = _misses(result, "skip_layernorm")
    assert any("the residual LayerNorm nodes differ from SkipLayerNorm by" in r for r in reasons), reasons
    assert not result.complete


def test_residual_summands_of_other_ranks(tiny_onnx):
    """One summand made [1, B*S, E] (broadcast against [B*S, E]): SkipLayerNorm needs both of one layout."""
    model = onnx.load(tiny_onnx)
    fc2 = _by_weight(model, "bert/encoder/layer_0/output/dense/kernel")
    bias = _consumer(model, fc2.output[0])
    residual = _consumer(model, bias.output[0])
    model.graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), "lead_axis"))
    model.graph.node.append(helper.make_node("Unsqueeze", [bias.output[0], "lead_axis"], ["ffn_out_3d"], name="lead"))
    residual.input[list(residual.input).index(bias.output[0])] = "ffn_out_3d"
    result = pipeline.run(model)
    assert "the residual inputs' ranks differ" in _misses(result, "skip_layernorm")
    assert not result.complete


def _node(op, inputs, attrs=None):
    return gs.Node(op, name=f"{op.lower()}_1", inputs=inputs, outputs=[gs.Variable("out", np.float32)],
                   attrs=attrs or {})


@pytest.mark.parametrize("op,attrs,axes,words", [
    ("Split", {"axis": 0}, None, "Split on axes [0]: only the trailing (hidden or logits) axes"),
    ("Concat", {"axis": 1}, None, "Concat on axes [1]"),
    ("Squeeze", {}, [2], "Squeeze on axes [2]"),
    ("Unsqueeze", {}, None, "Unsqueeze on axes None"),
    ("Transpose", {"perm": [2, 0, 1]}, None, "transpose [2, 0, 1] mixes the batch and sequence axes with the others"),
])
def test_packing_refuses_ops_across_tokens(op, attrs, axes, words):
    """On packed [T, C] tensors only ops on the trailing axes keep their meaning."""
    producer = gs.Node("Identity", inputs=[gs.Variable("x", np.float32)], outputs=[gs.Variable("h", np.float32)])
    inputs = [producer.outputs[0]]
    if axes is not None:
        inputs.append(gs.Constant("axes", np.array(axes, np.int64)))
    elif op == "Unsqueeze":
        inputs.append(gs.Variable("computed_axes", np.int64))
        inputs[-1].inputs.append(producer)  # computed in the region: not a constant
    assert words in _per_token_problem(_node(op, inputs, attrs), {id(producer)})


@pytest.mark.parametrize("op,attrs,axes", [("Split", {"axis": -1}, None), ("Squeeze", {}, [-1]),
                                           ("Transpose", {"perm": [0, 1, 3, 2]}, None)])
def test_packing_keeps_ops_on_the_trailing_axes(op, attrs, axes):
    producer = gs.Node("Identity", inputs=[gs.Variable("x", np.float32)], outputs=[gs.Variable("h", np.float32)])
    inputs = [producer.outputs[0]] + ([gs.Constant("axes", np.array(axes, np.int64))] if axes else [])
    assert _per_token_problem(_node(op, inputs, attrs), {id(producer)}) is None


# --- the base's candidate loop, on a toy pass -----------------------------------------------------------

class ToyPass(FusionPass):
    """Fuses Relu -> Neg into one Neg(Relu) stand-in; the anchors and matches are chosen by the test."""

    name, what, reference = "toy", "toy nodes", "the toy reference"

    def __init__(self, plan):
        self.plan = plan  # anchor name -> (inputs, outputs, error) or None

    def candidates(self, graph, ctx, report):
        return [(f"anchor {n.name}", n) for n in graph.nodes if n.name in self.plan]

    def match(self, graph, ctx, anchor):
        planned = self.plan[anchor.name]
        if planned is None:
            return None
        ins, outs, err = planned
        return Match([graph.tensors()[t] for t in ins], [graph.tensors()[t] for t in outs], err)

    def verify(self, graph, ctx, m):
        return m.data

    def rewrite(self, graph, ctx, m):
        out = gs.Variable(f"{m.outputs[0].name}/fused", np.float32)
        graph.nodes.append(gs.Node("Neg", name=f"{m.outputs[0].name}/fused", inputs=list(m.inputs), outputs=[out]))
        replace_uses(graph, m.outputs[0], out)
        return [out]


def _toy_graph():
    x = gs.Variable("x", np.float32, [4])
    t = {n: gs.Variable(n, np.float32, [4]) for n in ("r", "y", "a", "z")}
    nodes = [gs.Node("Relu", name="relu", inputs=[x], outputs=[t["r"]]),
             gs.Node("Neg", name="neg", inputs=[t["r"]], outputs=[t["y"]]),
             gs.Node("Abs", name="abs", inputs=[x], outputs=[t["a"]]),
             gs.Node("Sigmoid", name="sigmoid", inputs=[t["a"]], outputs=[t["z"]])]
    return gs.Graph(nodes=nodes, inputs=[x], outputs=[t["y"], t["z"]], opset=17)


def test_the_base_loop_checks_every_candidate_then_rewrites():
    plan = {"relu": (["x"], ["y"], 0.0),         # Relu -> Neg: accepted
            "neg": (["x"], ["y"], 0.0),          # inside the accepted candidate: skipped, no miss
            "abs": (["x"], ["y"], 0.0),          # the same nodes again from another anchor: overlap
            "sigmoid": (["a"], ["z"], 1.0)}      # differs from the reference
    graph = _toy_graph()
    report = ToyPass(plan)(graph, Context(target={}))
    assert report.rewrites == 1
    assert [(m.where, m.reason) for m in report.misses] == [
        ("anchor abs", "its nodes overlap a toy candidate already taken"),
        ("anchor sigmoid", "the toy nodes differ from the toy reference by 1 (relative) on random inputs")]
    assert sorted(n.op for n in graph.nodes) == ["Abs", "Neg", "Sigmoid"]  # Relu -> Neg gone, one Neg stands in


def test_a_candidate_that_is_not_one_is_no_miss():
    graph = _toy_graph()
    report = ToyPass({"relu": None})(graph, Context(target={}))
    assert report.rewrites == 0 and report.misses == []


def test_a_layernorm_scale_that_is_not_per_channel(canonical_fixtures):
    """A scalar scale broadcasts in LayerNormalization; SkipLayerNorm takes one value per channel."""
    model = onnx.load(canonical_fixtures["torch_legacy_bert"])
    ln = [n for n in model.graph.node if n.op_type == "LayerNormalization"][1]
    model.graph.initializer.append(numpy_helper.from_array(np.array([1.5], np.float32), "scalar_gamma"))
    ln.input[1] = "scalar_gamma"
    result = pipeline.run(model)
    assert "its scale has 1 values for a hidden size of 128" in _misses(result, "skip_layernorm")


def test_an_embedding_layernorm_scale_that_is_computed(canonical_fixtures):
    model = onnx.load(canonical_fixtures["torch_legacy_bert"])
    ln = next(n for n in model.graph.node if n.op_type == "LayerNormalization")
    model.graph.input.append(helper.make_tensor_value_info("gamma_in", onnx.TensorProto.FLOAT, [128]))
    ln.input[1] = "gamma_in"
    result = pipeline.run(model)
    assert "its scale is not constant" in _misses(result, "embeddings")


def test_a_layernorm_after_the_encoder_is_a_head_not_a_partial_fusion(canonical_fixtures, tmp_path):
    """An MLM head normalises the encoder's output again (its transform): that LayerNorm is no residual and
    not part of the encoder. It stays, sequence-major and per token, and the encoder counts as complete."""
    from bertrt.run.compare import compare_packed

    model = onnx.load(canonical_fixtures["hf_qa_eager"])
    head = next(n for n in model.graph.node if n.op_type == "MatMul" and any(
        i.name == n.input[1] and list(i.dims) == [128, 2] for i in model.graph.initializer))
    rng = np.random.default_rng(0)
    model.graph.initializer.extend([numpy_helper.from_array((1 + 0.1 * rng.standard_normal(128)).astype(np.float32),
                                                            "head_gamma"),
                                    numpy_helper.from_array((0.1 * rng.standard_normal(128)).astype(np.float32),
                                                            "head_beta")])
    at = list(model.graph.node).index(head)
    model.graph.node.insert(at, helper.make_node("LayerNormalization", [head.input[0], "head_gamma", "head_beta"],
                                                 ["head_normed"], name="head_ln", axis=-1, epsilon=1e-12))
    head.input[0] = "head_normed"
    onnx.checker.check_model(model)
    src = tmp_path / "mlm_like.onnx"
    onnx.save(model, src)
    result = pipeline.run(onnx.load(src))
    assert result.complete and result.leftover == {}, pipeline.report_table(result)
    assert sum(n.op == "LayerNormalization" for n in result.graph.nodes) == 1
    result.save(tmp_path / "fused.onnx")
    assert compare_models(src, tmp_path / "fused.onnx", batch=2, seq=24).passed
    packed = pipeline.run(onnx.load(src), varseqlen=True)
    packed.save(tmp_path / "packed.onnx")
    assert compare_packed(src, tmp_path / "packed.onnx", batch=3, seq=24).passed
