"""A fuzz campaign on the command line (#14): what a careless user or a broken disk hands bertrt.

Seeded mutants of the tiny Hugging Face export (bytes: truncation, flips, zeroed ranges, a name that is no UTF-8;
structure: a deleted node, a renamed input, an initializer of another dtype or shape or none, an odd opset,
duplicate names, attributes of the wrong type, ...) go through `convert onnx`, `surgery run` and `compare`;
malformed side files (ranges, calibration cache, name map, SQuAD) through the commands that read them; write
faults (a folder in the output's place, a file as its folder, no permission, a full disk, SIGTERM) through the
commands that write. The commands run in this process through click's CliRunner on the root command, which
turns library errors into one line as the installed ``bertrt`` does.

Every outcome must be one of:
  * accepted: exit 0 and what was written is a model onnx.checker takes and ONNX Runtime runs (a fused graph: on
    bertrt's reference, which runs ONNX Runtime between the plugins), a file its reader takes; and the input
    itself was one onnx.checker takes and ONNX Runtime runs (compare, a diagnosis, may take what ONNX Runtime runs
    and the checker refuses; convert onnx may rename duplicate node names, saying so), or, for a side file, one
    the generator made valid: no silent acceptance;
  * refused: a non-zero exit with one line "Error: <file>: <problem>" that says more than an exception's class,
    no traceback, and nothing written (no output, no hidden temporary file).
The case counts and outcomes are printed after the module's tests (-q included) for the record, and the last test
asserts them: a few hundred cases, none of them a traceback, a silent acceptance or a bad refusal.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from bertrt.cli import cli

pytestmark = pytest.mark.slow

SEED = 14
FIXTURE = Path(__file__).parent / "fixtures" / "hf_qa_eager.onnx"  # 2 layers, hidden 64, 64 positions
SEQ = 32  # inside the fixture's position table
N_RAW, N_CANONICAL = 150, 150  # mutants through convert onnx; mutants of the canonical model through surgery + compare
N_SIDE = 40  # per side-file format
ERROR_LINE = re.compile(r"^Error: .+")
ONLY_A_CLASS = re.compile(r"(: |\()\w*(Error|Exception|Warning)\)?$")
RECORD: dict[str, Counter] = {}


def _record(family: str, outcome: str) -> None:
    RECORD.setdefault(family, Counter())[outcome] += 1


FAILED_OUTCOMES = ("traceback", "silent acceptance", "bad acceptance", "bad refusal", "different bytes again")


def record_lines() -> list[str]:
    """The campaign's counts: every case, the failed outcomes (each 0 when it passes), then per family."""
    total = Counter()
    for counts in RECORD.values():
        total.update(counts)
    failed = ", ".join(f"{k} {total[k]}" for k in FAILED_OUTCOMES)
    lines = [f"fuzz campaign (seed {SEED}): {sum(total.values())} cases; {failed}"]
    for family, counts in RECORD.items():
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        lines.append(f"  {family}: {sum(counts.values())} cases, {outcomes}")
    return lines


@pytest.fixture(scope="module", autouse=True)
def _print_record(request):
    yield
    # Written past pytest's capture, so that every run (-q included) shows the counts for the record.
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + "\n".join(record_lines()), flush=True)


# ---------------------------------------------------------------- running a command, judging its outcome


def bertrt(*args):
    """The command through CliRunner, with what native code (ONNX Runtime's C++ logger) wrote to file descriptor 2
    meanwhile as ``result.native_stderr``: CliRunner sees only Python's sys.stderr, a user's terminal sees both."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as native:
        os.dup2(native.fileno(), 2)
        try:
            result = CliRunner().invoke(cli, [str(a) for a in args])
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        native.seek(0)
        result.native_stderr = native.read().decode("utf-8", "replace")
    return result


def refusal_problem(result) -> str | None:
    """Why a non-zero exit is not a proper refusal (None if it is one)."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return f"traceback: {type(result.exception).__name__}: {str(result.exception)[:200]}"
    if "Traceback (most recent call last)" in result.output:
        return "a traceback in the output"
    native = [line for line in getattr(result, "native_stderr", "").splitlines() if line.strip()]
    if native:
        return f"a second message beside the Error line (native stderr): {native[0][:200]!r}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    if len(errors) != 1 or not ERROR_LINE.match(errors[0]):
        return f"not one 'Error: ...' line: {result.stderr.strip()[-300:]!r}"
    if ONLY_A_CLASS.search(errors[0].rstrip(". ")):
        return f"says only an exception class: {errors[0]!r}"
    return None


