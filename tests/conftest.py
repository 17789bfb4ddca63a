"""Shared fixtures: zoo checkpoints and their canonical ONNX models, made once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    from bertrt.convert import zoo

    return zoo.make("tiny", tmp_path_factory.mktemp("zoo") / "tiny")


@pytest.fixture(scope="session")
def minilm_ckpt(tmp_path_factory):
    from bertrt.convert import zoo

    return zoo.make("minilm", tmp_path_factory.mktemp("zoo") / "minilm")
