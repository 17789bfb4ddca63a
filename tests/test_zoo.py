"""The model zoo writes Google-layout BERT checkpoints, deterministically, with real minilm weights."""

import hashlib
import json

import numpy as np
from click.testing import CliRunner

from bertrt.cli import cli
from bertrt.convert import zoo
from bertrt.convert.checkpoint import BertConfig, find_prefix, variable_shapes


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _reader(folder):
    from bertrt.convert.tf_env import tf

    return tf.train.load_checkpoint(find_prefix(folder))


def test_same_seed_same_bytes(tiny_ckpt, tmp_path):
    again = zoo.make("tiny", tmp_path / "again")
    assert _digest(again) == _digest(tiny_ckpt)


def test_layout_is_googles(tiny_ckpt):
    cfg = BertConfig.load(tiny_ckpt / "bert_config.json")
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (2, 128, 2)
    shapes = {k: tuple(v) for k, v in _reader(tiny_ckpt).get_variable_to_shape_map().items()}
    assert shapes == variable_shapes(cfg)
    assert shapes["cls/squad/output_weights"] == (2, 128)
    assert shapes["cls/squad/output_bias"] == (2,)
    assert shapes["bert/encoder/layer_1/intermediate/dense/kernel"] == (128, 512)
    vocab = (tiny_ckpt / "vocab.txt").read_text().splitlines()
    assert len(vocab) == 30522 and vocab[100:103] == ["[UNK]", "[CLS]", "[SEP]"]


def test_config_matches_configs_folder(tmp_path):
    from bertrt import config

    for name in ("base", "large"):
        spec = config.model(name)
        cfg = zoo.bert_config(name)
        assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (
            spec["num_hidden_layers"], spec["hidden_size"], spec["num_attention_heads"])
    assert (zoo.bert_config("large").num_hidden_layers, zoo.bert_config("large").hidden_size) == (24, 1024)


def test_minilm_carries_the_real_weights(minilm_ckpt):
    from safetensors.numpy import load_file

    hf = load_file(zoo.minilm_dir() / "model.safetensors")
    r = _reader(minilm_ckpt)
    np.testing.assert_array_equal(r.get_tensor("bert/encoder/layer_3/attention/self/query/kernel"),
                                  hf["encoder.layer.3.attention.self.query.weight"].T)
    np.testing.assert_array_equal(r.get_tensor("bert/encoder/layer_5/output/LayerNorm/gamma"),
                                  hf["encoder.layer.5.output.LayerNorm.weight"])
    np.testing.assert_array_equal(r.get_tensor("bert/embeddings/word_embeddings"),
                                  hf["embeddings.word_embeddings.weight"])
    cfg = json.loads((minilm_ckpt / "bert_config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"]) == (6, 384, 12)
    assert (minilm_ckpt / "vocab.txt").read_bytes() == (zoo.minilm_dir() / "vocab.txt").read_bytes()


def test_list_says_where_weights_come_from():
    result = CliRunner().invoke(cli, ["zoo", "list"])
    assert result.exit_code == 0
    line = next(l for l in result.output.splitlines() if l.startswith("minilm"))
    assert "real weights" in line and "QA head seeded random" in line
    assert "seeded random" in next(l for l in result.output.splitlines() if l.startswith("large"))


def test_unknown_model_is_refused(tmp_path):
    result = CliRunner().invoke(cli, ["zoo", "make", "huge", "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "huge" in result.output
    assert not (tmp_path / "x").exists()