def leftovers(folder: Path, before: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in before)


def ort_problem(path_or_model, seq: int = SEQ) -> str | None:
    """Why ONNX Runtime does not run this model on one valid input (None if it does): onnx.checker, a session,
    and a run on random BERT inputs at seq tokens. Plugin graphs run on bertrt's reference (ORT between plugins)."""
    import onnxruntime as ort

    from bertrt.contract import random_feeds
    from bertrt.plugins.runner import ReferenceRunner, has_plugin_nodes

    try:
        model = onnx.load(path_or_model) if isinstance(path_or_model, (str, Path)) else path_or_model
        try:
            onnx.checker.check_model(model)
        except Exception as e:
            return f"checker: {type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"
        feeds = random_feeds(1, seq, 100, seed=1)
        if has_plugin_nodes(model):
            out = ReferenceRunner(model).run(feeds)
        else:
            opts = ort.SessionOptions()
            opts.log_severity_level = 4
            session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            typed = {}
            for i in session.get_inputs():
                role = ("segment_ids" if "type" in i.name or "segment" in i.name else
                        "input_mask" if "mask" in i.name else "input_ids")
                base = feeds[role]
                kind = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
                        "tensor(bool)": np.bool_, "tensor(float16)": np.float16, "tensor(double)": np.float64,
                        "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}.get(i.type)
                if kind is None or len(i.shape) != 2:
                    return f"input {i.name} is {i.type} {i.shape}"
                typed[i.name] = base.astype(kind)
            out = session.run(None, typed)
        del out  # it ran; its values are the model's business (a flipped weight may well overflow)
    except Exception as e:  # any failure of the checker or ONNX Runtime is a rejection
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"
    return None


class Campaign:
    """Runs cases, judges them, and keeps the failures (a case id and what went wrong)."""

    def __init__(self, family: str, work: Path):
        self.family, self.work, self.failures = family, work, []
        self.accepted = []  # (case id, args_for_out, the output written)

    def case(self, case_id: str, args_for_out, *, input_ok: bool | None, check_output=None, out_name="out.onnx"):
        """Run ``args_for_out(out_path)``; ``input_ok`` says whether the input is one that must be accepted (True),
        must be refused (False) or may be either (None); ``check_output(out)`` -> problem or None on acceptance."""
        folder = self.work / case_id
        folder.mkdir(parents=True)
        out = folder / out_name
        result = bertrt(*args_for_out(out))
        if result.exit_code == 0 or _compared(result):
            outcome = "accepted" if result.exit_code == 0 else "compared (FAIL)"
            problem = None
            if input_ok is False:
                problem = "silent acceptance of an input that must be refused"
            elif check_output is not None:
                problem = check_output(out, result)
            if problem is not None:
                outcome = "silent acceptance" if input_ok is False else "bad acceptance"
                self.failures.append(f"{case_id}: {problem}; output {result.output.strip()[-200:]!r}")
            elif result.exit_code == 0 and out.is_file():
                self.accepted.append((case_id, args_for_out, out))
        else:
            problem = refusal_problem(result)
            left = leftovers(folder, set())
            if problem is None and left:
                problem = f"partial output left: {left}"
            if problem is None and input_ok is True:
                problem = f"a valid input was refused: {result.stderr.strip()[-200:]!r}"
            outcome = "refused" if problem is None else ("traceback" if problem.startswith("traceback")
                                                         else "bad refusal")
            if problem is not None:
                self.failures.append(f"{case_id}: {problem}")
        _record(self.family, outcome)
        return result

    def check_deterministic(self, k: int = 5):
        """The first k accepted cases again, in new folders: the same bytes."""
        for case_id, args_for_out, out in self.accepted[:k]:
            again = self.work / f"{case_id}-again" / out.name
            again.parent.mkdir(parents=True)
            r = bertrt(*args_for_out(again))
            same = r.exit_code == 0 and again.read_bytes() == out.read_bytes()
            _record(self.family, "same bytes again" if same else "different bytes again")
            if not same:
                self.failures.append(f"{case_id}: a second run wrote different bytes (exit {r.exit_code})")

    def check(self):
        assert not self.failures, f"{len(self.failures)} bad outcome(s):\n" + "\n".join(self.failures[:25])


