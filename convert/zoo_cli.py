"""``bertrt zoo``: list and make checkpoints."""

from __future__ import annotations

import click

from bertrt import config
from bertrt.options import log, out_option, reporter


def download_items():
    from bertrt.convert.download import ITEMS

    return ITEMS


@click.group()
def zoo():
    """Make BERT SQuAD checkpoints in Google's TF layout (what NGC ships)."""


@zoo.command("list")
def list_models():
    """The models the zoo can make, with their sizes and where the weights come from."""
    rows = []
    for name in config.names("models"):
        m = config.model(name)
        dims = f"{m['num_hidden_layers']}L/{m['hidden_size']}H/{m['num_attention_heads']}A"
        rows.append((name, dims, m["weights"]))
    width = max(len(r[0]) for r in rows)
    for name, dims, weights in rows:
        click.echo(f"{name:<{width}}  {dims:<14}  {weights}")


@zoo.command("make")
@click.argument("name", type=click.Choice(config.names("models")))
@out_option("Checkpoint folder to write.", folder=True)
def make_cmd(name, out):
    """Write checkpoint NAME (`bertrt zoo list`) to a folder: bert_model.ckpt.*, bert_config.json, vocab.txt."""
    from bertrt.convert import zoo as zoo_mod

    m = config.model(name)
    log(f"making {name}: {m['weights']}")
    zoo_mod.make(name, out)
    click.echo(f"wrote {out}")


@zoo.command("import-hf")
@click.argument("folder", type=click.Path(file_okay=False))
@out_option("Checkpoint folder to write.", folder=True)
def import_hf_cmd(folder, out):
    """A Hugging Face BertForQuestionAnswering FOLDER -> a checkpoint in Google's layout (as NGC ships).

    \b
    FOLDER holds config.json, vocab.txt and model.safetensors (or its shards, or pytorch_model.bin).
    The checkpoint folder gets bert_model.ckpt.*, bert_config.json and vocab.txt, weights in float32;
    `bertrt convert tf --checkpoint OUT` then takes it as it takes an NGC checkpoint.
    """
    from bertrt.convert.hf_import import import_hf

    r = import_hf(folder, out)
    c = r.config
    log(f"read {r.weights_file}: {c.num_hidden_layers} layers, hidden {c.hidden_size}, "
        f"{c.num_attention_heads} heads of {c.head_size}")
    click.echo(f"wrote {out} ({r.tensors} variables)")


@zoo.command("download")
@click.argument("name", type=click.Choice(list(download_items())))
@out_option("Folder to download into.", folder=True)
@click.option("--base-url", default=None,
              help="Fetch from this base URL instead (a mirror): files are looked up at BASE/<name>, "
                   "checkpoints at BASE/<model>/versions/19.03.1/zip.")
def download_cmd(name, out, base_url):
    """Download NAME as the former demo's scripts did.

    \b
    squad-v1.1      train-v1.1.json and dev-v1.1.json (SQuAD explorer; sha256 checked)
    bert-*-384/128  NGC's bert_tf_ckpt_{base|large}_qa_squad11_amp_{384|128}:19.03.1, unpacked into a folder
                    (NGC publishes no checksum this project knows: checked as a zip only)
    """
    from bertrt.convert.download import download

    for path in download(name, out, base_url=base_url, progress=reporter()):
        click.echo(f"wrote {path}")
