"""A Hugging Face ``BertForQuestionAnswering`` folder -> a checkpoint in Google's layout (as NGC ships them).

The folder holds ``config.json``, ``vocab.txt`` and the weights (``model.safetensors``, a sharded
``model.safetensors.index.json``, or ``pytorch_model.bin``). Names map onto Google's (``bert/encoder/layer_N/...``,
``cls/squad/output_{weights,bias}``); Linear weights ``[out, in]`` become TF kernels ``[in, out]``; every
weight is stored in float32 (an FP16 safetensors file is widened exactly). The result is what ``convert tf``
reads, so a Hugging Face model takes the same path as an NGC checkpoint.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertrt.atomic import atomic_dir
from bertrt.convert.checkpoint import CONFIG_NAME, VOCAB_NAME, BertConfig, required_shapes, variable_shapes, \
    write_checkpoint
from bertrt.errors import BertrtError
from bertrt.json_io import read_json

HF_CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TOKENIZER_CONFIG = "tokenizer_config.json"
# GELU as Google's BERT (and the TF forward pass bertrt converts) computes it: the exact, erf form.
SUPPORTED_ACT = "gelu"

_HF_TO_GOOGLE = [
    (r"embeddings\.word_embeddings\.weight", "bert/embeddings/word_embeddings", False),
    (r"embeddings\.position_embeddings\.weight", "bert/embeddings/position_embeddings", False),
    (r"embeddings\.token_type_embeddings\.weight", "bert/embeddings/token_type_embeddings", False),
    (r"embeddings\.LayerNorm\.weight", "bert/embeddings/LayerNorm/gamma", False),
    (r"embeddings\.LayerNorm\.bias", "bert/embeddings/LayerNorm/beta", False),
    (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.weight",
     r"bert/encoder/layer_\1/attention/self/\2/kernel", True),
    (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.bias", r"bert/encoder/layer_\1/attention/self/\2/bias", False),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.weight", r"bert/encoder/layer_\1/attention/output/dense/kernel", True),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.bias", r"bert/encoder/layer_\1/attention/output/dense/bias", False),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.weight", r"bert/encoder/layer_\1/attention/output/LayerNorm/gamma", False),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.bias", r"bert/encoder/layer_\1/attention/output/LayerNorm/beta", False),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.weight", r"bert/encoder/layer_\1/intermediate/dense/kernel", True),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.bias", r"bert/encoder/layer_\1/intermediate/dense/bias", False),
    (r"encoder\.layer\.(\d+)\.output\.dense\.weight", r"bert/encoder/layer_\1/output/dense/kernel", True),
    (r"encoder\.layer\.(\d+)\.output\.dense\.bias", r"bert/encoder/layer_\1/output/dense/bias", False),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.weight", r"bert/encoder/layer_\1/output/LayerNorm/gamma", False),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.bias", r"bert/encoder/layer_\1/output/LayerNorm/beta", False),
    (r"pooler\.dense\.weight", "bert/pooler/dense/kernel", True),
    (r"pooler\.dense\.bias", "bert/pooler/dense/bias", False),
    # BertForQuestionAnswering's head: Linear(hidden, 2), weight [2, hidden] as Google's output_weights.
    (r"qa_outputs\.weight", "cls/squad/output_weights", False),
    (r"qa_outputs\.bias", "cls/squad/output_bias", False),
]
# Tensors a BertForQuestionAnswering state dict carries that the QA forward pass does not read.
_IGNORED = re.compile(r"(bert\.)?embeddings\.position_ids")


def hf_to_google(tensors: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """(Google name -> float32 array, HF names that map to nothing) of Hugging Face BERT tensors."""
    out, unknown = {}, []
    for hf_name, value in tensors.items():
        key = hf_name.removeprefix("bert.")
        for pattern, repl, transpose in _HF_TO_GOOGLE:
            if re.fullmatch(pattern, key):
                v = np.asarray(value, dtype=np.float32)
                out[re.sub(pattern, repl, key)] = np.ascontiguousarray(v.T) if transpose else v
                break
        else:
            if not _IGNORED.fullmatch(hf_name):
                unknown.append(hf_name)
    return out, sorted(unknown)


@dataclass
class ImportReport:
    source: str
    config: BertConfig
    weights_file: str
    tensors: int  # variables written (the pooler among them when the source has one)


def read_config(folder: Path) -> BertConfig:
    """The BERT config of a Hugging Face folder, refused where Google's layout or bertrt cannot follow it."""
    path = folder / HF_CONFIG
    d = read_json(path, "Hugging Face config")
    if not isinstance(d, dict):
        raise BertrtError("not a Hugging Face config (expected a JSON object)", path)
    if d.get("model_type", "bert") != "bert":
        raise BertrtError(f"model_type is {d['model_type']!r}; only BERT (model_type 'bert') has Google's layout", path)
    arch = d.get("architectures") or []
    if arch and "BertForQuestionAnswering" not in arch:
        raise BertrtError(f"architectures is {arch}; a SQuAD checkpoint needs BertForQuestionAnswering", path)
    if d.get("position_embedding_type", "absolute") != "absolute":
        raise BertrtError(f"position_embedding_type {d['position_embedding_type']!r}: Google's BERT has absolute "
                          "position embeddings only", path)
    if d.get("hidden_act", SUPPORTED_ACT) != SUPPORTED_ACT:
        raise BertrtError(f"hidden_act {d['hidden_act']!r}: Google's BERT (and bertrt's TF forward pass) uses the "
                          f"exact GELU, {SUPPORTED_ACT!r}", path)
    cfg = BertConfig.from_dict(d, path)
    if cfg.layer_norm_eps != BertConfig.layer_norm_eps:
        raise BertrtError(f"layer_norm_eps {cfg.layer_norm_eps}: Google's layout has no place for it (its BERT uses "
                          f"{BertConfig.layer_norm_eps})", path)
    return cfg