def _compared(result) -> bool:
    """compare's own verdict: exit 1 with its table ending in FAIL (a result, not a refusal)."""
    return (result.exit_code == 1 and result.exception is not None and isinstance(result.exception, SystemExit)
            and bool(re.search(r"^FAIL \(", result.stdout, re.M)) and "Error" not in result.stderr)


# ---------------------------------------------------------------- mutants of an ONNX model


def byte_mutants(data: bytes, rng: random.Random, n: int):
    """(kind, bytes): truncated, flipped, zeroed, and names made invalid UTF-8."""
    kinds = ["truncate", "flip", "zero", "bad_utf8"]
    for i in range(n):
        kind = kinds[i % len(kinds)]
        buf = bytearray(data)
        if kind == "truncate":
            buf = buf[:rng.randrange(1, len(buf))]
        elif kind == "flip":
            for _ in range(rng.randint(1, 8)):
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif kind == "zero":
            start = rng.randrange(len(buf))
            end = min(len(buf), start + rng.randint(16, 4096))
            buf[start:end] = bytes(end - start)
        else:  # a byte of a tensor or node name that is no UTF-8
            names = [m.start() for m in re.finditer(rb"input_ids|attention_mask|/bert/[a-z_/]+", bytes(buf))]
            pos = rng.choice(names) + rng.randrange(3)
            buf[pos] = 0xFF
        yield kind, bytes(buf)


STRUCTURE_KINDS = ("delete_node", "rename_input", "init_dtype", "init_shape", "drop_init", "odd_opset", "dup_node_name",
                   "dup_output", "dup_input", "attr_type", "input_dtype", "rename_output", "swap_inputs",
                   "drop_output", "cycle")


def structure_mutant(model: onnx.ModelProto, kind: str, rng: random.Random) -> onnx.ModelProto:
    m = copy.deepcopy(model)
    g = m.graph
    nodes = list(g.node)
    if kind == "delete_node":
        del g.node[rng.randrange(len(g.node))]
    elif kind == "rename_input":
        i = g.input[rng.randrange(len(g.input))]
        old, new = i.name, rng.choice(["ids", "x", "input_ids:0", "INPUT_IDS", "token_type_ids", "mask_2"])
        i.name = new
        if rng.random() < 0.5:  # sometimes the consumers follow, sometimes not
            for n in g.node:
                n.input[:] = [new if x == old else x for x in n.input]
    elif kind == "init_dtype":
        t = g.initializer[rng.randrange(len(g.initializer))]
        t.data_type = rng.choice([onnx.TensorProto.FLOAT16, onnx.TensorProto.INT64, onnx.TensorProto.DOUBLE,
                                  onnx.TensorProto.INT8, onnx.TensorProto.BOOL, onnx.TensorProto.FLOAT])
    elif kind == "init_shape":
        t = g.initializer[rng.randrange(len(g.initializer))]
        dims = list(t.dims) or [1]
        choice = rng.random()
        if choice < 0.4 and len(dims) >= 2:
            dims = dims[::-1]
        elif choice < 0.7:
            dims = dims + [1]
        else:
            dims[0] = max(1, dims[0] * 2)
        t.ClearField("dims")
        t.dims.extend(dims)
    elif kind == "drop_init":
        del g.initializer[rng.randrange(len(g.initializer))]
    elif kind == "odd_opset":
        for o in m.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = rng.choice([1, 6, 9, 11, 13, 16, 18, 21, 22, 26, 99])
    elif kind == "dup_node_name":
        a, b = rng.sample(range(len(nodes)), 2)
        g.node[b].name = g.node[a].name or "n"
        g.node[a].name = g.node[b].name
    elif kind == "dup_output":
        a, b = rng.sample(range(len(nodes)), 2)
        if g.node[a].output and g.node[b].output:
            g.node[b].output[0] = g.node[a].output[0]
    elif kind == "dup_input":
        g.input.append(copy.deepcopy(g.input[rng.randrange(len(g.input))]))
    elif kind == "attr_type":
        with_attrs = [n for n in g.node if n.attribute]
        n = rng.choice(with_attrs)
        a = n.attribute[rng.randrange(len(n.attribute))]
        value = rng.choice([helper.make_attribute(a.name, "x"), helper.make_attribute(a.name, 1.5),
                            helper.make_attribute(a.name, [1, 2]), helper.make_attribute(a.name, 7)])
        a.CopyFrom(value)
    elif kind == "input_dtype":
        i = g.input[rng.randrange(len(g.input))]
        i.type.tensor_type.elem_type = rng.choice([onnx.TensorProto.INT64, onnx.TensorProto.BOOL,
                                                   onnx.TensorProto.FLOAT, onnx.TensorProto.STRING,
                                                   onnx.TensorProto.UINT8])
    elif kind == "rename_output":
        g.output[0].name = rng.choice(["logits_x", "start_logits", "y", g.input[0].name])
    elif kind == "swap_inputs":
        n = rng.choice([n for n in g.node if len(n.input) >= 2])
        n.input[0], n.input[1] = n.input[1], n.input[0]
    elif kind == "drop_output":
        del g.output[:]
    elif kind == "cycle":  # a node reads the output of one after it
        a, b = sorted(rng.sample(range(len(nodes)), 2))
        if g.node[a].input and g.node[b].output:
            g.node[a].input[0] = g.node[b].output[0]
    return m


