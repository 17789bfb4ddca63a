"""Every command's options: each described, one name per meaning, the same defaults across stages."""

import click
import pytest

from bertrt.cli import COMMANDS, cli
from bertrt.contract import DEFAULT_PRECISION, DEFAULT_SEQ, DEFAULT_TARGET


def commands():
    """(path, command) for every leaf command under `bertrt` (importing every stage)."""
    ctx = click.Context(cli)
    out = []

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), path + [name])
        else:
            out.append((" ".join(path), cmd))

    walk(cli, [])
    return out


ALL = commands()


def options(cmd):
    return [p for p in cmd.params if isinstance(p, click.Option)]


def test_every_stage_is_walked():
    assert {path.split()[0] for path, _ in ALL} == set(COMMANDS)
    assert len(ALL) >= 20  # zoo 3, convert 2, surgery 4, calibrate 6, build, infer, squad, perf, compare


@pytest.mark.parametrize("path,cmd", ALL, ids=[p for p, _ in ALL])
def test_every_option_and_argument_is_described(path, cmd):
    undescribed = [max(p.opts, key=len) for p in options(cmd) if not (p.help or "").strip()]
    assert undescribed == [], f"bertrt {path}: options without help"
    text = (cmd.help or "") + (cmd.short_help or "")
    for arg in (p for p in cmd.params if isinstance(p, click.Argument)):
        assert arg.human_readable_name in text, f"bertrt {path}: argument {arg.human_readable_name} not described"
    assert (cmd.help or "").strip(), f"bertrt {path} has no help text"


def test_one_way_to_say_each_option():
    flags = {}
    for path, cmd in ALL:
        for p in options(cmd):
            for opt in p.opts + p.secondary_opts:
                flags.setdefault(opt, set()).add(path)
    assert "--output" not in flags and "--json" not in flags  # -o/--out and --report everywhere
    # Every output file option is -o/--out, and wherever -o is given it means --out.
    for path, cmd in ALL:
        for p in options(cmd):
            if "-o" in p.opts or "--out" in p.opts:
                assert p.opts == ["-o", "--out"], (path, p.opts)
    # The short forms mean one thing: -s is always --seq, -b --batch, -t --target, -r --seed.
    for short, long_ in (("-s", "--seq"), ("-b", "--batch"), ("-t", "--target"), ("-r", "--seed")):
        for path, cmd in ALL:
            for p in options(cmd):
                if short in p.opts:
                    assert long_ in p.opts, (path, p.opts)


def by_name(name):
    return {path: p for path, cmd in ALL for p in options(cmd) if name in p.opts}


def test_the_same_defaults_across_stages():
    targets = by_name("--target")
    assert set(targets) >= {"surgery run", "surgery pass", "build"}
    assert {p.default for p in targets.values()} == {DEFAULT_TARGET}
    precisions = by_name("--precision")
    assert {path: p.default for path, p in precisions.items()} == {
        "surgery run": DEFAULT_PRECISION, "surgery pass": DEFAULT_PRECISION, "build": DEFAULT_PRECISION,
        "compare": None}  # compare: tolerances of the graph's own precision (its help says so)
    assert {tuple(p.type.choices) for p in precisions.values()} == {("fp32", "fp16", "int8")}
    seqs = by_name("--seq")
    assert set(seqs) >= {"convert tf", "calibrate ranges", "calibrate smooth", "calibrate evaluate", "build",
                         "infer", "squad", "perf", "compare"}
    for path, p in seqs.items():
        if path == "convert tf":  # no model yet: the number every other stage falls back to
            assert p.default == DEFAULT_SEQ
        elif path == "convert onnx":  # fixes a free axis only when asked: the source's axis stays by default
            assert p.default is None and p.type.min == 8 and "keep the source's" in p.help
        elif path == "build":  # a list of profile lengths
            assert p.default is None and "else 384" in p.help
        else:  # the model's if fixed, else 384
            assert p.default is None and p.type.min == 8 and f"else {DEFAULT_SEQ}" in p.help, path
    vocabs = by_name("--vocab")
    assert set(vocabs) >= {"infer", "squad", "calibrate ranges", "calibrate smooth", "calibrate evaluate"}
    assert {p.default for p in vocabs.values()} == {None} and len({p.help for p in vocabs.values()}) == 1
    batches = by_name("--batch")
    assert {path: p.default for path, p in batches.items()} == {
        "build": "1", "perf": "1", "squad": 8, "calibrate evaluate": 8, "compare": 1}
    assert "quick check" in batches["compare"].help  # the one that differs says why
