"""BERT QA graphs built by hand from Google-named weights: a plain ONNX one and a plugin-fused one.

They give the runner, ``compare`` and the benchmarks two graphs known to compute the same function
without depending on any exporter or surgery pass: ``unfused_bert`` follows the canonical contract with
standard ops only (LayerNormalization, erf GELU, Softmax attention with an additive -10000 mask);
``fused_bert`` is what surgery is meant to produce for a fixed-length target: EmbLN v6 -> per layer
QKV GEMM with the per-head [N, 3, H] weight + QKV v4 -> output GEMM -> SkipLN v5 (bias field carries the
GEMM bias) -> FC1 + GELU -> FC2 -> SkipLN v5 -> QA head, in the plugins' [S, B, E, 1, 1] layout.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from bertrt.contract import CANONICAL_INPUTS, LOGITS, VOCAB_SIZE
from bertrt.plugins.nodes import EMB_LAYER_NORM, QKV_TO_CONTEXT, SKIP_LAYER_NORM, make_plugin_node
from bertrt.plugins.specs import get_spec

OPSET = 17


class _Builder:
    """Small helpers over a gs.Graph: each call adds one node and returns its output Variable."""

    def __init__(self):
        self.graph = gs.Graph(opset=OPSET)
        self.n = 0

    def name(self, base):
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, base, arr):
        return gs.Constant(self.name(base), np.ascontiguousarray(arr))

    def op(self, op, inputs, attrs=None, base=None, dtype=None, n_out=1):
        outs = [gs.Variable(self.name((base or op) + "_out"), dtype=dtype) for _ in range(n_out)]
        self.graph.nodes.append(gs.Node(op, self.name(base or op), attrs or {}, inputs, outs))
        return outs[0] if n_out == 1 else outs

    def dense(self, x, kernel, bias=None, base="dense"):
        y = self.op("MatMul", [x, self.const(base + "_kernel", kernel)], base=base)
        return self.op("Add", [y, self.const(base + "_bias", bias)], base=base + "_bias") if bias is not None else y

    def reshape(self, x, shape, base="reshape"):
        return self.op("Reshape", [x, self.const("shape", np.array(shape, np.int64))], base=base)

    def gelu(self, x, base="gelu"):
        # 0.5 * x * (1 + erf(x / sqrt(2)))
        e = self.op("Erf", [self.op("Mul", [x, self.const("inv_sqrt2", np.float32(1 / np.sqrt(2)))])], base=base)
        one_plus = self.op("Add", [e, self.const("one", np.float32(1.0))])
        return self.op("Mul", [self.op("Mul", [x, one_plus]), self.const("half", np.float32(0.5))], base=base)

    def layer_norm(self, x, gamma, beta, eps, base="ln"):
        return self.op("LayerNormalization", [x, self.const(base + "_gamma", gamma), self.const(base + "_beta", beta)],
                       {"axis": -1, "epsilon": float(eps)}, base=base)

    def finish(self, inputs, logits) -> onnx.ModelProto:
        logits.name, logits.dtype, logits.shape = LOGITS, np.float32, ["batch", "seq", 2]
        self.graph.inputs, self.graph.outputs = inputs, [logits]
        self.graph.cleanup().toposort()
        model = gs.export_onnx(self.graph)
        model.ir_version = 8
        return model


def _inputs():
    return [gs.Variable(n, dtype=np.int32, shape=["batch", "seq"]) for n in CANONICAL_INPUTS]


def _w(weights, layer, name):
    return weights[f"bert/encoder/layer_{layer}/{name}"]


def qkv_weights_n3h(weights, layer, num_heads):
    """The fused QKV GEMM weight [E, 3E] and bias [3E], output channels ordered per head [N, 3, H]."""
    kernels = [_w(weights, layer, f"attention/self/{m}/kernel") for m in ("query", "key", "value")]
    biases = [_w(weights, layer, f"attention/self/{m}/bias") for m in ("query", "key", "value")]
    E = kernels[0].shape[0]
    H = E // num_heads
    k = np.stack(kernels).reshape(3, E, num_heads, H).transpose(1, 2, 0, 3).reshape(E, 3 * E)  # [E_in, N, 3, H]
    b = np.stack(biases).reshape(3, num_heads, H).transpose(1, 0, 2).reshape(3 * E)
    return k.astype(np.float32), b.astype(np.float32)


def unfused_bert(weights: dict[str, np.ndarray], num_layers: int, num_heads: int, eps: float = 1e-12) -> onnx.ModelProto:
    """The canonical QA model with standard ops: [B, S] int32 inputs -> logits [B, S, 2]."""
    b = _Builder()
    ids, seg, mask = inputs = _inputs()
    word = weights["bert/embeddings/word_embeddings"]
    E = word.shape[1]
    H = E // num_heads
    x = b.op("Add", [b.op("Gather", [b.const("word", word), ids]),
                     b.op("Gather", [b.const("tok", weights["bert/embeddings/token_type_embeddings"]), seg])])
    S = b.op("Gather", [b.op("Shape", [ids]), b.const("one_idx", np.array([1], np.int64))])
    pos = b.op("Slice", [b.const("pos", weights["bert/embeddings/position_embeddings"]),
                         b.const("zero", np.array([0], np.int64)), S])
    x = b.layer_norm(b.op("Add", [x, pos]), weights["bert/embeddings/LayerNorm/gamma"],
                     weights["bert/embeddings/LayerNorm/beta"], eps, base="emb_ln")
    m = b.op("Cast", [mask], {"to": onnx.TensorProto.FLOAT})
    m = b.op("Mul", [b.op("Sub", [b.const("one", np.float32(1)), m]), b.const("neg", np.float32(-10000.0))])
    m = b.op("Unsqueeze", [m, b.const("axes", np.array([1, 2], np.int64))])  # [B, 1, 1, S]
    for i in range(num_layers):
        heads = {}
        for t in ("query", "key", "value"):
            y = b.dense(x, _w(weights, i, f"attention/self/{t}/kernel"), _w(weights, i, f"attention/self/{t}/bias"))
            y = b.reshape(y, [0, 0, num_heads, H])
            heads[t] = b.op("Transpose", [y], {"perm": [0, 2, 3, 1] if t == "key" else [0, 2, 1, 3]})
        scores = b.op("Mul", [b.op("MatMul", [heads["query"], heads["key"]]), b.const("scale", np.float32(H ** -0.5))])
        probs = b.op("Softmax", [b.op("Add", [scores, m])], {"axis": -1})
        ctx = b.op("Transpose", [b.op("MatMul", [probs, heads["value"]])], {"perm": [0, 2, 1, 3]})
        ctx = b.reshape(ctx, [0, 0, E])
        att = b.dense(ctx, _w(weights, i, "attention/output/dense/kernel"), _w(weights, i, "attention/output/dense/bias"))
        x = b.layer_norm(b.op("Add", [att, x]), _w(weights, i, "attention/output/LayerNorm/gamma"),
                         _w(weights, i, "attention/output/LayerNorm/beta"), eps)
        h = b.gelu(b.dense(x, _w(weights, i, "intermediate/dense/kernel"), _w(weights, i, "intermediate/dense/bias")))
        out = b.dense(h, _w(weights, i, "output/dense/kernel"), _w(weights, i, "output/dense/bias"))
        x = b.layer_norm(b.op("Add", [out, x]), _w(weights, i, "output/LayerNorm/gamma"),
                         _w(weights, i, "output/LayerNorm/beta"), eps)
    logits = b.dense(x, weights["cls/squad/output_weights"].T, weights["cls/squad/output_bias"], base="squad")
    return b.finish(inputs, logits)


def fused_bert(weights: dict[str, np.ndarray], num_layers: int, num_heads: int, precision: str = "fp32",
               emb_version: int = 6, qkv_version: int = 4, skip_version: int = 5) -> onnx.ModelProto:
    """The fixed-length fused graph: plugins in [S, B, E, 1, 1], standard GEMMs and GELU between them.

    precision "fp16" sets type_id = mha_type_id = output_fp16 = 1 with float32 graph tensors, as a
    weakly-typed TensorRT 10 build with the FP16 flag sees it; "int8" sets QKVToContext's and SkipLayerNorm's
    type_id = 2 and EmbLayerNorm's mha_type_id = 2 with an FP16 output (TensorRT 10 implicit INT8: the plugins
    then need the dynamic ranges of their tensors, see ``plugin_range_tensors``).
    """
    type_id = {"fp32": 0, "fp16": 1, "int8": 2}[precision]
    emb_out_fp16, emb_mha = (1, 2) if type_id == 2 else (type_id, type_id)
    b = _Builder()
    inputs = _inputs()
    sb = [b.op("Transpose", [t], {"perm": [1, 0]}, base=f"{t.name}_SB", dtype=np.int32) for t in inputs]
    E = weights["bert/embeddings/word_embeddings"].shape[1]
    emb, mask_idx = [gs.Variable(b.name("emb"), dtype=np.float32), gs.Variable(b.name("mask_idx"), dtype=np.int32)]
    fields = {f"bert_embeddings_{k}": weights[f"bert/embeddings/{g}"] for k, g in (
        ("layernorm_beta", "LayerNorm/beta"), ("layernorm_gamma", "LayerNorm/gamma"),
        ("word_embeddings", "word_embeddings"), ("token_type_embeddings", "token_type_embeddings"),
        ("position_embeddings", "position_embeddings"))}
    b.graph.nodes.append(make_plugin_node(get_spec(EMB_LAYER_NORM, emb_version), sb, [emb, mask_idx],
                                          {**fields, "output_fp16": emb_out_fp16, "mha_type_id": emb_mha}, name="emb_ln"))
    x5 = emb
    for i in range(num_layers):
        kernel, bias = qkv_weights_n3h(weights, i, num_heads)
        qkv = b.reshape(b.dense(b.reshape(x5, [0, 0, E]), kernel, bias, base=f"l{i}_qkv"), [0, 0, 3 * E, 1, 1])
        ctx = gs.Variable(b.name(f"l{i}_ctx"), dtype=np.float32)
        b.graph.nodes.append(make_plugin_node(
            get_spec(QKV_TO_CONTEXT, qkv_version), [qkv, mask_idx], [ctx],
            {"type_id": type_id, "hidden_size": E, "num_heads": num_heads, "has_mask": 1}, name=f"l{i}_qkv_to_ctx"))
        att = b.reshape(b.dense(b.reshape(ctx, [0, 0, E]), _w(weights, i, "attention/output/dense/kernel")),
                        [0, 0, E, 1, 1])
        x5 = _skip(b, skip_version, att, x5, type_id, weights, i, "attention/output", f"l{i}_skip1")
        h = b.gelu(b.dense(b.reshape(x5, [0, 0, E]), _w(weights, i, "intermediate/dense/kernel"),
                           _w(weights, i, "intermediate/dense/bias")))
        out = b.reshape(b.dense(h, _w(weights, i, "output/dense/kernel")), [0, 0, E, 1, 1])
        x5 = _skip(b, skip_version, out, x5, type_id, weights, i, "output", f"l{i}_skip2")
    logits = b.dense(b.reshape(x5, [0, 0, E]), weights["cls/squad/output_weights"].T,
                     weights["cls/squad/output_bias"], base="squad")
    logits = b.op("Transpose", [logits], {"perm": [1, 0, 2]}, base="logits_BS")
    return b.finish(inputs, logits)


def plugin_range_tensors(model: onnx.ModelProto) -> list[str]:
    """The tensors an INT8 fused_bert graph's plugins read and write in INT8 (the ranges they need)."""
    names = []
    for n in model.graph.node:
        if n.op_type in (QKV_TO_CONTEXT, SKIP_LAYER_NORM):
            names += [t for t in [*n.input[:1 if n.op_type == QKV_TO_CONTEXT else 2], *n.output] if t]
    return list(dict.fromkeys(names))


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also returns the float32 tensors ``names`` (for a min-max calibration)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    return out


def _skip(b, version, x, skip, type_id, weights, layer, prefix, name):
    out = gs.Variable(b.name(name + "_out"), dtype=np.float32)
    fields = {"type_id": type_id, "beta": _w(weights, layer, f"{prefix}/LayerNorm/beta"),
              "gamma": _w(weights, layer, f"{prefix}/LayerNorm/gamma"),
              "bias": _w(weights, layer, f"{prefix}/dense/bias")}  # ld, where the version has it, is implied
    b.graph.nodes.append(make_plugin_node(get_spec(SKIP_LAYER_NORM, version), [x, skip], [out], fields, name=name))
    return out


def random_bert_weights(num_layers: int, hidden: int, heads: int, intermediate: int, vocab: int = VOCAB_SIZE,
                        max_pos: int = 512, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded Google-named weights of any size: the zoo's random weights (std 0.02, LayerNorm gamma near 1)."""
    from bertrt.convert.checkpoint import BertConfig
    from bertrt.convert.zoo import random_weights

    cfg = BertConfig(num_layers, hidden, heads, intermediate, vocab, max_position_embeddings=max_pos)
    return random_weights(cfg, seed, std=0.02)