def model_mutants(model: onnx.ModelProto, rng: random.Random, n: int):
    """(kind, bytes) mutants: a third byte-level, the rest structural."""
    data = model.SerializeToString()
    n_bytes = n // 3
    yield from byte_mutants(data, rng, n_bytes)
    for i in range(n - n_bytes):
        kind = STRUCTURE_KINDS[i % len(STRUCTURE_KINDS)]
        yield kind, structure_mutant(model, kind, rng).SerializeToString()


# ---------------------------------------------------------------- the models


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def canonical(work):
    out = work / "canonical.onnx"
    r = bertrt("convert", "onnx", FIXTURE, "-o", out)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def fused(work, canonical):
    out, names = work / "fused.onnx", work / "map.json"
    r = bertrt("surgery", "run", canonical, "-o", out, "--precision", "int8", "--name-map", names)
    assert r.exit_code == 0, r.output
    return out, names


def _accepts_model(out: Path, result) -> str | None:
    if not out.exists():
        return "exit 0 but no output written"
    return ort_problem(out)


def test_convert_onnx_on_mutants_of_an_export(work):
    rng = random.Random(SEED)
    campaign = Campaign("convert onnx (mutated export)", work / "convert")
    for i, (kind, data) in enumerate(model_mutants(onnx.load(FIXTURE), rng, N_RAW)):
        src = work / "convert-src" / f"{i:03d}-{kind}.onnx"
        src.parent.mkdir(exist_ok=True)
        src.write_bytes(data)
        reason = ort_problem(src)
        # Duplicate node names are the one thing convert onnx repairs (and says so): ORT's only complaint about them.
        ok = reason is None or "two nodes with same node name" in reason
        campaign.case(f"{i:03d}-{kind}", lambda out, src=src: ["convert", "onnx", src, "-o", out],
                      input_ok=None if ok else False, check_output=_accepts_model)
    campaign.check_deterministic()
    campaign.check()


def test_surgery_and_compare_on_mutants_of_the_canonical_model(work, canonical):
    rng = random.Random(SEED + 1)
    surgery = Campaign("surgery run (mutated canonical)", work / "surgery")
    compare = Campaign("compare (mutated canonical)", work / "compare")
    for i, (kind, data) in enumerate(model_mutants(onnx.load(canonical), rng, N_CANONICAL)):
        src = work / "canonical-src" / f"{i:03d}-{kind}.onnx"
        src.parent.mkdir(exist_ok=True)
        src.write_bytes(data)
        reason = ort_problem(src)
        ok = reason is None
        surgery.case(f"{i:03d}-{kind}", lambda out, src=src: ["surgery", "run", src, "-o", out],
                     input_ok=None if ok else False, check_output=_accepts_model)
        # compare is a diagnosis: what ONNX Runtime runs it may compare, though onnx.checker refuses it.
        runs = ok or reason.startswith("checker:")
        compare.case(f"{i:03d}-{kind}", lambda out, src=src: ["compare", canonical, src, "--seq", SEQ],
                     input_ok=None if runs else False, check_output=None)
    surgery.check_deterministic()
    surgery.check()
    compare.check()


# ---------------------------------------------------------------- side files


