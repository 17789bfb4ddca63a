"""`bertrt convert tf`: the canonical contract, agreement with TF and with an independent numpy BERT,
and bad inputs that fail with one clear line and no output."""

import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import numpy_bert
from bertrt.cli import cli
from bertrt.convert.checkpoint import BertConfig, find_prefix, read_weights, write_checkpoint
from bertrt.convert.tf_convert import check_feeds


def _ort(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]


def test_tiny_matches_tensorflow(tiny_converted):
    _, report = tiny_converted
    assert report.max_abs_diff <= 1e-5
    assert report.check_shape == (2, 128, 2)


def test_canonical_contract(tiny_onnx):
    m = onnx.load(tiny_onnx)
    ins = {i.name: i.type.tensor_type for i in m.graph.input}
    assert list(ins) == ["input_ids", "segment_ids", "input_mask"]
    for t in ins.values():
        assert t.elem_type == onnx.TensorProto.INT32
        assert [d.dim_param or d.dim_value for d in t.shape.dim] == ["batch", 128]
    (out,) = m.graph.output
    assert out.name == "logits" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 128, 2]
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert not [n for n in m.graph.node if n.op_type == "Identity"]


def test_tiny_matches_independent_numpy_bert(tiny_ckpt, tiny_onnx):
    cfg = BertConfig.load(tiny_ckpt / "bert_config.json")
    w = read_weights(find_prefix(tiny_ckpt), cfg)
    feeds = check_feeds(3, 128, cfg.vocab_size, seed=7)
    expected = numpy_bert.squad_logits(w, cfg.num_attention_heads, **feeds)
    got = _ort(tiny_onnx, feeds)
    assert np.abs(got - expected).max() <= 1e-4
    # the mask matters: changing a padded token must not move the valid positions' logits
    n = int(feeds["input_mask"][0].sum())
    if n < 128:
        feeds2 = {k: v.copy() for k, v in feeds.items()}
        feeds2["input_ids"][0, n:] = 5
        got2 = _ort(tiny_onnx, feeds2)
        np.testing.assert_allclose(got2[0, :n], got[0, :n], atol=1e-5)


@pytest.mark.slow
def test_minilm_on_real_sentences(minilm_ckpt, minilm_converted):
    from tokenizers import BertWordPieceTokenizer

    from bertrt.convert.tf_bert import squad_logits
    from bertrt.convert.tf_env import tf

    path, report = minilm_converted
    assert report.max_abs_diff <= 1e-5
    tok = BertWordPieceTokenizer(str(minilm_ckpt / "vocab.txt"), lowercase=True)
    pairs = [("Who wrote the report?", "The report was written by the committee in March."),
             ("Where is the lighthouse?", "An old lighthouse stands on the northern cliffs above the harbour.")]
    ids = np.zeros((2, 128), np.int32)
    seg = np.zeros((2, 128), np.int32)
    mask = np.zeros((2, 128), np.int32)
    for b, (q, p) in enumerate(pairs):
        enc = tok.encode(q, p)
        n = len(enc.ids)
        ids[b, :n], seg[b, :n], mask[b, :n] = enc.ids, enc.type_ids, 1
    cfg = BertConfig.load(minilm_ckpt / "bert_config.json")
    w = {k: tf.constant(v) for k, v in read_weights(find_prefix(minilm_ckpt), cfg).items()}
    expected = squad_logits(tf.constant(ids), tf.constant(seg), tf.constant(mask), w, cfg).numpy()
    got = _ort(path, {"input_ids": ids, "segment_ids": seg, "input_mask": mask})
    assert np.abs(got - expected).max() <= 1e-5


