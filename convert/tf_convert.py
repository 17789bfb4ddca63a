"""TF checkpoint -> canonical ONNX through tf2onnx, without freezing the weights.

Freezing a BERT-Large graph and letting tf2onnx's optimizers copy its constants needs more than 24 GiB.
Instead the forward pass is traced with every weight as a function input, so tf2onnx converts a graph
that holds no weights at all; the weights are then bound to the ONNX graph as initializers, straight from
the checkpoint, one at a time. Peak memory stays near a few copies of the weights.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from bertrt.atomic import atomic_path
from bertrt.contract import CANONICAL_INPUTS, CHECK_SEQ, DEFAULT_SEQ, LOGITS, random_feeds
from bertrt.convert.canonical_names import canonicalize
from bertrt.convert.checkpoint import BertConfig, config_path_for, find_prefix, read_weights
from bertrt.errors import BertrtError

CHECK_TOLERANCE = 1e-4  # TF vs ONNX Runtime on the converted graph; a correct conversion sits near 1e-6


@dataclass
class ConvertReport:
    checkpoint: str
    config: BertConfig
    seq: int | None
    opset: int
    max_abs_diff: float | None = None
    check_shape: tuple = ()
    notes: list = field(default_factory=list)


def _weight_input_name(i: int) -> str:
    return f"weight_{i:04d}"


def _trace_and_convert(cfg: BertConfig, names: list[str], seq: int | None, opset: int) -> onnx.ModelProto:
    import tf2onnx

    from bertrt.convert.tf_bert import squad_logits
    from bertrt.convert.checkpoint import required_shapes
    from bertrt.convert.tf_env import tf

    shapes = required_shapes(cfg)
    sig = [tf.TensorSpec([None, seq], tf.int32, name=n) for n in CANONICAL_INPUTS]
    sig += [tf.TensorSpec(shapes[n], tf.float32, name=_weight_input_name(i)) for i, n in enumerate(names)]

    @tf.function(input_signature=sig)
    def forward(input_ids, segment_ids, input_mask, *ws):
        return squad_logits(input_ids, segment_ids, input_mask, dict(zip(names, ws)), cfg)

    model, _ = tf2onnx.convert.from_function(forward, input_signature=sig, opset=opset)
    return model, forward


def _tf_logits(forward, feeds: dict, weights: dict, names: list[str]) -> np.ndarray:
    out = forward(*(feeds[n] for n in CANONICAL_INPUTS), *(weights[n] for n in names))
    return np.asarray(out)


def _bind_canonical(model: onnx.ModelProto, weights: dict, names: list[str], seq: int | None) -> None:
    """Rename inputs/outputs to the canonical contract and turn weight inputs into initializers.

    Pops each weight out of ``weights`` as it is bound, so only one copy is alive at a time.
    """
    g = model.graph
    rename = {}
    for inp in g.input:
        base = inp.name.split(":")[0]
        if base in CANONICAL_INPUTS:
            rename[inp.name] = base
        elif base.startswith("weight_"):
            rename[inp.name] = names[int(base[len("weight_"):])]
    if len(g.output) != 1:
        raise BertrtError(f"tf2onnx produced {len(g.output)} outputs, expected 1")
    rename[g.output[0].name] = LOGITS

    for node in g.node:
        for i, n in enumerate(node.input):
            if n in rename:
                node.input[i] = rename[n]
        for i, n in enumerate(node.output):
            if n in rename:
                node.output[i] = rename[n]

    keep = []
    for inp in g.input:
        new = rename.get(inp.name, inp.name)
        if new in CANONICAL_INPUTS:
            inp.name = new
            keep.append(inp)
    del g.input[:]
    g.input.extend(sorted(keep, key=lambda v: CANONICAL_INPUTS.index(v.name)))
    for inp in g.input:
        dims = inp.type.tensor_type.shape.dim
        dims[0].dim_param = "batch"
        if seq is None:
            dims[1].dim_param = "seq"
    g.output[0].name = LOGITS
    out_dims = g.output[0].type.tensor_type.shape.dim
    del out_dims[:]
    for d in ("batch", seq if seq is not None else "seq", 2):
        dim = out_dims.add()
        if isinstance(d, int):
            dim.dim_value = d
        else:
            dim.dim_param = d

    for name in names:
        g.initializer.append(numpy_helper.from_array(weights.pop(name), name))


def _fold(model: onnx.ModelProto) -> onnx.ModelProto:
    from bertrt.sanitize import sanitize

    return sanitize(model)


def check_feeds(batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """What TF and ONNX Runtime are compared on: questions and passages of at least a quarter of seq."""
    return random_feeds(batch, seq, vocab, seed=seed, min_length=seq // 4, segments="split")


def convert_checkpoint(checkpoint, out, config=None, seq: int | None = DEFAULT_SEQ, opset: int = 17,
                       check_batch: int = 2, log=print) -> ConvertReport:
    """Convert a Google-layout BERT SQuAD checkpoint to the canonical ONNX model at ``out``.

    ``seq=None`` leaves the sequence axis dynamic (checked at CHECK_SEQ tokens). The ONNX model is checked
    against TensorFlow on random inputs before it is moved into place; a mismatch leaves no file.
    """
    if opset < 17:
        raise BertrtError(f"opset {opset} is too old: bertrt writes opset 17 or newer")
    prefix = find_prefix(checkpoint)
    cfg_path = config_path_for(checkpoint, config)
    cfg = BertConfig.load(cfg_path)
    if seq is not None and not 1 <= seq <= cfg.max_position_embeddings:
        raise BertrtError(f"sequence length {seq} is outside 1..{cfg.max_position_embeddings} "
                          "(the model's max_position_embeddings)", cfg_path)
    log(f"reading {prefix} ({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
        f"{cfg.num_attention_heads} heads)")
    weights = read_weights(prefix, cfg)
    names = sorted(weights)
    report = ConvertReport(checkpoint=prefix, config=cfg, seq=seq, opset=opset)

    log(f"tracing the forward pass and converting with tf2onnx (opset {opset})")
    model, forward = _trace_and_convert(cfg, names, seq, opset)

    check_seq = seq or CHECK_SEQ
    feeds = check_feeds(check_batch, check_seq, cfg.vocab_size)
    log(f"running TensorFlow on {check_batch} random sequences of {check_seq} tokens")
    expected = _tf_logits(forward, feeds, weights, names)
    del forward
    gc.collect()

    _bind_canonical(model, weights, names, seq)
    del weights
    gc.collect()
    model = _fold(model)
    canonicalize(model, keep_names=lambda n: n.startswith(("bert/", "cls/")))
    model.producer_name = "bertrt"
    model.doc_string = f"BERT SQuAD from {Path(prefix).name}: {cfg.num_hidden_layers}L/{cfg.hidden_size}H"

    with atomic_path(out) as tmp:
        onnx.save_model(model, os.fspath(tmp))
        del model
        gc.collect()
        log("running ONNX Runtime on the same inputs")
        got = _ort_logits(tmp, feeds)
        report.max_abs_diff = float(np.max(np.abs(got - expected)))
        report.check_shape = got.shape
        if not np.isfinite(report.max_abs_diff) or report.max_abs_diff > CHECK_TOLERANCE:
            raise BertrtError(f"converted model disagrees with TensorFlow: max |TF - ONNX Runtime| = "
                              f"{report.max_abs_diff:.3g} > {CHECK_TOLERANCE}", checkpoint)
    return report


def _ort_logits(path, feeds) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
    out = sess.run([LOGITS], feeds)[0]
    del sess
    return out
