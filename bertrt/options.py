"""The command-line options the stages share, each defined once, with one default said in its help.

Every command builds its options from these, so ``--seq`` means the same, takes the same values and
defaults the same way in every stage (where a stage differs, its help says why). Also here: the
progress renderer and the log lines of the command being run.
"""

from __future__ import annotations

import click

from bertrt import config, contract
from bertrt import progress as _progress

EXIT_TENSORRT = "Exit status 3: TensorRT is not installed here (nothing is written)."


def target_option(func):
    """``-t/--target``: which plugin versions and precision style (configs/targets)."""
    return click.option(
        "-t", "--target", type=click.Choice(config.names("targets")), default=contract.DEFAULT_TARGET,
        show_default=True,
        help="TensorRT target (configs/targets): trt10-legacy (TensorRT 10.0 to 10.x, the former demo's V2 plugin "
             "versions), trt10 (TensorRT 10.6 to 10.x, IPluginV3 versions), trt11 (TensorRT 11, strongly typed: FP16 "
             "and INT8 in the graph). Give surgery and build the same one.")(func)


def precision_option(func=None, *, help: str | None = None, tolerances: bool = False):
    """``--precision``: fp32, fp16 or int8, fp16 by default (what a BERT engine is built in); surgery and
    build must agree. With ``tolerances`` (compare) it picks tolerances and defaults to the graph's own."""
    def apply(f):
        if tolerances:
            return click.option(
                "--precision", type=click.Choice(contract.PRECISIONS), default=None,
                help=help or "Precision whose default tolerances apply [default: the lowest the plugin nodes run "
                             "in].")(f)
        return click.option(
            "--precision", type=click.Choice(contract.PRECISIONS), default=contract.DEFAULT_PRECISION,
            show_default=True,
            help=(help or "Precision of the plugins and the engine.") + " The default, fp16, is what BERT runs in "
                 "on TensorRT; give surgery and build the same one.")(f)

    return apply(func) if func is not None else apply


def seq_option(func=None, *, many: bool = False, fixed_default: bool = False):
    """``-s/--seq``: the sequence length. Default: the model's if its sequence axis is fixed, else 384 (the
    former demo's SQuAD length). ``many``: a comma-separated list (engine profiles). ``fixed_default``: there is
    no model yet (convert), so 384 itself."""
    def apply(f):
        if many:
            return click.option(
                "-s", "--seq", "seq", default=None, metavar="S[,S...]",
                help=f"Sequence lengths, comma-separated, one optimization profile each "
                     f"[default: the graph's if fixed, else {contract.DEFAULT_SEQ}].")(f)
        if fixed_default:
            return click.option(
                "-s", "--seq", type=click.IntRange(min=contract.MIN_SEQ), default=contract.DEFAULT_SEQ,
                show_default=True, help="Sequence length the model is fixed at (the former demo's SQuAD length "
                                        "by default).")(f)
        return click.option(
            "-s", "--seq", type=click.IntRange(min=contract.MIN_SEQ), default=None,
            help=f"Sequence length, at least {contract.MIN_SEQ} [default: the model's if fixed, else "
                 f"{contract.DEFAULT_SEQ}, the former demo's SQuAD length].")(f)

    return apply(func) if func is not None else apply


def batch_option(func=None, *, many: bool = False, default: int = 8, help: str | None = None):
    """``-b/--batch``. ``many``: comma-separated batch sizes (engine profiles, benchmark runs), 1 by default (the
    former demo's). Otherwise how many features each run takes: 8 by default (the results do not depend on it;
    a backend splits what an engine cannot take at once)."""
    def apply(f):
        if many:
            return click.option("-b", "--batch", "batch", default="1", show_default=True, metavar="B[,B...]",
                                help=help or "Batch sizes, comma-separated.")(f)
        return click.option("-b", "--batch", type=click.IntRange(min=1), default=default, show_default=True,
                            help=help or "Features per run. The results do not depend on it; 8 keeps a CPU busy, "
                                         "and an engine built for fewer gets them split.")(f)

    return apply(func) if func is not None else apply


def vocab_option(func):
    """``--vocab``: a WordPiece vocab.txt, BERT's uncased one by default."""
    return click.option("--vocab", type=click.Path(dir_okay=False), default=None,
                        help="WordPiece vocab.txt of the model [default: BERT's uncased vocabulary, which the zoo's "
                             "models and NGC's checkpoints use].")(func)


def writable(ctx, param, value, folder: bool = False):
    """A click callback for an option naming a file (``folder``: a folder) to write: refused before the work,
    not after it (a folder or file in its place, a file where its folder should be, no permission to write)."""
    from bertrt.atomic import check_destination, check_folder_destination

    if value is not None:  # a BertrtError here is one line naming the path, as any bad input's (bertrt.cli)
        (check_folder_destination if folder else check_destination)(value)
    return value


def writable_folder(ctx, param, value):
    return writable(ctx, param, value, folder=True)


def out_option(help: str, *, required: bool = True, default: str | None = None, folder: bool = False):
    """``-o/--out``: what the command writes."""
    # A plain Path: what is in its place is the callback's to refuse, as one line naming it.
    return click.option("-o", "--out", type=click.Path(), metavar="DIR" if folder else "FILE",
                        required=required and default is None, default=default, show_default=default is not None,
                        help=help, callback=writable_folder if folder else writable)


def report_option(help: str):
    """``--report``: also write what the command found or measured, as JSON."""
    return click.option("--report", "report_path", type=click.Path(), metavar="FILE", default=None, help=help,
                        callback=writable)


def amax_option(help: str = "JSON {tensor: amax} (bertrt calibrate ranges): the scales of plugin nodes that run "
                            "in INT8 on the CPU reference."):
    return click.option("--amax", "amax_path", type=click.Path(dir_okay=False), default=None, help=help)


def seed_option(default: int = 0):
    return click.option("-r", "--seed", type=int, default=default, show_default=True,
                        help="Seed of the random inputs (the same seed, the same inputs).")


def squad_json_option(help: str, required: bool = True):
    return click.option("--squad-json", type=click.Path(dir_okay=False), required=required, default=None,
                        help=help + " (SQuAD v1.1 format, e.g. dev-v1.1.json from 'bertrt zoo download squad-v1.1').")


def int_list(text: str, what: str) -> tuple[int, ...]:
    """A comma-separated list of positive integers (``--batch 1,8``), or a usage error naming the option."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=what) from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"expected positive integers, got {text!r}", param_hint=what)
    return values


# ---------------------------------------------------------------- progress and log lines of a command


def reporter():
    """The progress renderer of the command being run: made once per invocation and closed with it."""
    root = click.get_current_context().find_root()
    r = root.meta.get("bertrt.progress")
    if r is None:
        r = root.meta["bertrt.progress"] = _progress.for_stream(click.get_text_stream("stderr"))
        root.call_on_close(r.close)
    return r


def log(message: str) -> None:
    """A line on stderr saying what the command does now (in a log, repeated with its time while it runs)."""
    reporter().log(message)


def max_answer_length_option(func):
    return click.option("--max-answer-length", type=click.IntRange(min=1), default=30, show_default=True,
                        help="Longest answer in word pieces (Google's run_squad.py's limit).")(func)