def ranges_cases(names: list[str], rng: random.Random, n: int):
    """(kind, bytes, valid) ranges files keyed by ``names``."""
    good = {name: round(rng.uniform(0.5, 20), 3) for name in names}
    bad_values = [0, -1, float("nan"), float("inf"), 1e300, 1e-50, "3", None, True, {"a": 1}, [1]]
    for i in range(n):
        kind = i % 11
        if kind == 0:
            yield "valid", json.dumps(good).encode(), True
        elif kind == 1:
            yield "not_json", json.dumps(good).encode()[:-rng.randint(1, 20)], False
        elif kind == 2:
            yield "not_utf8", b"\xff\xfe" + json.dumps(good).encode(), False
        elif kind == 3:
            yield "a_list", json.dumps(list(good.values())).encode(), False
        elif kind == 4:
            yield "empty", b"{}", False
        elif kind == 5:
            yield "nested", json.dumps({"amax": good}).encode(), False
        elif kind in (6, 7, 8):
            value = bad_values[rng.randrange(len(bad_values))]
            bad = dict(good)
            bad[rng.choice(names)] = value
            yield f"amax_{value!r}"[:20], json.dumps(bad).encode(), False
        elif kind == 9:
            yield "unknown_names", json.dumps({f"t{k}": 1.0 for k in range(5)}).encode(), None
        else:
            yield "empty_file", b"", False


def scale_hex(amax: float) -> str:
    return struct.pack(">f", np.float32(amax / 127)).hex()


def read_cache_independently(path: Path) -> None:
    """What TensorRT reads: a TRT-<version>-<algorithm> header, then '<tensor>: <hex float32>' with a positive
    finite scale, each tensor once (written here, not bertrt's reader, to judge bertrt's writer)."""
    lines = path.read_text(encoding="ascii").splitlines()
    assert re.fullmatch(r"TRT-\d+-(EntropyCalibration2?|MinMaxCalibration|LegacyCalibration)", lines[0]), lines[0]
    names = set()
    for line in lines[1:]:
        name, digits = re.fullmatch(r"(.+): ([0-9a-f]{8})", line).groups()
        scale = struct.unpack(">f", bytes.fromhex(digits))[0]
        assert np.isfinite(scale) and scale > 0 and name not in names, line
        names.add(name)
    assert names