def test_dynamic_seq(tiny_ckpt, tmp_path):
    out = tmp_path / "dyn.onnx"
    r = CliRunner().invoke(cli, ["convert", "tf", "-c", str(tiny_ckpt), "--dynamic-seq", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "max |TF - ONNX Runtime|" in r.output
    dims = [d.dim_param or d.dim_value for d in onnx.load(out).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "seq"]
    for s in (16, 200):
        assert _ort(out, check_feeds(1, s, 30522)).shape == (1, s, 2)


@pytest.mark.slow
def test_same_input_same_bytes(tiny_ckpt, tmp_path):
    outs = []
    for i in range(2):  # separate processes, as a user runs the command
        out = tmp_path / f"m{i}.onnx"
        subprocess.run([sys.executable, "-m", "bertrt.cli", "convert", "tf", "-c", str(tiny_ckpt), "-s", "64",
                        "-o", str(out)], check=True, capture_output=True)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


# --- bad input: one line naming the file and the problem, exit 1, no output ---------------------------

def _run_bad(args, out):
    r = CliRunner().invoke(cli, ["convert", "tf", *args, "-o", str(out)])
    assert r.exit_code == 1, r.output
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*")), "a temporary file was left behind"
    err = r.output.strip().splitlines()[-1]
    assert err.startswith("Error: ")
    return err


def _copy_without(tiny_ckpt, dst, drop=None, config_edit=None):
    shutil.copytree(tiny_ckpt, dst)
    if drop:
        from bertrt.convert.tf_env import tf

        reader = tf.train.load_checkpoint(find_prefix(dst))
        weights = {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map() if n != drop}
        for p in dst.glob("bert_model.ckpt.*"):
            p.unlink()
        write_checkpoint(dst, weights)
    if config_edit:
        text = (dst / "bert_config.json").read_text()
        (dst / "bert_config.json").write_text(text.replace(*config_edit))
    return dst


def test_missing_checkpoint(tmp_path):
    err = _run_bad(["-c", str(tmp_path / "nowhere")], tmp_path / "m.onnx")
    assert str(tmp_path / "nowhere") in err and "no such TF checkpoint" in err


def test_missing_variable_is_named(tiny_ckpt, tmp_path):
    name = "bert/encoder/layer_1/attention/self/key/kernel"
    ckpt = _copy_without(tiny_ckpt, tmp_path / "ck", drop=name)
    err = _run_bad(["-c", str(ckpt)], tmp_path / "m.onnx")
    assert f"checkpoint has no variable {name}" in err and "bert_model.ckpt" in err


def test_config_disagreeing_with_shapes(tiny_ckpt, tmp_path):
    ckpt = _copy_without(tiny_ckpt, tmp_path / "ck", config_edit=('"intermediate_size": 512', '"intermediate_size": 1024'))
    err = _run_bad(["-c", str(ckpt)], tmp_path / "m.onnx")
    assert "bert/encoder/layer_0/intermediate/dense/kernel has shape [128, 512] but the config says [128, 1024]" in err


@pytest.mark.parametrize("layers, problem", [
    ("1", "the checkpoint has 2 encoder layers but the config says num_hidden_layers 1"),  # wrote a 1-layer model
    ("3", "the checkpoint has 2 encoder layers but the config says num_hidden_layers 3"),
    ("-2", "num_hidden_layers is -2, expected a positive integer"),  # wrote a model with no encoder
    ("0", "num_hidden_layers is 0, expected a positive integer"),
    ('"2"', 'num_hidden_layers is "2", expected a positive integer'),
])
def test_config_and_checkpoint_must_agree_on_the_layers(tiny_ckpt, tmp_path, layers, problem):
    ckpt = _copy_without(tiny_ckpt, tmp_path / "ck", config_edit=('"num_hidden_layers": 2',
                                                                  f'"num_hidden_layers": {layers}'))
    err = _run_bad(["-c", str(ckpt)], tmp_path / "m.onnx")
    assert problem in err


def test_missing_config(tiny_ckpt, tmp_path):
    ckpt = _copy_without(tiny_ckpt, tmp_path / "ck")
    (ckpt / "bert_config.json").unlink()
    err = _run_bad(["-c", str(ckpt)], tmp_path / "m.onnx")
    assert "bert_config.json: no such file" in err


def test_truncated_checkpoint_data(tiny_ckpt, tmp_path):
    ckpt = _copy_without(tiny_ckpt, tmp_path / "ck")
    data = next(ckpt.glob("*.data-*"))
    data.write_bytes(data.read_bytes()[:1000])
    err = _run_bad(["-c", str(ckpt)], tmp_path / "m.onnx")
    assert "damaged or truncated" in err


def test_seq_beyond_positions(tiny_ckpt, tmp_path):
    err = _run_bad(["-c", str(tiny_ckpt), "-s", "1024"], tmp_path / "m.onnx")
    assert "sequence length 1024" in err and "max_position_embeddings" in err
