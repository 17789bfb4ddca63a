"""``bertrt convert``: any source onto the canonical ONNX model."""

from __future__ import annotations

import click

from bertrt import contract
from bertrt.options import log as _log
from bertrt.options import out_option, seq_option


@click.group()
def convert():
    """Turn a TF checkpoint or an exporter's ONNX into the canonical model.

    \b
    Canonical model: inputs input_ids, segment_ids, input_mask (int32 [batch, seq]),
    output logits (float32 [batch, seq, 2]: start, end).
    """


@convert.command("tf")
@click.option("--checkpoint", "-c", required=True, type=click.Path(),
              help="Checkpoint folder (with bert_config.json) or prefix, e.g. ckpt/bert_model.ckpt.")
@click.option("--config", type=click.Path(), default=None,
              help="bert_config.json [default: the one beside the checkpoint].")
@seq_option(fixed_default=True)
@click.option("--dynamic-seq", is_flag=True, help="Leave the sequence axis dynamic instead of fixing --seq.")
@click.option("--opset", type=click.IntRange(min=17), default=17, show_default=True,
              help="ONNX opset to write (17 is the first with LayerNormalization, which the passes match).")
@out_option("ONNX file to write.")
def convert_tf(checkpoint, config, seq, dynamic_seq, opset, out):
    """BERT SQuAD TF checkpoint (Google / NGC layout) -> canonical ONNX, through tf2onnx.

    Checks ONNX Runtime against TensorFlow on random inputs and prints the largest difference.
    Batch is always dynamic.
    """
    from bertrt.convert.tf_convert import convert_checkpoint

    r = convert_checkpoint(checkpoint, out, config=config, seq=None if dynamic_seq else seq, opset=opset,
                           log=_log)
    c = r.config
    click.echo(f"wrote {out}: {c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} heads, "
               f"seq {'dynamic' if r.seq is None else r.seq}, opset {r.opset}")
    click.echo(f"max |TF - ONNX Runtime| on logits {list(r.check_shape)}: {r.max_abs_diff:.3g}")


@convert.command("onnx")
@click.argument("src", type=click.Path())
@out_option("ONNX file to write.")
@click.option("--start-logits", default=None, metavar="NAME",
              help="The output holding the start logits [batch, seq] (with --end-logits), for outputs whose "
                   "names do not say start/end (keras2onnx's output_1). Other outputs are dropped.")
@click.option("--end-logits", default=None, metavar="NAME", help="The output holding the end logits [batch, seq].")
@click.option("--logits", default=None, metavar="NAME",
              help="The output holding the logits [batch, seq, 2] (start, end), when there are other outputs.")
@click.option("-s", "--seq", type=click.IntRange(min=contract.MIN_SEQ), default=None,
              help="Fix a free sequence axis at this length (at most the position table's rows), as "
                   "`convert tf --seq` does: e.g. the INT8 attention plugin needs a fixed 128 or 384 "
                   "[default: keep the source's].")
def convert_onnx_cmd(src, out, start_logits, end_logits, logits, seq):
    """SRC, a PyTorch / Hugging Face / keras2onnx export or a QAT (Q/DQ) ONNX -> canonical ONNX.

    Upgrades opsets below 17 (onnx.version_converter), names unnamed nodes, renames inputs
    (token_type_ids -> segment_ids, attention_mask -> input_mask), makes int64 ids int32 at the edge, joins
    start/end logits into logits [batch, seq, 2], infers the output shapes again, keeps Q/DQ nodes, folds
    constants, and runs the result once on ONNX Runtime before writing it.
    """
    from bertrt.convert.onnx_intake import convert_onnx

    report = convert_onnx(src, out, start_logits=start_logits, end_logits=end_logits, logits=logits, seq=seq)
    for line in report.get("changes", []):
        _log(f"  {line}")
    click.echo(f"wrote {out}")