def read_ranges_independently(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and data
    assert all(isinstance(v, float) and np.isfinite(v) and 0 < np.float32(v / 127) < np.inf for v in data.values())


def cache_cases(names: list[str], rng: random.Random, n: int):
    lines = [f"{name}: {scale_hex(rng.uniform(0.5, 20))}" for name in names]
    header = "TRT-101600-EntropyCalibration2"
    variants = [
        ("valid", "\n".join([header] + lines) + "\n", True),
        ("no_header", "\n".join(lines) + "\n", False),
        ("bad_header", "TRT-10-\n" + "\n".join(lines), False),
        ("unknown_algorithm", "TRT-101600-Best\n" + "\n".join(lines), False),
        ("0x_prefix", header + "\n" + lines[0].replace(": ", ": 0x"), False),
        ("12_digits", header + "\n" + lines[0] + "ffff", False),
        ("scale_zero", header + f"\n{names[0]}: 00000000", False),
        ("scale_inf", header + f"\n{names[0]}: 7f800000", False),
        ("scale_nan", header + f"\n{names[0]}: 7fc00000", False),
        ("no_colon", header + f"\n{names[0]} 3c010204", False),
        ("binary", "\x00\x01\x02", False),
        ("empty", "", False),
        ("duplicate", "\n".join([header, lines[0], lines[0]]), False),
    ]
    for i in range(n):
        kind, text, valid = variants[i % len(variants)]
        data = text.encode("latin-1")
        if kind == "valid" and i >= len(variants):  # later valid ones: a random tensor dropped, still valid
            data = "\n".join([header] + rng.sample(lines, max(1, len(lines) - 1))).encode()
        yield kind, data, valid


def name_map_cases(names: list[str], rng: random.Random, n: int):
    good = {name: name for name in names}
    variants = [
        ("valid", good, True),
        ("to_lists", {k: [v] for k, v in good.items()}, True),
        ("to_null", {k: None for k in good}, None),  # drops everything: refused ("dropped every tensor")
        ("a_list", list(good), False),
        ("int_values", {k: 3 for k in good}, False),
        ("empty_list", {k: [] for k in good}, False),
        ("nested", {"name_map": good}, False),
        ("list_of_ints", {k: [1, 2] for k in good}, False),
        ("empty_name", {k: "" for k in good}, False),
    ]
    for i in range(n):
        kind, value, valid = variants[i % len(variants)]
        yield kind, json.dumps(value).encode(), valid
    yield "not_json", b"{", False


SQUAD_CONTEXT = "TensorRT is a library from NVIDIA for deep learning inference. It builds an engine for a GPU."


def squad_cases(rng: random.Random, n: int):
    def doc(qas, context=SQUAD_CONTEXT, version="1.1"):
        return {"version": version, "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}

    def qa(i, question="What does TensorRT build?", text="an engine", start=None):
        start = SQUAD_CONTEXT.find(text) if start is None else start
        return {"id": f"q{i}", "question": question, "answers": [{"text": text, "answer_start": start}]}

    variants = [
        ("valid", doc([qa(1), qa(2, "Who makes TensorRT?", "NVIDIA")]), True),
        ("empty_question", doc([qa(1, "   ")]), False),
        ("duplicate_ids", doc([qa(1), qa(1, "Who makes TensorRT?", "NVIDIA")]), False),
        ("v2_unanswerable", {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": SQUAD_CONTEXT,
                            "qas": [{"id": "q1", "question": "Why?", "answers": [], "is_impossible": True}]}]}]},
         False),
        ("no_data", {"version": "1.1"}, False),
        ("answer_elsewhere", doc([qa(1, start=3)]), False),
        ("empty_context", doc([qa(1)], context=""), False),
        ("no_questions", doc([]), False),
        ("qas_not_list", {"data": [{"paragraphs": [{"context": SQUAD_CONTEXT, "qas": {"id": 1}}]}]}, False),
        ("id_float", doc([{**qa(1), "id": 1.5}]), False),
    ]
    for i in range(n):
        kind, value, valid = variants[i % len(variants)]
        yield kind, json.dumps(value).encode(), valid
    yield "not_utf8", b"\xff" + json.dumps(variants[0][1]).encode(), False
    yield "truncated", json.dumps(variants[0][1]).encode()[:40], False


def _reads_as(reader):
    def check(out: Path, result) -> str | None:
        if not out.exists():
            return "exit 0 but no output written"
        try:
            reader(out)
        except Exception as e:
            return f"the output does not read back: {e}"
        return None

    return check


def _nothing_written(out: Path, result) -> str | None:
    return f"a dry run wrote {out.name}" if out.exists() else None


@pytest.fixture(scope="module")
def side(work, canonical, fused):
    """(folder for side files, the canonical model's GEMM inputs, some tensor names of the fused graph)."""
    from bertrt.calibrate.tensors import GraphIndex, weight_gemms

    canonical_acts = sorted({act for _n, act in weight_gemms(GraphIndex(onnx.load(canonical)))})
    mapped = json.loads(fused[1].read_text()).values()
    fused_names = sorted({t for v in mapped for t in (v if isinstance(v, list) else [v])})[:12]
    folder = work / "side"
    folder.mkdir()
    return folder, canonical_acts, fused_names


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def test_ranges_files(work, side, canonical, fused):
    folder, canonical_acts, fused_names = side
    rng = random.Random(SEED + 2)
    ranges = Campaign("ranges file", work / "ranges")
    for i, (kind, data, valid) in enumerate(ranges_cases(canonical_acts, rng, N_SIDE)):
        path = _write(folder, f"ranges-{i:02d}.json", data)
        ranges.case(f"{i:02d}-{kind}-cache",
                    lambda out, path=path: ["calibrate", "cache", path, "--trt-version", "10.16", "-o", out],
                    input_ok=valid, check_output=_reads_as(read_cache_independently), out_name="calib.cache")
        ranges.case(f"{i:02d}-{kind}-qdq",
                    lambda out, path=path: ["calibrate", "qdq", canonical, "--ranges", path, "-o", out],
                    input_ok=False if valid is False else None, check_output=_accepts_model)
    for i, (kind, data, valid) in enumerate(ranges_cases(fused_names, rng, N_SIDE)):
        path = _write(folder, f"fused-ranges-{i:02d}.json", data)
        ranges.case(f"{i:02d}-{kind}-build",
                    lambda out, path=path: ["build", fused[0], "-o", out, "--precision", "int8", "--ranges", path,
                                            "--dry-run"],
                    input_ok=valid if valid is not None else False, check_output=_nothing_written, out_name="e.plan")
    ranges.check_deterministic()
    ranges.check()


