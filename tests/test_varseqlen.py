"""Variable sequence length: the pack-varseqlen pass, runtime packing, `compare` on packed graphs, the limits.

The packed graph runs on the CPU reference (var-seqlen plugins, FP16 simulated); the padded original runs on
ONNX Runtime. Every sequence of a batch must get the same logits at its real tokens.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from bertrt.cli import cli
from bertrt.errors import BertrtError
from bertrt.plugins.nodes import EMB_LAYER_NORM, QKV_TO_CONTEXT, SKIP_LAYER_NORM, read_attrs
from bertrt.plugins.runner import ReferenceRunner
from bertrt.run.packing import MAX_SEQLEN, NO_LOGIT, TokenCount, model_max_length, pack_varseqlen, unpack_varseqlen

FP16_TOL = 2e-2
LENGTHS = np.linspace(17, 384, 8).astype(int)  # [17, 69, 121, 174, 226, 279, 331, 384]
VOCAB = 30522


def padded_batch(lengths, S, seed=0, vocab=VOCAB):
    rng = np.random.default_rng(seed)
    B = len(lengths)
    mask = (np.arange(S)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    return {"input_ids": rng.integers(0, vocab, (B, S)).astype(np.int32),
            "segment_ids": (np.arange(S)[None, :] >= np.asarray(lengths)[:, None] // 3).astype(np.int32) * mask,
            "input_mask": mask}


def surgery(src, out, *args):
    res = CliRunner().invoke(cli, ["surgery", "run", str(src), "-o", str(out), *args])
    return res


def ort_logits(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], feeds)[0]


def packed_logits(path_or_runner, feeds):
    runner = path_or_runner if isinstance(path_or_runner, ReferenceRunner) else ReferenceRunner(path_or_runner)
    return unpack_varseqlen(runner.run(pack_varseqlen(feeds))["logits"], feeds["input_mask"])


@pytest.fixture(scope="module")
def tiny384(tiny_ckpt, tmp_path_factory):
    """The canonical tiny model at sequence 384, so sequences of every length the plugins take fit."""
    from bertrt.convert.tf_convert import convert_checkpoint

    out = tmp_path_factory.mktemp("varseqlen") / "tiny-384.onnx"
    convert_checkpoint(tiny_ckpt, out, seq=384, log=lambda _m: None)
    return out


@pytest.fixture(scope="module")
def tiny_packed(tiny384, tmp_path_factory):
    """target -> the tiny model packed by `bertrt surgery run --varseqlen`."""
    d = tmp_path_factory.mktemp("packed")
    out = {}
    for target in ("trt10", "trt10-legacy", "trt11"):
        out[target] = d / f"tiny-{target}.onnx"
        res = surgery(tiny384, out[target], "--target", target, "--varseqlen")
        assert res.exit_code == 0, res.output
    return out


# ---------------------------------------------------------------- the packed graph


@pytest.mark.parametrize("target", ["trt10", "trt10-legacy", "trt11"])
def test_packed_graph_follows_the_varseqlen_contract(tiny_packed, target):
    from bertrt import config
    from bertrt.surgery.pipeline import summarize

    m = onnx.load(tiny_packed[target])
    ins = {vi.name: vi.type.tensor_type for vi in m.graph.input}
    assert list(ins) == ["input_ids", "segment_ids", "cu_seqlens", "max_seqlen"]  # input_mask is gone
    assert all(t.elem_type == onnx.TensorProto.INT32 and len(t.shape.dim) == 1 for t in ins.values())
    (out,) = m.graph.output
    assert out.name == "logits" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["total_tokens", 2]
    want = config.target(target)["plugins"]["varseqlen"]
    counts, leftover, problems = summarize(m)
    assert counts == {f"{EMB_LAYER_NORM} v{want['emb_layernorm']}": 1, f"{QKV_TO_CONTEXT} v{want['qkv_to_context']}": 2,
                      f"{SKIP_LAYER_NORM} v{want['skip_layernorm']}": 4}
    assert not leftover and not problems
    emb = next(n for n in m.graph.node if n.op_type == EMB_LAYER_NORM)
    assert list(emb.input) == ["input_ids", "segment_ids", "cu_seqlens", "max_seqlen"]
    assert read_attrs(emb)["output_fp16"].value == 1 and "mha_type_id" not in read_attrs(emb)
    for n in m.graph.node:
        a = read_attrs(n)
        if n.op_type == QKV_TO_CONTEXT:
            assert {k: a[k].value for k in ("type_id", "has_mask", "var_seqlen")} == {"type_id": 1, "has_mask": 1,
                                                                                      "var_seqlen": 1}
            assert list(n.input[1:]) == [emb.output[1], "cu_seqlens", "max_seqlen"]
        if n.op_type == SKIP_LAYER_NORM:
            assert a["type_id"].value == 1 and "ld" not in a
    assert not any(n.op_type == "Transpose" for n in m.graph.node)  # a packed token list has no S/B order
    assert model_max_length(m) == 384


def test_trt11_packed_graph_is_float16_between_plugins(tiny_packed):
    m = onnx.load(tiny_packed["trt11"])
    types = {vi.name: vi.type.tensor_type.elem_type for vi in m.graph.value_info}
    plugins = [n for n in m.graph.node if n.op_type in (QKV_TO_CONTEXT, SKIP_LAYER_NORM)]
    plugin_io = [t for n in plugins for t in (n.input[0], n.output[0])]
    assert plugin_io and all(types[t] == onnx.TensorProto.FLOAT16 for t in plugin_io)
    assert [n.op_type for n in m.graph.node if "logits" in n.output] == ["Cast"]  # float16 -> float32 at the end


@pytest.mark.parametrize("target", ["trt10", "trt10-legacy", "trt11"])
def test_tiny_packed_equals_padded_for_every_sequence(tiny384, tiny_packed, target, capsys):
    feeds = padded_batch(LENGTHS, 384)
    want = ort_logits(tiny384, feeds)
    got = packed_logits(tiny_packed[target], feeds)
    for b, n in enumerate(LENGTHS):
        err = np.abs(got[b, :n] - want[b, :n]).max()
        assert err < FP16_TOL, f"sequence {b} (length {n}): max abs {err}"
        assert not got[b, n:].any()  # padding comes back as zeros
    # FP16 is really simulated: the packed logits are not bit-equal to the FP32 ones
    assert np.abs(got - want)[feeds["input_mask"] == 1].max() > 1e-5
    with capsys.disabled():
        print(f"\n[{target}] tiny, lengths {LENGTHS.tolist()}: {TokenCount.of(feeds['input_mask']).describe()}")


def test_no_token_attends_outside_its_sequence(tiny_packed):
    feeds = padded_batch(LENGTHS, 384, seed=1)
    runner = ReferenceRunner(tiny_packed["trt10"])
    before = packed_logits(runner, feeds)
    changed = {k: v.copy() for k, v in feeds.items()}
    changed["input_ids"][3, :LENGTHS[3]] = np.random.default_rng(9).integers(0, VOCAB, LENGTHS[3])
    after = packed_logits(runner, changed)
    others = [b for b in range(len(LENGTHS)) if b != 3]
    np.testing.assert_array_equal(after[others], before[others])  # exactly: nothing crosses sequences
    assert np.abs(after[3, :LENGTHS[3]] - before[3, :LENGTHS[3]]).max() > 1e-2  # the change did reach sequence 3


def test_pass_alone_sets_fp16_on_an_fp32_fused_graph(tiny384, tmp_path):
    fused, packed = tmp_path / "fused.onnx", tmp_path / "packed.onnx"
    assert surgery(tiny384, fused, "--target", "trt11", "--precision", "fp32").exit_code == 0
    res = CliRunner().invoke(cli, ["surgery", "pass", "pack-varseqlen", str(fused), "-o", str(packed), "-t", "trt11"])
    assert res.exit_code == 0, res.output
    assert "set FP16: the var-seqlen plugins have no FP32 mode" in res.output
    m = onnx.load(packed)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in m.graph.value_info}
    qkv = next(n for n in m.graph.node if n.op_type == QKV_TO_CONTEXT)
    assert types[qkv.input[0]] == onnx.TensorProto.FLOAT16 and read_attrs(qkv)["type_id"].value == 1
    feeds = padded_batch([5, 40, 120], 384, seed=4)
    want = ort_logits(tiny384, feeds)
    got = packed_logits(packed, feeds)
    for b, n in enumerate([5, 40, 120]):
        assert np.abs(got[b, :n] - want[b, :n]).max() < FP16_TOL


def test_head_size_32_mask_path_is_dropped(tmp_path):
    """Head size 32 at FP16 fuses to QKV 2/5 (var_seqlen=0) with a ReduceSum mask; packing drops that path."""
    h32 = _checkpoint_model(tmp_path, heads=4, seq=64)
    packed = tmp_path / "h32-packed.onnx"
    res = surgery(h32, packed, "--varseqlen")
    assert res.exit_code == 0, res.output
    m = onnx.load(packed)
    assert not any(n.op_type == "ReduceSum" for n in m.graph.node)
    feeds = padded_batch([1, 33, 64], 64, seed=5, vocab=1000)
    want, got = ort_logits(h32, feeds), packed_logits(packed, feeds)
    for b, n in enumerate([1, 33, 64]):
        assert np.abs(got[b, :n] - want[b, :n]).max() < FP16_TOL


def test_unpackable_graph_is_refused_and_nothing_written(tiny384, tmp_path):
    out = tmp_path / "out.onnx"
    # Without the layout pass the plugins sit between batch-major adapters computed from Shape(input_ids).
    no_layout = "sanitize,layernorm,attention,embeddings,skip_layernorm,gelu"
    res = surgery(tiny384, out, "--passes", no_layout, "--varseqlen")
    assert res.exit_code == 1
    assert f"Error: {tiny384}: the fused graph could not be packed for var-seqlen" in res.output
    assert "miss:" in res.output and not out.exists()


# ---------------------------------------------------------------- limits


def _checkpoint_model(tmp_path, heads, seq, hidden=128):
    import shutil

    from bertrt.convert import zoo
    from bertrt.convert.checkpoint import CONFIG_NAME, VOCAB_NAME, BertConfig, write_checkpoint
    from bertrt.convert.tf_convert import convert_checkpoint

    cfg = BertConfig(num_hidden_layers=1, hidden_size=hidden, num_attention_heads=heads, intermediate_size=256,
                     vocab_size=1000, max_position_embeddings=512)
    ckpt = tmp_path / f"ckpt-h{hidden // heads}-s{seq}"
    ckpt.mkdir()
    write_checkpoint(ckpt, zoo.random_weights(cfg, seed=3, std=0.05))
    (ckpt / CONFIG_NAME).write_text(cfg.to_google_json())
    shutil.copyfile(zoo.vocab_path(), ckpt / VOCAB_NAME)
    out = tmp_path / f"h{hidden // heads}-s{seq}.onnx"
    convert_checkpoint(ckpt, out, seq=seq, log=lambda _m: None)
    return out


def test_head_size_above_64_is_refused(tiny384, tmp_path):
    """A fused graph whose QKVToContext has one head of 128 (hidden 128): the pass refuses before writing."""
    fused, edited, out = tmp_path / "fused.onnx", tmp_path / "one-head.onnx", tmp_path / "out.onnx"
    assert surgery(tiny384, fused, "--precision", "fp16").exit_code == 0
    m = onnx.load(fused)
    for n in m.graph.node:
        if n.op_type == QKV_TO_CONTEXT:
            next(a for a in n.attribute if a.name == "num_heads").i = 1
    onnx.save(m, edited)
    res = CliRunner().invoke(cli, ["surgery", "pass", "pack-varseqlen", str(edited), "-o", str(out)])
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1] == (f"Error: {edited}: attention_1: head size 128 (hidden 128 / "
                                                   "1 heads) is above 64, the largest the var-seqlen QKVToContext takes")
    assert not out.exists()


def test_fixed_sequence_above_384_is_refused(tmp_path):
    model = _checkpoint_model(tmp_path, heads=2, seq=512)
    out = tmp_path / "out.onnx"
    res = surgery(model, out, "--varseqlen")
    assert res.exit_code == 1
    assert f"Error: {model}: the model's sequence length is fixed at 512; var-seqlen EmbLayerNorm computes " \
           "positions below 384 only" in res.output
    assert not out.exists()


def test_packing_refuses_empty_long_and_holey_sequences():
    feeds = padded_batch([3, 0, 2], 4)
    with pytest.raises(BertrtError, match="sequence 1 is empty"):
        pack_varseqlen(feeds)
    long = padded_batch([10, MAX_SEQLEN + 1], MAX_SEQLEN + 8)
    with pytest.raises(BertrtError, match=r"sequence 1 has 385 tokens; the var-seqlen model computes at most 384"):
        pack_varseqlen(long)
    assert pack_varseqlen(padded_batch([10, MAX_SEQLEN], MAX_SEQLEN + 8))["max_seqlen"].shape == (MAX_SEQLEN,)
    holey = padded_batch([3, 2], 4)
    holey["input_mask"][0] = [1, 0, 1, 0]
    with pytest.raises(BertrtError, match="sequence 0: its input_mask is not 1s followed by 0s"):
        pack_varseqlen(holey)


def test_backend_refuses_sequences_past_the_position_table(tiny_onnx, tmp_path):
    """The tiny model converted at 128 keeps 128 position rows: its packed form computes 128 tokens at most."""
    from bertrt.run.backends import open_backend

    packed = tmp_path / "packed-128.onnx"
    assert surgery(tiny_onnx, packed, "--varseqlen").exit_code == 0
    assert model_max_length(onnx.load(packed)) == 128
    with open_backend(onnx=packed) as backend:
        assert backend.input_shape.varseqlen and backend.input_shape.max_seqlen == 128
        ok = backend.run(padded_batch([128, 7], 200))
        assert ok.shape == (2, 200, 2) and np.isneginf(ok[1, 7:]).all()  # no logits for padding (NO_LOGIT)
        with pytest.raises(BertrtError, match=f"{packed}: sequence 0 has 129 tokens; .* at most 128"):
            backend.run(padded_batch([129, 7], 200))


# ---------------------------------------------------------------- packing by hand


def test_pack_and_unpack_by_hand():
    feeds = {"input_ids": np.array([[5, 6, 7, 0], [8, 9, 0, 0]], np.int32),
             "segment_ids": np.array([[0, 1, 1, 0], [0, 0, 0, 0]], np.int32),
             "input_mask": np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.int32)}
    packed = pack_varseqlen(feeds)
    assert packed["input_ids"].tolist() == [5, 6, 7, 8, 9]
    assert packed["segment_ids"].tolist() == [0, 1, 1, 0, 0]
    assert packed["cu_seqlens"].tolist() == [0, 3, 5]
    assert packed["max_seqlen"].shape == (3,)  # the longest sequence, not the padded length
    assert all(a.dtype == np.int32 for a in packed.values())
    tokens = np.arange(10, dtype=np.float32).reshape(5, 2)
    out = unpack_varseqlen(tokens, feeds["input_mask"])
    assert out.tolist() == [[[0, 1], [2, 3], [4, 5], [0, 0]], [[6, 7], [8, 9], [0, 0], [0, 0]]]
    np.testing.assert_array_equal(unpack_varseqlen(tokens.T.reshape(2, 5, 1, 1), feeds["input_mask"]), out)
    with pytest.raises(BertrtError, match="do not hold 2 values for each of the 5 tokens"):
        unpack_varseqlen(tokens[:4], feeds["input_mask"])
    assert np.isneginf(unpack_varseqlen(tokens, feeds["input_mask"], fill=NO_LOGIT)[1, 2:]).all()


def test_varseqlen_padding_is_never_an_answer_candidate():
    # A passage whose logits are all negative: with 0 at the padding (what var-seqlen unpacking wrote before) the
    # 20 best starts and ends are padding and no span is left ("empty"); with no logit there, the passage's best.
    from bertrt.run.postprocess import best_indexes

    real = -np.linspace(1, 3, 30, dtype=np.float32)  # 30 real tokens, best at 0
    mask = np.array([[1] * 30 + [0] * 34])
    packed = np.stack([real, real], 1)
    zero = unpack_varseqlen(packed, mask)[0, :, 0]
    assert all(i >= 30 for i in best_indexes(zero, 20))  # the n-best would be padding alone
    assert best_indexes(unpack_varseqlen(packed, mask, fill=NO_LOGIT)[0, :, 0], 20) == list(range(20))


def test_token_count():
    count = TokenCount.of(padded_batch(LENGTHS, 384)["input_mask"])
    assert (count.packed, count.padded) == (1601, 3072)
    assert count.describe() == "packed 1,601 tokens vs padded 3,072 (52%)"


# ---------------------------------------------------------------- compare


def test_compare_packed_against_padded_cli(tiny384, tiny_packed, tmp_path):
    from polygraphy.json import save_json

    feeds = padded_batch(LENGTHS, 384, seed=2)
    inputs = tmp_path / "inputs.json"
    save_json([feeds], str(inputs))
    res = CliRunner().invoke(cli, ["compare", str(tiny384), str(tiny_packed["trt10"]), "--load-inputs", str(inputs)])
    assert res.exit_code == 0, res.output
    assert "packed 1,601 tokens vs padded 3,072 (52%)" in res.output
    rows = [line.split() for line in res.output.splitlines() if line.split()[:1] and line.split()[0].isdigit()]
    assert [int(r[1]) for r in rows] == LENGTHS.tolist() and all(r[-1] == "PASS" for r in rows)
    # with a tolerance far below FP16 rounding the same comparison fails
    res = CliRunner().invoke(cli, ["compare", str(tiny384), str(tiny_packed["trt10"]), "--load-inputs", str(inputs),
                                   "--atol", "1e-6", "--rtol", "1e-6"])
    assert res.exit_code == 1 and "FAIL (fp16" in res.output
    res = CliRunner().invoke(cli, ["compare", str(tiny384), str(tiny384), "--varseqlen"])
    assert res.exit_code == 1 and "is not a packed (var-seqlen) model" in res.output


def test_compare_packed_random_inputs(tiny384, tiny_packed):
    from bertrt.run.compare import compare_packed

    result = compare_packed(tiny384, tiny_packed["trt11"], batch=4, seq=384, iterations=2, seed=3)
    assert result.passed and result.precision == "fp16" and len(result.sequences) == 8
    assert result.tokens.padded == 8 * 384 and result.tokens.packed == sum(s.length for s in result.sequences)
    assert max(s.max_abs for s in result.sequences) < FP16_TOL


# ---------------------------------------------------------------- BERT-Base


@pytest.fixture(scope="module")
def base384(tmp_path_factory):
    """BERT-Base (zoo weights) at sequence 384 and its packed form (trt10)."""
    from bertrt.convert import zoo
    from bertrt.convert.tf_convert import convert_checkpoint

    d = tmp_path_factory.mktemp("base")
    padded, packed = d / "base-384.onnx", d / "base-packed.onnx"
    convert_checkpoint(zoo.make("base", d / "ckpt"), padded, seq=384, log=lambda _m: None)
    res = surgery(padded, packed, "--varseqlen")
    assert res.exit_code == 0, res.output
    return padded, packed


@pytest.mark.slow
def test_bert_base_packed_equals_padded_for_every_sequence(base384, capsys):
    padded, packed = base384
    feeds = padded_batch(LENGTHS, 384, seed=6)
    want = ort_logits(padded, feeds)
    got = packed_logits(packed, feeds)
    errs = [float(np.abs(got[b, :n] - want[b, :n]).max()) for b, n in enumerate(LENGTHS)]
    with capsys.disabled():
        print(f"\nBERT-Base, lengths {LENGTHS.tolist()}: {TokenCount.of(feeds['input_mask']).describe()}; "
              f"max abs per sequence {[f'{e:.1e}' for e in errs]}")
    assert max(errs) < FP16_TOL
