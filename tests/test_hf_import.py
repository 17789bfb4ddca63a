"""`bertrt zoo import-hf`: a Hugging Face BertForQuestionAnswering folder -> Google's layout -> `convert tf`,
checked against PyTorch's own logits; the torch-free reader of pytorch_model.bin against torch.load. The folder,
PyTorch's logits and the torch.save files are fixtures (tests/fixtures/make_hf_folder.py), so no torch is needed."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from bertrt.cli import cli
from bertrt.convert.hf_import import import_hf
from bertrt.convert.torch_pickle import load_state_dict
from bertrt.errors import BertrtError

FIXTURES = Path(__file__).parent / "fixtures"
FOLDER = FIXTURES / "hf_tiny_qa"


@pytest.fixture()
def hf_folder(tmp_path):
    """The fixture folder as save_pretrained wrote it (safetensors, config.json, vocab.txt), without the .bin."""
    folder = tmp_path / "tiny-qa"
    shutil.copytree(FOLDER, folder, ignore=shutil.ignore_patterns("pytorch_model.bin"))
    return folder


def test_import_then_convert_tf_gives_pytorchs_logits(hf_folder, tmp_path):
    folder = hf_folder
    ckpt, onnx_path = tmp_path / "ckpt", tmp_path / "model.onnx"
    r = CliRunner().invoke(cli, ["zoo", "import-hf", str(folder), "-o", str(ckpt)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in ckpt.iterdir()) == ["bert_config.json", "bert_model.ckpt.data-00000-of-00001",
                                                       "bert_model.ckpt.index", "checkpoint", "vocab.txt"]
    assert json.loads((ckpt / "bert_config.json").read_text())["num_attention_heads"] == 2
    r = CliRunner().invoke(cli, ["convert", "tf", "--checkpoint", str(ckpt), "--seq", "32", "-o", str(onnx_path)])
    assert r.exit_code == 0, r.output
    expected = np.load(FIXTURES / "hf_tiny_qa.expected.npz")
    feeds = {name: expected[name] for name in ("input_ids", "segment_ids", "input_mask")}
    mask = feeds["input_mask"]
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
    want = expected["logits"]  # PyTorch's, computed when the fixture was made
    valid = mask[..., None] == 1
    np.testing.assert_allclose(got * valid, want * valid, atol=2e-5)


def test_pytorch_bin_reads_as_the_safetensors_file(hf_folder, tmp_path):
    from safetensors.numpy import load_file

    folder = hf_folder
    binary = tmp_path / "bin"
    binary.mkdir()
    for name in ("config.json", "vocab.txt", "pytorch_model.bin"):
        shutil.copy(FOLDER / name, binary)
    from bertrt.convert.tf_env import tf

    assert import_hf(binary, tmp_path / "b").weights_file == "pytorch_model.bin"
    import_hf(folder, tmp_path / "a")
    readers = [tf.train.load_checkpoint(str(tmp_path / name)) for name in "ab"]
    names = readers[0].get_variable_to_shape_map()
    assert names.keys() == readers[1].get_variable_to_shape_map().keys()
    assert "cls/squad/output_weights" in names
    for n in names:
        np.testing.assert_array_equal(readers[0].get_tensor(n), readers[1].get_tensor(n))
    # kernels are Linear weights transposed
    np.testing.assert_array_equal(readers[0].get_tensor("bert/encoder/layer_1/intermediate/dense/kernel"),
                                  load_file(folder / "model.safetensors")["bert.encoder.layer.1.intermediate.dense.weight"].T)


def test_torch_pickle_reader_matches_torch_load():
    got = load_state_dict(FIXTURES / "torch_pickle_cases.bin")
    want = np.load(FIXTURES / "torch_pickle_cases.npz")  # torch's own tensors as numpy, when the fixture was made
    assert sorted(got) == sorted(want.files) == ["bf16", "f16", "f32", "i64", "transposed", "view"]
    for k in want.files:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        np.testing.assert_array_equal(got[k], want[k])


def test_pickle_with_code_is_refused():
    with pytest.raises(BertrtError, match=r"print object.*refusing"):
        load_state_dict(FIXTURES / "torch_pickle_code.bin")


@pytest.mark.parametrize("change, message", [
    (lambda f: (f / "config.json").unlink(), "Hugging Face config not found"),
    (lambda f: _edit_config(f, model_type="roberta"), "only BERT"),
    (lambda f: _edit_config(f, hidden_act="gelu_new"), "exact GELU"),
    (lambda f: (f / "vocab.txt").unlink(), "no vocab.txt"),
    (lambda f: (f / "model.safetensors").write_bytes(b"nonsense"), "cannot read safetensors"),
    (lambda f: _drop_head(f), "qa_outputs"),
])
def test_bad_folder_is_one_line_and_writes_nothing(hf_folder, tmp_path, change, message):
    src = tmp_path / "src"
    shutil.copytree(hf_folder, src)
    change(src)
    out = tmp_path / "ckpt"
    r = CliRunner().invoke(cli, ["zoo", "import-hf", str(src), "-o", str(out)])
    assert r.exit_code == 1 and message in r.output, r.output
    assert "Traceback" not in r.output
    assert not out.exists()


def _edit_config(folder, **changes):
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _drop_head(folder):
    from safetensors.numpy import load_file, save_file

    tensors = {k: v for k, v in load_file(folder / "model.safetensors").items() if not k.startswith("qa_outputs")}
    save_file(tensors, folder / "model.safetensors")
