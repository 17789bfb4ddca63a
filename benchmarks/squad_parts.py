"""One row of benchmarks/squad_accuracy.py in parts: the full dev set split into N runs of consecutive
questions, answered by several processes (or machines) and joined into the row's predictions file.

A full-dev row takes 15-40 minutes of one core; in parts it spreads over every core there is, and a run cut
short keeps the parts it finished (each is written as it ends). The backend is squad_accuracy's own (the same
Model, ranges and surgery); joining scores the whole with bertrt's SQuAD metric and writes
WORK/<model>/predictions/<row>.full.json and its .scores.json, which squad_accuracy.py then reuses as a row it made.

    python benchmarks/squad_parts.py run --work W --model minilm-squad-h64 --row int8-minmax-trt11 \\
        --parts 40 --take 0,5,10 --out PARTS [--threads 1]
    python benchmarks/squad_parts.py join --work W --model minilm-squad-h64 --row int8-minmax-trt11 \\
        --parts 40 --from PARTS [--from PARTS2 ...]

Parts are cut by question, so their features are batched differently from a one-process run: answers equal
to it up to float noise in the float parts of a graph (check one part against a row made whole).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import squad_accuracy as sa  # noqa: E402


def part_bounds(questions: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) of each of ``parts`` runs of consecutive questions, sizes differing by at most one."""
    if not 1 <= parts <= questions:
        raise SystemExit(f"--parts must be between 1 and the {questions} questions, not {parts}")
    size, extra = divmod(questions, parts)
    bounds, start = [], 0
    for k in range(parts):
        end = start + size + (k < extra)
        bounds.append((start, end))
        start = end
    return bounds


def part_name(model: str, row: str, k: int, parts: int) -> str:
    return f"{model}.{row}.part{k:03d}-of-{parts:03d}.json"


def run(args):
    from bertrt.run.features import examples_features
    from bertrt.run.squad_predict import answers, feature_logits
    from bertrt.run.tokenization import load_tokenizer

    examples, _ = sa.dev_examples(None, Path(args.work))
    bounds = part_bounds(len(examples), args.parts)
    take = [int(k) for k in args.take.split(",") if k] if args.take else list(range(args.parts))
    bad = [k for k in take if not 0 <= k < args.parts]
    if bad:
        raise SystemExit(f"--take {bad[0]}: parts are numbered 0 to {args.parts - 1}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [k for k in take if not (out / part_name(args.model, args.row, k, args.parts)).exists()]
    if not todo:
        sa.log(f"{args.model} {args.row}: parts {args.take or 'all'} already in {out}")
        return
    model = sa.make_model(args.model, Path(args.work), args.calib_num)
    model.threads = args.threads
    tokenizer = load_tokenizer(model.vocab)
    backend = model.backend(args.row)
    sa.log(f"{args.model} {args.row}: {backend!r}; parts {','.join(map(str, todo))} of {args.parts}")
    for k in todo:
        start, end = bounds[k]
        part = examples[start:end]
        per_example = examples_features(tokenizer, part, max_seq_length=sa.SEQ)
        flat = [f for feats in per_example for f in feats]
        began = time.perf_counter()
        logits = feature_logits(backend, flat, seq=sa.SEQ, batch=args.batch, progress=sa.progress(),
                                label=f"{args.model} {args.row} part {k}")
        texts = {q: p.text for q, p in answers(part, per_example, logits).items()}
        record = {"model": args.model, "row": args.row, "part": k, "parts": args.parts, "questions": [start, end],
                  "features": len(flat), "seconds": time.perf_counter() - began,
                  "int8_gemms": getattr(backend, "int8_gemms", 0), "answers": texts}
        path = out / part_name(args.model, args.row, k, args.parts)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        tmp.replace(path)  # a part is there whole or not at all
        sa.log(f"{args.model} {args.row}: part {k} ({end - start} questions, {len(flat)} features) -> {path}")
    backend.close()


def join(args):
    examples, _ = sa.dev_examples(None, Path(args.work))
    bounds = part_bounds(len(examples), args.parts)
    found = {}
    for folder in args.sources:
        for k in range(args.parts):
            path = Path(folder) / part_name(args.model, args.row, k, args.parts)
            if path.exists() and k not in found:
                found[k] = json.loads(path.read_text())
    missing = [k for k in range(args.parts) if k not in found]
    if missing:
        raise SystemExit(f"{args.model} {args.row}: {len(missing)} of {args.parts} parts missing "
                         f"({', '.join(map(str, missing[:10]))}{' ...' if len(missing) > 10 else ''})")
    texts, seconds, features = {}, 0.0, 0
    for k, (start, end) in enumerate(bounds):
        record = found[k]
        ids = [e.qas_id for e in examples[start:end]]
        if record["questions"] != [start, end] or sorted(record["answers"]) != sorted(ids):
            raise SystemExit(f"{args.model} {args.row}: part {k} answers other questions than dev's {start}-{end}")
        texts.update(record["answers"])
        seconds += record["seconds"]
        features += record["features"]
    gemms = {r["int8_gemms"] for r in found.values()}
    out = Path(args.work) / args.model / "predictions" / f"{args.row}.{sa.dev_tag(None, examples)}.json"
    result = sa.save_row(out, args.model, args.row, examples, texts, features, seconds,
                         gemms.pop() if len(gemms) == 1 else sorted(gemms), parts=args.parts)
    sa.log(f"{args.model} {args.row}: {args.parts} parts joined -> {out}: EM {result['exact_match']:.2f} "
           f"F1 {result['f1']:.2f} ({seconds:.0f} s of inference in all)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "join"):
        p = sub.add_parser(name)
        p.add_argument("--work", required=True, help="squad_accuracy.py's --work folder (models, ranges)")
        p.add_argument("--model", required=True, choices=sa.MODELS)
        p.add_argument("--row", required=True, choices=sa.ALL_ROWS)
        p.add_argument("--parts", type=int, required=True, help="how many parts the dev set is cut into")
    r = sub.choices["run"]
    r.add_argument("--take", default="", help="comma-separated part numbers to answer [default: all]")
    r.add_argument("--out", required=True, help="folder the parts are written to (one JSON file each)")
    r.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads [default: 1]")
    r.add_argument("--batch", type=int, default=8, help="features per inference call")
    r.add_argument("--calib-num", type=int, default=100, help="calibration features, as squad_accuracy.py's")
    sub.choices["join"].add_argument("--from", dest="sources", action="append", required=True,
                                     help="a folder with parts (repeat for several)")
    args = ap.parse_args()
    (run if args.cmd == "run" else join)(args)


if __name__ == "__main__":
    main()
