"""Google's BERT checkpoint layout (as NGC's SQuAD checkpoints use it): names, shapes, reading, writing.

A checkpoint folder holds ``bert_config.json``, ``vocab.txt`` and a TF checkpoint bundle
(``<prefix>.index`` + ``<prefix>.data-*``) whose variables are named ``bert/embeddings/...``,
``bert/encoder/layer_N/...`` and ``cls/squad/output_{weights,bias}``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertrt.errors import BertrtError

CONFIG_NAME = "bert_config.json"
VOCAB_NAME = "vocab.txt"
CKPT_PREFIX = "bert_model.ckpt"


@dataclass(frozen=True)
class BertConfig:
    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    intermediate_size: int
    vocab_size: int
    type_vocab_size: int = 2
    max_position_embeddings: int = 512
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: dict, path=None) -> "BertConfig":
        keys = ["num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size"]
        missing = [k for k in keys if k not in d]
        if missing:
            raise BertrtError(f"BERT config lacks {', '.join(missing)}", path)
        for k in keys + ["type_vocab_size", "max_position_embeddings"]:
            if k in d and (isinstance(d[k], bool) or not isinstance(d[k], int) or d[k] < 1):
                raise BertrtError(f"BERT config's {k} is {json.dumps(d[k])}, expected a positive integer", path)
        cfg = cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        if cfg.hidden_size % cfg.num_attention_heads:
            raise BertrtError(f"hidden_size {cfg.hidden_size} is not divisible by "
                              f"num_attention_heads {cfg.num_attention_heads}", path)
        return cfg

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BertConfig":
        path = Path(path)
        if not path.is_file():
            raise BertrtError("no such file", path)
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BertrtError(f"not a JSON BERT config: {e}", path)
        return cls.from_dict(d, path)

    def to_google_json(self) -> str:
        d = {
            "attention_probs_dropout_prob": 0.1,
            "hidden_act": self.hidden_act,
            "hidden_dropout_prob": 0.1,
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "type_vocab_size": self.type_vocab_size,
            "vocab_size": self.vocab_size,
        }
        return json.dumps(d, indent=2, sort_keys=True) + "\n"


def variable_shapes(cfg: BertConfig, with_pooler: bool = True) -> dict[str, tuple[int, ...]]:
    """Every variable a BERT SQuAD checkpoint holds, with its shape (TF kernels are [in, out])."""
    E, I = cfg.hidden_size, cfg.intermediate_size
    shapes = {
        "bert/embeddings/word_embeddings": (cfg.vocab_size, E),
        "bert/embeddings/token_type_embeddings": (cfg.type_vocab_size, E),
        "bert/embeddings/position_embeddings": (cfg.max_position_embeddings, E),
        "bert/embeddings/LayerNorm/gamma": (E,),
        "bert/embeddings/LayerNorm/beta": (E,),
    }
    for i in range(cfg.num_hidden_layers):
        p = f"bert/encoder/layer_{i}/"
        for m in ("query", "key", "value"):
            shapes[p + f"attention/self/{m}/kernel"] = (E, E)
            shapes[p + f"attention/self/{m}/bias"] = (E,)
        shapes[p + "attention/output/dense/kernel"] = (E, E)
        shapes[p + "attention/output/dense/bias"] = (E,)
        shapes[p + "attention/output/LayerNorm/gamma"] = (E,)
        shapes[p + "attention/output/LayerNorm/beta"] = (E,)
        shapes[p + "intermediate/dense/kernel"] = (E, I)
        shapes[p + "intermediate/dense/bias"] = (I,)
        shapes[p + "output/dense/kernel"] = (I, E)
        shapes[p + "output/dense/bias"] = (E,)
        shapes[p + "output/LayerNorm/gamma"] = (E,)
        shapes[p + "output/LayerNorm/beta"] = (E,)
    if with_pooler:
        shapes["bert/pooler/dense/kernel"] = (E, E)
        shapes["bert/pooler/dense/bias"] = (E,)
    shapes["cls/squad/output_weights"] = (2, E)
    shapes["cls/squad/output_bias"] = (2,)
    return shapes


def required_shapes(cfg: BertConfig) -> dict[str, tuple[int, ...]]:
    """The variables the QA forward pass reads (the pooler is not one of them)."""
    return variable_shapes(cfg, with_pooler=False)


def find_prefix(path: str | os.PathLike) -> str:
    """A checkpoint prefix from a folder, a prefix, or a ``.index`` / ``.data-*`` file."""
    path = Path(path)
    if path.is_dir():
        from bertrt.convert.tf_env import tf

        latest = tf.train.latest_checkpoint(os.fspath(path))
        if latest:
            return latest
        indexes = sorted(path.glob("*.index"))
        if len(indexes) == 1:
            return os.fspath(indexes[0])[: -len(".index")]
        if not indexes:
            raise BertrtError("no TF checkpoint in this folder (no *.index file)", path)
        raise BertrtError(f"several checkpoints in this folder ({', '.join(p.name for p in indexes)}); "
                          "name one prefix", path)
    s = os.fspath(path)
    for suffix in (".index", ".meta"):
        if s.endswith(suffix):
            s = s[: -len(suffix)]
    if ".data-" in s:
        s = s[: s.index(".data-")]
    if not Path(s + ".index").is_file():
        raise BertrtError("no such TF checkpoint (expected a folder or a prefix with a .index file)", path)
    return s


def config_path_for(ckpt: str | os.PathLike, explicit: str | os.PathLike | None) -> Path:
    if explicit is not None:
        return Path(explicit)
    p = Path(ckpt)
    folder = p if p.is_dir() else p.parent
    return folder / CONFIG_NAME


def read_weights(prefix: str, cfg: BertConfig) -> dict[str, np.ndarray]:
    """Read and check the variables the forward pass needs. Names the first missing or misshapen one."""
    from bertrt.convert.tf_env import tf

    try:
        reader = tf.train.load_checkpoint(prefix)
    except Exception as e:  # TF raises several types for a damaged bundle
        raise BertrtError(f"cannot read TF checkpoint: {str(e).splitlines()[0]}", prefix)
    have = reader.get_variable_to_shape_map()
    # The config and the weights must agree exactly: a config of fewer layers would leave the rest unread.
    layers = {int(m[1]) for m in (re.match(r"bert/encoder/layer_(\d+)/", n) for n in have) if m}
    if layers and len(layers) != cfg.num_hidden_layers:
        raise BertrtError(f"the checkpoint has {len(layers)} encoder layers but the config says num_hidden_layers "
                          f"{cfg.num_hidden_layers}", prefix)
    weights = {}
    for name, shape in required_shapes(cfg).items():
        if name not in have:
            raise BertrtError(f"checkpoint has no variable {name}", prefix)
        if tuple(have[name]) != shape:
            raise BertrtError(f"variable {name} has shape {list(have[name])} but the config says {list(shape)}",
                              prefix)
        try:
            weights[name] = np.asarray(reader.get_tensor(name), dtype=np.float32)
        except Exception as e:  # a truncated or damaged .data file fails only when read
            raise BertrtError(f"cannot read variable {name} (damaged or truncated checkpoint data): "
                              f"{str(e).splitlines()[0]}", prefix)
    return weights


def write_checkpoint(folder: Path, weights: dict[str, np.ndarray]) -> None:
    """Write a TF checkpoint bundle (``bert_model.ckpt.*`` + ``checkpoint``) with exactly these names."""
    from bertrt.convert.tf_env import tf

    names = sorted(weights)
    prefix = os.fspath(folder / CKPT_PREFIX)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(weights[n]) for n in names])
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "{CKPT_PREFIX}"\n'
                                       f'all_model_checkpoint_paths: "{CKPT_PREFIX}"\n')
