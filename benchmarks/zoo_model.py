"""The canonical ONNX model of a zoo checkpoint, made once in a work folder and reused by the benchmarks."""

from __future__ import annotations

import sys
from pathlib import Path


def zoo_model(work: Path, name: str, seq: int | None) -> Path:
    """work/<name>-<seq>.onnx, converted from work/<name> (made by the zoo if missing)."""
    from bertrt.convert import zoo
    from bertrt.convert.tf_convert import convert_checkpoint

    ckpt = work / name
    model = work / f"{name}-{seq or 'dynamic'}.onnx"
    if not model.exists():
        if not (ckpt / "bert_config.json").exists():
            print(f"making the {name} checkpoint in {ckpt} ...", file=sys.stderr)
            zoo.make(name, ckpt)
        print(f"converting it to {model} ...", file=sys.stderr)
        convert_checkpoint(ckpt, model, seq=seq, log=lambda m: None)
    return model
