"""BERT's SQuAD forward pass in TensorFlow, written the way Google's modeling.py writes it.

The structure (2-D [B*S, E] activations in the encoder, moments + batch_normalization LayerNorm, one-hot
segment embedding, the ``(1 - mask) * -10000`` attention adder, erf GELU) is kept on purpose: it is what a
user's NGC checkpoint turns into through tf2onnx, and what the surgery passes must recognise.
Weights come in as a dict of tensors keyed by Google's variable names, so the same function runs with
real values (to check) or with graph inputs standing for them (to convert without freezing the weights).
"""

from __future__ import annotations

import math

from bertrt.convert.checkpoint import BertConfig
from bertrt.convert.tf_env import tf


def layer_norm(x, gamma, beta, eps):
    # tf.contrib.layers.layer_norm: nn.moments over the last axis, then nn.batch_normalization.
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    return tf.nn.batch_normalization(x, mean, variance, offset=beta, scale=gamma, variance_epsilon=eps)


def gelu(x):
    return x * 0.5 * (1.0 + tf.math.erf(x / math.sqrt(2.0)))


def dense(x, w, prefix):
    return tf.matmul(x, w[prefix + "/kernel"]) + w[prefix + "/bias"]


def squad_logits(input_ids, segment_ids, input_mask, w: dict, cfg: BertConfig):
    """[B, S] int32 ids, segments, mask -> [B, S, 2] float32 (start, end) logits."""
    E, N, H = cfg.hidden_size, cfg.num_attention_heads, cfg.head_size
    B = tf.shape(input_ids)[0]
    S = input_ids.shape[1] if input_ids.shape[1] is not None else tf.shape(input_ids)[1]

    # Embeddings: word lookup by gather, segment by one-hot matmul, position by slice.
    word = tf.reshape(tf.gather(w["bert/embeddings/word_embeddings"], tf.reshape(input_ids, [-1])), [B, S, E])
    one_hot = tf.one_hot(tf.reshape(segment_ids, [-1]), depth=cfg.type_vocab_size)
    seg = tf.reshape(tf.matmul(one_hot, w["bert/embeddings/token_type_embeddings"]), [B, S, E])
    pos = tf.reshape(tf.slice(w["bert/embeddings/position_embeddings"], [0, 0], [S, -1]), [1, S, E])
    x = layer_norm(word + seg + pos, w["bert/embeddings/LayerNorm/gamma"], w["bert/embeddings/LayerNorm/beta"],
                   cfg.layer_norm_eps)

    # Attention mask [B, 1, S, S]: 0 for keys to attend to, -10000 for padding.
    to_mask = tf.cast(tf.reshape(input_mask, [B, 1, S]), tf.float32)
    mask = tf.ones([B, S, 1], tf.float32) * to_mask
    adder = (1.0 - tf.expand_dims(mask, axis=1)) * -10000.0

    def heads(t):
        return tf.transpose(tf.reshape(t, [B, S, N, H]), [0, 2, 1, 3])

    prev = tf.reshape(x, [-1, E])
    for i in range(cfg.num_hidden_layers):
        p = f"bert/encoder/layer_{i}/"
        q = heads(dense(prev, w, p + "attention/self/query"))
        k = heads(dense(prev, w, p + "attention/self/key"))
        v = heads(dense(prev, w, p + "attention/self/value"))
        scores = tf.multiply(tf.matmul(q, k, transpose_b=True), 1.0 / math.sqrt(float(H)))
        probs = tf.nn.softmax(scores + adder)
        ctx = tf.reshape(tf.transpose(tf.matmul(probs, v), [0, 2, 1, 3]), [-1, E])
        attn = layer_norm(dense(ctx, w, p + "attention/output/dense") + prev,
                          w[p + "attention/output/LayerNorm/gamma"], w[p + "attention/output/LayerNorm/beta"],
                          cfg.layer_norm_eps)
        inter = gelu(dense(attn, w, p + "intermediate/dense"))
        prev = layer_norm(dense(inter, w, p + "output/dense") + attn,
                          w[p + "output/LayerNorm/gamma"], w[p + "output/LayerNorm/beta"], cfg.layer_norm_eps)

    logits = tf.matmul(prev, w["cls/squad/output_weights"], transpose_b=True) + w["cls/squad/output_bias"]
    return tf.reshape(logits, [B, S, 2])
