"""An independent float64 BERT SQuAD forward pass in numpy, from Google-named weights.

Used to check converted models against something that shares no code with the converter.
"""

from __future__ import annotations

import math

import numpy as np


def _ln(x, g, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return g * (x - mu) / np.sqrt(var + eps) + b


def _erf(x):
    return np.vectorize(math.erf)(x)


def squad_logits(w: dict, num_heads: int, input_ids, segment_ids, input_mask) -> np.ndarray:
    w = {k: np.asarray(v, np.float64) for k, v in w.items()}
    B, S = input_ids.shape
    E = w["bert/embeddings/word_embeddings"].shape[1]
    H = E // num_heads
    x = (w["bert/embeddings/word_embeddings"][input_ids] + w["bert/embeddings/token_type_embeddings"][segment_ids]
         + w["bert/embeddings/position_embeddings"][:S][None])
    x = _ln(x, w["bert/embeddings/LayerNorm/gamma"], w["bert/embeddings/LayerNorm/beta"])
    adder = (1.0 - input_mask[:, None, None, :].astype(np.float64)) * -10000.0
    layer = 0
    while f"bert/encoder/layer_{layer}/attention/self/query/kernel" in w:
        p = f"bert/encoder/layer_{layer}/"

        def dense(t, name):
            return t @ w[p + name + "/kernel"] + w[p + name + "/bias"]

        def heads(t):
            return t.reshape(B, S, num_heads, H).transpose(0, 2, 1, 3)

        q, k, v = (heads(dense(x, f"attention/self/{m}")) for m in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(H) + adder
        scores -= scores.max(-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(B, S, E)
        a = _ln(dense(ctx, "attention/output/dense") + x,
                w[p + "attention/output/LayerNorm/gamma"], w[p + "attention/output/LayerNorm/beta"])
        h = dense(a, "intermediate/dense")
        h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))
        x = _ln(dense(h, "output/dense") + a, w[p + "output/LayerNorm/gamma"], w[p + "output/LayerNorm/beta"])
        layer += 1
    return x @ w["cls/squad/output_weights"].T + w["cls/squad/output_bias"]
