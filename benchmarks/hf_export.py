"""Export a Hugging Face BertForQuestionAnswering folder to ONNX as a user would (torch.onnx, opset 17).

torch and transformers are not bertrt dependencies; this script (and the measurements that call it) needs
them. The export takes the weights in float32 and leaves batch and sequence free:

    python benchmarks/hf_export.py ../shared/models/minilm-squad -o minilm-squad.hf.onnx
    bertrt convert onnx minilm-squad.hf.onnx -o model.onnx
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

OPSET = 17
INPUTS = ("input_ids", "token_type_ids", "attention_mask")


def export(folder: str | os.PathLike, out: str | os.PathLike, opset: int = OPSET) -> Path:
    """Write the ONNX export of the HF model in ``folder`` to ``out`` (legacy exporter, eager attention)."""
    import torch
    from transformers import BertForQuestionAnswering

    model = BertForQuestionAnswering.from_pretrained(os.fspath(folder), dtype=torch.float32,
                                                     attn_implementation="eager").eval()

    class Wrapped(torch.nn.Module):  # positional inputs, (start, end) outputs
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, token_type_ids, attention_mask):
            o = self.model(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
            return o.start_logits, o.end_logits

    ids = torch.ones((2, 16), dtype=torch.int64)
    mask = torch.ones((2, 16), dtype=torch.int64)
    mask[1, 12:] = 0
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(Wrapped(), (ids, torch.zeros_like(ids), mask), os.fspath(out), opset_version=opset,
                          input_names=list(INPUTS), output_names=["start_logits", "end_logits"],
                          dynamic_axes={n: {0: "batch", 1: "seq"} for n in [*INPUTS, "start_logits", "end_logits"]},
                          dynamo=False)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--opset", type=int, default=OPSET)
    args = ap.parse_args()
    print(f"wrote {export(args.folder, args.out, args.opset)}")


if __name__ == "__main__":
    main()
