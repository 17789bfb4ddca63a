"""`bertrt zoo import-hf`: a Hugging Face BertForQuestionAnswering folder -> Google's layout -> `convert tf`,
checked against PyTorch's own logits; the torch-free reader of pytorch_model.bin against torch.load."""

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from bertrt.cli import cli
from bertrt.convert.hf_import import import_hf
from bertrt.convert.torch_pickle import load_state_dict
from bertrt.errors import BertrtError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(59)]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny seeded BertForQuestionAnswering saved as Hugging Face does (safetensors, config.json, vocab.txt)."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=96, max_position_embeddings=40)
    model = transformers.BertForQuestionAnswering(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape))  # LayerNorm (1, 0) and zero biases would hide a mix-up
    folder = tmp_path_factory.mktemp("hf") / "tiny-qa"
    model.save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return folder, model


def torch_logits(model, feeds):
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(feeds["input_ids"]).long(),
                    token_type_ids=torch.from_numpy(feeds["segment_ids"]).long(),
                    attention_mask=torch.from_numpy(feeds["input_mask"]).long())
    return np.stack([out.start_logits.numpy(), out.end_logits.numpy()], -1)


def test_import_then_convert_tf_gives_pytorchs_logits(hf_folder, tmp_path):
    folder, model = hf_folder
    ckpt, onnx_path = tmp_path / "ckpt", tmp_path / "model.onnx"
    r = CliRunner().invoke(cli, ["zoo", "import-hf", str(folder), "-o", str(ckpt)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in ckpt.iterdir()) == ["bert_config.json", "bert_model.ckpt.data-00000-of-00001",
                                                       "bert_model.ckpt.index", "checkpoint", "vocab.txt"]
    assert json.loads((ckpt / "bert_config.json").read_text())["num_attention_heads"] == 2
    r = CliRunner().invoke(cli, ["convert", "tf", "--checkpoint", str(ckpt), "--seq", "32", "-o", str(onnx_path)])
    assert r.exit_code == 0, r.output
    rng = np.random.default_rng(0)
    mask = (np.arange(32)[None] < np.array([[32], [20], [9]])).astype(np.int32)
    feeds = {"input_ids": rng.integers(0, len(VOCAB), (3, 32), dtype=np.int32) * mask,
             "segment_ids": ((np.arange(32)[None] >= 6) * mask).astype(np.int32), "input_mask": mask}
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
    want = torch_logits(model, feeds)
    valid = mask[..., None] == 1
    np.testing.assert_allclose(got * valid, want * valid, atol=2e-5)


def test_pytorch_bin_reads_as_the_safetensors_file(hf_folder, tmp_path):
    folder, model = hf_folder
    binary = tmp_path / "bin"
    binary.mkdir()
    shutil.copy(folder / "config.json", binary)
    shutil.copy(folder / "vocab.txt", binary)
    torch.save(model.state_dict(), binary / "pytorch_model.bin")
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
                                  model.bert.encoder.layer[1].intermediate.dense.weight.detach().numpy().T)


def test_torch_pickle_reader_matches_torch_load(tmp_path):
    g = torch.Generator().manual_seed(0)
    state = {"f32": torch.randn(3, 5, generator=g), "f16": torch.randn(4, generator=g).half(),
             "bf16": torch.randn(2, 3, generator=g).bfloat16(), "i64": torch.arange(6).reshape(2, 3),
             "transposed": torch.randn(4, 6, generator=g).t(), "view": torch.randn(10, generator=g)[2:8]}
    path = tmp_path / "state.bin"
    torch.save(state, path)
    got = load_state_dict(path)
    assert got.keys() == state.keys()
    for k, t in state.items():
        want = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
        assert got[k].dtype == want.dtype and got[k].shape == want.shape, k
        np.testing.assert_array_equal(got[k], want)


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.bin"
    torch.save({"w": torch.zeros(2), "f": print}, path)
    with pytest.raises(BertrtError, match=r"print object.*refusing"):
        load_state_dict(path)


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
    shutil.copytree(hf_folder[0], src)
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
