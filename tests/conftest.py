"""Shared fixtures: zoo checkpoints and their canonical ONNX models, made once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as bertrt's CLI sets it (bertrt/cli.py)

# The real assets (a fine-tuned SQuAD BERT, the official SQuAD files) live beside the checkout in
# ../shared, or wherever BERTRT_SHARED points; a fresh clone has none, and the tests that need them skip.
SHARED = Path(os.environ.get("BERTRT_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


def need_shared(*relpaths: str) -> list[Path]:
    """The paths under SHARED, or skip the test naming the files it needs."""
    paths = [SHARED / r for r in relpaths]
    missing = [r for r, p in zip(relpaths, paths) if not p.exists()]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} under {SHARED} (set BERTRT_SHARED to the folder that has them)")
    return paths


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    from bertrt.convert import zoo

    return zoo.make("tiny", tmp_path_factory.mktemp("zoo") / "tiny")


@pytest.fixture(scope="session")
def minilm_ckpt(tmp_path_factory):
    from bertrt.convert import zoo

    return zoo.make("minilm", tmp_path_factory.mktemp("zoo") / "minilm")


def _convert(ckpt, out, seq):
    from bertrt.convert.tf_convert import convert_checkpoint

    report = convert_checkpoint(ckpt, out, seq=seq, log=lambda _msg: None)
    return out, report


@pytest.fixture(scope="session")
def tiny_converted(tiny_ckpt, tmp_path_factory):
    """(path, report) of the canonical tiny model at sequence 128, converted from the zoo checkpoint."""
    return _convert(tiny_ckpt, tmp_path_factory.mktemp("onnx") / "tiny-128.onnx", 128)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_converted):
    """Path of the canonical tiny model (2 layers, hidden 128, 2 heads of 64), sequence 128."""
    return tiny_converted[0]


@pytest.fixture(scope="session")
def tiny_dynamic_onnx(tiny_ckpt, tmp_path_factory):
    """The canonical tiny model with a dynamic sequence axis."""
    return _convert(tiny_ckpt, tmp_path_factory.mktemp("onnx") / "tiny-dynamic.onnx", None)[0]


@pytest.fixture(scope="session")
def minilm_converted(minilm_ckpt, tmp_path_factory):
    """(path, report) of the canonical minilm model (real weights) at sequence 128."""
    return _convert(minilm_ckpt, tmp_path_factory.mktemp("onnx") / "minilm-128.onnx", 128)


@pytest.fixture(scope="session")
def minilm_onnx(minilm_converted):
    return minilm_converted[0]


FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"
EXPORTER_FIXTURES = ("hf_qa_eager", "hf_qa_sdpa", "torch_dynamo_qa", "torch_legacy_bert")


@pytest.fixture(scope="session")
def canonical_fixtures(tmp_path_factory):
    """name -> canonical model path, for every exporter fixture (through `convert_onnx`)."""
    from bertrt.convert.onnx_intake import convert_onnx

    out = tmp_path_factory.mktemp("canonical")
    paths = {}
    for name in EXPORTER_FIXTURES + ("qat_qdq",):
        paths[name] = out / f"{name}.onnx"
        convert_onnx(FIXTURES / f"{name}.onnx", paths[name])
    return paths