def test_calibration_caches(work, side, fused):
    folder, _, fused_names = side
    rng = random.Random(SEED + 3)
    cache = Campaign("calibration cache", work / "cache")
    for i, (kind, data, valid) in enumerate(cache_cases(fused_names, rng, N_SIDE)):
        path = _write(folder, f"calib-{i:02d}.cache", data)
        cache.case(f"{i:02d}-{kind}",
                   lambda out, path=path: ["build", fused[0], "-o", out, "--precision", "int8", "--calib-cache", path,
                                           "--dry-run"],
                   input_ok=valid, check_output=_nothing_written, out_name="e.plan")
    cache.check()


def test_name_maps(work, side):
    folder, canonical_acts, _ = side
    rng = random.Random(SEED + 4)
    names = Campaign("name map", work / "names")
    good_ranges = _write(folder, "good-ranges.json", json.dumps({n: 2.0 for n in canonical_acts}).encode())
    for i, (kind, data, valid) in enumerate(name_map_cases(canonical_acts, rng, N_SIDE)):
        path = _write(folder, f"map-{i:02d}.json", data)
        names.case(f"{i:02d}-{kind}",
                   lambda out, path=path: ["calibrate", "cache", good_ranges, "--trt-version", "10.16",
                                           "--name-map", path, "-o", out],
                   input_ok=valid, check_output=_reads_as(read_cache_independently), out_name="calib.cache")
        names.case(f"{i:02d}-{kind}-ranges",
                   lambda out, path=path: ["calibrate", "qat", FIXTURE.parent / "qat_qdq.onnx", "--name-map", path,
                                           "-o", out],
                   input_ok=False if valid is False else None, check_output=_reads_as(read_ranges_independently),
                   out_name="ranges.json")
    names.check_deterministic()
    names.check()


def test_squad_files(work, side, tiny_onnx):
    folder = side[0]
    rng = random.Random(SEED + 5)
    squad = Campaign("SQuAD file", work / "squad")
    for i, (kind, data, valid) in enumerate(squad_cases(rng, N_SIDE)):
        path = _write(folder, f"squad-{i:02d}.json", data)
        # The zoo's tiny model: BERT's vocabulary (the export's is smaller), sequence 128.
        squad.case(f"{i:02d}-{kind}",
                   lambda out, path=path: ["squad", "--onnx", tiny_onnx, "--squad-json", path, "-o", out],
                   input_ok=valid, check_output=_reads_as(lambda p: json.loads(p.read_text())),
                   out_name="predictions.json")
    squad.check()


def test_infer_refuses_empty_questions_and_says_when_there_is_no_answer(tiny_onnx):
    for question in ("", "   "):
        r = bertrt("infer", "--onnx", tiny_onnx, "-p", SQUAD_CONTEXT, "-q", question)
        _record("infer questions", "refused" if r.exit_code == 1 and refusal_problem(r) is None else "bad refusal")
        assert r.exit_code == 1 and refusal_problem(r) is None and "question" in r.stderr, r.output
    r = bertrt("infer", "--onnx", tiny_onnx, "-p", SQUAD_CONTEXT, "-q", "What does TensorRT build?")
    _record("infer questions", "accepted" if r.exit_code == 0 else "bad refusal")
    assert r.exit_code == 0, r.output
    assert "Answer: 'empty'" not in r.stdout


# ---------------------------------------------------------------- write faults