def _check_tokenizer(folder: Path) -> Path:
    vocab = folder / VOCAB_NAME
    if not vocab.is_file():
        raise BertrtError(f"no {VOCAB_NAME} (the WordPiece vocabulary the model was trained with)", folder)
    tok = folder / TOKENIZER_CONFIG
    if tok.is_file():
        d = read_json(tok, "tokenizer config")
        if isinstance(d, dict) and d.get("do_lower_case") is False:
            raise BertrtError("do_lower_case is false: bertrt tokenizes uncased BERT (lower case) only", tok)
    return vocab


def read_weights(folder: Path) -> tuple[dict[str, np.ndarray], Path]:
    """HF name -> array from model.safetensors (or its shards) or pytorch_model.bin, and the file read."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    def safetensors(path):
        try:
            return load_file(path)
        except (SafetensorError, OSError) as e:
            raise BertrtError(f"cannot read safetensors: {e}", path) from None

    if (folder / SAFETENSORS).is_file():
        return safetensors(folder / SAFETENSORS), folder / SAFETENSORS
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        d = read_json(index, "safetensors index")
        weight_map = d.get("weight_map") if isinstance(d, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise BertrtError("no weight_map in the safetensors index", index)
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise BertrtError(f"the index names shard {shard}, which is not in the folder", index)
            tensors.update(safetensors(folder / shard))
        return tensors, index
    if (folder / TORCH_BIN).is_file():
        from bertrt.convert.torch_pickle import load_state_dict

        return load_state_dict(folder / TORCH_BIN), folder / TORCH_BIN
    raise BertrtError(f"no weights: expected {SAFETENSORS}, {SAFETENSORS_INDEX} or {TORCH_BIN}", folder)


def google_weights(cfg: BertConfig, tensors: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    """The Google-layout variables of a BertForQuestionAnswering state dict, each checked against the config."""
    weights, unknown = hf_to_google(tensors)
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise BertrtError(f"tensors that are not BertForQuestionAnswering's: {', '.join(unknown[:3])}{more}", path)
    shapes = variable_shapes(cfg)
    for name, shape in required_shapes(cfg).items():
        if name not in weights:
            what = " (the QA head, qa_outputs: is this a BertForQuestionAnswering?)" if name.startswith("cls/") else ""
            raise BertrtError(f"no tensor for {name}{what}", path)
    extra = sorted(set(weights) - set(shapes))
    if extra:
        raise BertrtError(f"{extra[0]} is beyond the config's {cfg.num_hidden_layers} layers", path)
    for name, w in weights.items():
        if tuple(w.shape) != shapes[name]:
            raise BertrtError(f"{name} has shape {list(w.shape)} but config.json says {list(shapes[name])}", path)
    return {k: weights[k] for k in sorted(weights)}


def import_hf(folder, out) -> ImportReport:
    """Write the Google-layout checkpoint folder ``out`` for the Hugging Face folder ``folder`` (atomically)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BertrtError("no such folder (expected a Hugging Face model folder with config.json)", folder)
    cfg = read_config(folder)
    vocab = _check_tokenizer(folder)
    lines = vocab.read_bytes().count(b"\n")
    if lines > cfg.vocab_size:
        raise BertrtError(f"{lines} tokens but the config's vocab_size is {cfg.vocab_size}", vocab)
    tensors, source = read_weights(folder)
    weights = google_weights(cfg, tensors, source)
    del tensors
    with atomic_dir(out) as tmp:
        write_checkpoint(tmp, weights)
        (tmp / CONFIG_NAME).write_text(cfg.to_google_json())
        shutil.copyfile(vocab, tmp / VOCAB_NAME)
    return ImportReport(str(folder), cfg, source.name, len(weights))
