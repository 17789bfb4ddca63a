"""The shared contract: valid random inputs in each variant, the sequence-length rule, one home per fact."""

import re
from pathlib import Path

import numpy as np
import pytest

from bertrt import contract
from bertrt.contract import CANONICAL_INPUTS, random_feeds, resolve_seq
from bertrt.errors import BertrtError

ROOT = Path(__file__).resolve().parents[1]


def lengths_of(mask):
    n = mask.sum(1)
    assert np.array_equal(mask, (np.arange(mask.shape[1])[None] < n[:, None]).astype(np.int32))  # prefixes
    return n


def test_random_lengths_split_segments():
    f = random_feeds(6, 40, 1000, seed=3, min_length=10, segments="split")
    assert list(f) == list(CANONICAL_INPUTS) and all(a.dtype == np.int32 and a.shape == (6, 40) for a in f.values())
    n = lengths_of(f["input_mask"])
    assert n.min() >= 10 and n.max() <= 40
    for row, length in zip(f["segment_ids"], n):  # 0 for the question, 1 for the passage, 0 at padding
        first = np.argmax(row)
        assert first == max(length // 3, 1) and (row[first:length] == 1).all() and (row[length:] == 0).all()
    assert (f["input_ids"][f["input_mask"] == 0] == 0).all() and f["input_ids"].max() < 1000


def test_full_lengths_random_segments_and_seeds():
    f = random_feeds(4, 16, 50, seed=1, lengths="full")
    assert (f["input_mask"] == 1).all() and set(np.unique(f["segment_ids"])) == {0, 1}
    again = random_feeds(4, 16, 50, seed=1, lengths="full")
    assert all(np.array_equal(f[k], again[k]) for k in f)
    assert not np.array_equal(f["input_ids"], random_feeds(4, 16, 50, seed=2, lengths="full")["input_ids"])
    rng = np.random.default_rng(0)
    a, b = random_feeds(2, 8, 50, rng=rng), random_feeds(2, 8, 50, rng=rng)  # one generator: different feeds
    assert not np.array_equal(a["input_ids"], b["input_ids"])
    with pytest.raises(ValueError, match="lengths"):
        random_feeds(1, 8, lengths="some")


def test_sequence_length_rule():
    assert resolve_seq(128) == 128 and resolve_seq(None) == contract.DEFAULT_SEQ == 384
    assert resolve_seq(None, 64) == 64 and resolve_seq(128, 128) == 128
    with pytest.raises(BertrtError, match="takes sequence length 128, not 384") as e:
        resolve_seq(128, 384, "m.onnx")
    assert e.value.path == "m.onnx"


SOURCES = [p for d in ("bertrt", "convert", "plugins", "surgery", "run", "calibrate") for p in (ROOT / d).rglob("*.py")]


@pytest.mark.parametrize("pattern,homes", [
    # the input lists: by name in the contract, as string tuples nowhere
    (r"""\(\s*["']input_ids["'],\s*["']segment_ids["'],\s*["']input_mask["']\s*\)""", []),
    (r"""["']cu_seqlens["'],\s*["']max_seqlen["']\s*\)""", []),
    (r"""^CANONICAL_INPUTS\s*=|^VARSEQLEN_INPUTS\s*=""", ["bertrt/contract.py"]),
    (r"""^\w*PRECISIONS\s*=""", ["bertrt/contract.py"]),
    (r"""^\w*MASK_IDX\s*=""", ["bertrt/contract.py"]),
    (r"""^\w*MAX_SEQLEN\s*=""", ["plugins/specs.py"]),  # a fact of the var-seqlen plugins, from their table
    (r"""^\w*DEFAULT_SEQ\s*=|^MAX_SEQ_LENGTH\s*=""", ["bertrt/contract.py"]),
    # one generator; perf's and compare's are one-line variants of it
    (r"""^def random_(feeds|inputs)\(""", ["bertrt/contract.py", "run/compare.py", "run/perf.py"]),
    (r"""^def read_(ranges|amax)\(""", ["bertrt/ranges.py"]),
    # one reader and one writer per file format, and one rule for an amax (#14)
    (r"""^def (read|write|parse)_\w*(cache)\w*\(""", ["bertrt/calib_cache.py"]),
    (r"""^def (read|write)_name_map\(|^def apply_name_map\(""", ["bertrt/name_map.py"]),
    (r"""^def write_ranges\(|^def (amax_problem|check_amax)\(""", ["bertrt/ranges.py"]),
    (r"""^\w*CALIBRATORS\s*=|^ALGORITHMS\s*=""", ["bertrt/calib_cache.py"]),
])
def test_each_fact_is_defined_once(pattern, homes):
    found = sorted(p.relative_to(ROOT).as_posix() for p in SOURCES if re.search(pattern, p.read_text(), re.M))
    assert found == homes


def test_no_plugin_version_strings_outside_the_spec_table():
    tuple_of_versions = re.compile(r"""in \(\s*["']\d["'](,\s*["']\d["'])*\s*\)|\{\s*["']\d["']:""")
    offenders = [p.relative_to(ROOT).as_posix() for p in SOURCES if tuple_of_versions.search(p.read_text())]
    assert offenders == []
