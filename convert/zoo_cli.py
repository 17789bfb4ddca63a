"""``bertrt zoo``: list and make checkpoints."""

from __future__ import annotations

import click

from bertrt import config


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
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Checkpoint folder to write.")
def make_cmd(name, out):
    """Write checkpoint NAME to a folder: bert_model.ckpt.*, bert_config.json, vocab.txt."""
    from bertrt.convert import zoo as zoo_mod

    m = config.model(name)
    click.echo(f"making {name}: {m['weights']}", err=True)
    zoo_mod.make(name, out)
    click.echo(f"wrote {out}")
