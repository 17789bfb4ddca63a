"""benchmarks/kernels_pack.py: graphs travel to the GPU machine as float16 weights and come back bit for bit;
logits too large for one returned file travel in parts."""

import sys
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from kernels_pack import load_parts, pack, save_parts, saved_stems, unpack  # noqa: E402


def test_packed_graph_comes_back_bit_for_bit(tiny_onnx, tmp_path):
    model = onnx.load(tiny_onnx)
    pack({"tiny": model}, tmp_path / "pack")
    assert unpack(tmp_path / "pack", "tiny").SerializeToString() == model.SerializeToString()


def test_arrays_over_the_limit_travel_in_parts(tmp_path):
    big = np.arange(12 * 384 * 2, dtype=np.float32).reshape(12, 384, 2)  # 36 KiB
    small = np.ones((2, 3), np.float32)
    paths = save_parts(tmp_path, "big.kernels", big, limit=3072)
    assert len(paths) == 12 and all(p.stat().st_size <= 3072 + 128 for p in paths)  # part10, part11 sort after part9
    save_parts(tmp_path, "small.kernels", small, limit=3000)
    assert [p.name for p in tmp_path.glob("small*")] == ["small.kernels.npy"]
    assert saved_stems(tmp_path, ".kernels") == ["big.kernels", "small.kernels"]
    np.testing.assert_array_equal(load_parts(tmp_path, "big.kernels"), big)
    np.testing.assert_array_equal(load_parts(tmp_path, "small.kernels"), small)