def test_write_faults(work, canonical, monkeypatch):
    campaign = Campaign("write faults", work / "faults")
    folder = work / "fault-targets"
    folder.mkdir()
    a_file = folder / "a-file"
    a_file.write_text("x")
    a_folder = folder / "a-folder"
    a_folder.mkdir()
    ranges = folder / "ranges.json"
    ranges.write_text(json.dumps({"x": 1.0}))
    commands = {
        "convert": lambda out: ["convert", "onnx", FIXTURE, "-o", out],
        "surgery": lambda out: ["surgery", "run", canonical, "-o", out],
        "cache": lambda out: ["calibrate", "cache", ranges, "--trt-version", "10.16", "-o", out],
        "zoo": lambda out: ["zoo", "make", "tiny", "-o", out],
    }
    for name, args in commands.items():
        for where, target in (("output_is_a_folder", a_folder), ("parent_is_a_file", a_file / "out"),
                              ("grandparent_is_a_file", a_file / "sub" / "out")):
            if name == "zoo" and where == "output_is_a_folder":
                target = a_file  # a folder's output in place of which is a file
            before = set(os.listdir(folder))
            r = bertrt(*args(target))
            problem = refusal_problem(r) if r.exit_code else "exit 0"
            if problem is None and set(os.listdir(folder)) != before:
                problem = f"left {sorted(set(os.listdir(folder)) - before)}"
            _record("write faults", "refused" if problem is None else "bad refusal")
            if problem is not None:
                campaign.failures.append(f"{name} {where}: {problem}")
    # No permission, no space: the system's refusals, raised where the bytes are written (root ignores modes).
    for code, where in ((errno.EACCES, "no_permission"), (errno.ENOSPC, "disk_full"), (errno.EROFS, "read_only")):
        for name in ("convert", "surgery", "cache"):
            def refuse(*a, **k):
                raise OSError(code, os.strerror(code))

            out_dir = work / "faults" / f"{name}-{where}"
            out_dir.mkdir(parents=True)
            with monkeypatch.context() as m:
                if name == "cache":
                    m.setattr(Path, "write_text", refuse)
                else:
                    m.setattr(onnx, "save_model", refuse)
                    m.setattr("bertrt.graph_io._write_single_file", refuse)
                r = bertrt(*commands[name](out_dir / "out"))
            problem = refusal_problem(r) if r.exit_code else "exit 0"
            if problem is None and os.strerror(code) not in r.stderr:
                problem = f"the cause is not named: {r.stderr!r}"
            if problem is None and os.listdir(out_dir):
                problem = f"left {os.listdir(out_dir)}"
            _record("write faults", "refused" if problem is None else "bad refusal")
            if problem is not None:
                campaign.failures.append(f"{name} {where}: {problem}")
    campaign.check()


SLOW_SAVE = textwrap.dedent("""
    import signal, sys, time
    import onnx
    # As in a terminal: a job started in the background of a script inherits SIGINT ignored, and Python then
    # installs no KeyboardInterrupt for it (the test would wait 60 s and fail for a reason not bertrt's).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    original = onnx.save_model
    def slow(*args, **kwargs):
        original(*args, **kwargs)
        print("saved", flush=True)
        time.sleep(60)
    onnx.save_model = slow
    from bertrt.cli import main
    sys.argv = ["bertrt", "convert", "onnx", sys.argv[1], "-o", sys.argv[2]]
    main()
""")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_write_leaves_nothing_behind(tmp_path, signum):
    """The real entry point (bertrt.cli.main) in its own process, stopped while the hidden temporary file exists."""
    out = tmp_path / "out" / "model.onnx"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, str(FIXTURE), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "saved", proc.stderr.read()
        assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")], "no hidden temporary to clean"
        proc.send_signal(signum)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    _record("signals", "cleaned" if not list(out.parent.iterdir()) else "bad refusal")
    assert list(out.parent.iterdir()) == []
    assert proc.returncode != 0 and "Traceback" not in proc.stderr.read()


CAMPAIGN_FAMILIES = ("convert onnx (mutated export)", "surgery run (mutated canonical)", "compare (mutated canonical)",
                     "ranges file", "calibration cache", "name map", "SQuAD file", "infer questions", "write faults",
                     "signals")


def test_the_campaign_record():
    """Last in the module (pytest runs it in file order): the whole campaign's counts, as they are printed."""
    if any(family not in RECORD for family in CAMPAIGN_FAMILIES):
        pytest.skip("only the whole campaign (tests/test_fuzz.py, unselected) has a record to check")
    total = Counter()
    for counts in RECORD.values():
        total.update(counts)
    onnx_runs = sum(sum(RECORD[f].values()) for f in CAMPAIGN_FAMILIES[:3])
    assert onnx_runs >= 2 * (N_RAW + N_CANONICAL) - N_CANONICAL and sum(total.values()) >= 700, record_lines()
    assert all(total[k] == 0 for k in FAILED_OUTCOMES), record_lines()
    assert total["refused"] > 0 and total["accepted"] > 0, record_lines()
