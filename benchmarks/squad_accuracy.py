"""SQuAD v1.1 accuracy of every path bertrt offers, on real fine-tuned BERTs: the former demo's accuracy table.

For each model (Hugging Face folders under ../shared/models): `zoo import-hf` -> `convert tf --seq 384` (the
canonical model, as an NGC checkpoint becomes), then one row per path, each scored with bertrt's SQuAD v1.1
metric on the official dev set (seq 384, doc stride 128, n-best 20, max answer 30):

  fp32-ort             canonical FP32 on ONNX Runtime (the baseline of every delta)
  fp32-hf-onnx         the same weights exported by torch.onnx (benchmarks/hf_export.py, needs torch and
                       transformers) through `convert onnx`, on ONNX Runtime: must answer as fp32-ort
  fused-fp32           trt10 surgery, FP32 plugins, on the CPU reference: must answer as fp32-ort
  fused-fp16           trt10 surgery, FP16 plugins
  varseqlen-fp16       trt10 surgery with var-seqlen packing (FP16)
  int8-<recipe>-trt10  TensorRT 10 implicit INT8, simulated (INT8 plugins and every GEMM whose input and output
                       have a range), as `bertrt squad --amax` runs it
  int8-<recipe>-trt11  TensorRT 11: the FP16 strongly typed graph with Q/DQ on its GEMMs (`calibrate qdq`)

The QAT model (minilm-squad-qat: ../shared/models/minilm-squad-qat/model.qat.onnx, minilm-squad's vocab) has
its own rows, against its own ONNX Runtime run (what its user has), and the FP32 minilm-squad row beside them
(from the same --work folder, when that row was made):

  qat-ort              the QAT model through `convert onnx`, on ONNX Runtime (it runs the Q/DQ): the baseline
  qat-unified-ort      the same with the Q, K and V inputs' scales unified to the largest, on ONNX Runtime: what
                       the one input scale of the fused QKV GEMM costs (`calibrate qat` notes those tensors)
  qat-trt10            trt10 surgery at INT8, ranges from `calibrate qat --fill` (the model's scales, measured ranges
                       for its GEMM outputs), TensorRT 10 implicit INT8 simulated as `bertrt squad --amax` runs it
  qat-trt11            trt11 surgery at INT8 + `calibrate qdq` with the model's ranges (its own weight grid)

INT8 recipes (calibrated on the first feature of each of the first --calib-num questions of
train-v1.1.first44.json, which dev does not share):
  percentile / minmax / entropy   plain, every GEMM in INT8
  float-ffn                       plain minmax, the feed-forward GEMMs (ffn1, ffn2) in float
  smooth                          `calibrate smooth` first, minmax, every GEMM in INT8
  smooth-ffn2                     smoothed, minmax, ffn2 (the GEMM after GELU) in float
  smooth-ffn                      smoothed, minmax, ffn1 and ffn2 in float          (make engine's recipe)

Every row's predictions are written to WORK/<model>/predictions/<row>.json ({question id: answer}, what the
official evaluate-v1.1.py reads) and cached: a second run reuses them (delete a file to redo its row), so the
full table can be made in several runs. benchmarks/squad_parts.py makes one row in parts, over several processes or
machines, and joins them into that file. With --limit N only the first N dev questions are asked (a dev file of
them is written beside, for the official script).

    python benchmarks/squad_accuracy.py --work build/squad-accuracy [--models minilm-squad,minilm-squad-h64]
        [--rows fp32-ort,fused-fp16,...] [--limit 1000] [--official path/to/evaluate-v1.1.py]
    python benchmarks/squad_accuracy.py --work build/squad-accuracy --models minilm-squad,minilm-squad-qat
        --rows fp32-ort,qat-ort,qat-unified-ort,qat-trt10,qat-trt11 [--limit 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as bertrt's CLI sets it (bertrt/cli.py)

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BERTRT_SHARED", ROOT.parent / "shared"))
MODELS = ("minilm-squad", "minilm-squad-h64", "minilm-squad-qat")
QAT_MODELS = {"minilm-squad-qat": ("minilm-squad-qat/model.qat.onnx", "minilm-squad")}  # export, its float model
SEQ = 384
FLOAT_ROWS = ("fp32-ort", "fp32-hf-onnx", "fused-fp32", "fused-fp16", "varseqlen-fp16")
RECIPES = {  # name -> (smoothed, calibration method, GEMM groups in float)
    "percentile": (False, "percentile", ()),
    "minmax": (False, "minmax", ()),
    "entropy": (False, "entropy", ()),
    "float-ffn": (False, "minmax", ("ffn1", "ffn2")),
    "smooth": (True, "minmax", ()),
    "smooth-ffn2": (True, "minmax", ("ffn2",)),
    "smooth-ffn": (True, "minmax", ("ffn1", "ffn2")),
}
MAKE_ENGINE_RECIPE = "smooth-ffn"  # SMOOTH=1, CALIB_METHOD=minmax, FLOAT_GEMMS=ffn1,ffn2 (the Makefile's, real models)
INT8_ROWS = tuple(f"int8-{r}-{t}" for r in RECIPES for t in ("trt10", "trt11"))
QAT_ROWS = ("qat-ort", "qat-unified-ort", "qat-trt10", "qat-trt11")
ALL_ROWS = FLOAT_ROWS + INT8_ROWS + QAT_ROWS


def progress():
    from bertrt.progress import for_stream

    return for_stream(sys.stderr)
FP16_BOUND, INT8_BOUND = 0.1, 1.0  # F1 points from fp32-ort (the targets)
QAT_BOUND = 0.3  # F1 points from qat-ort, either way (#16's target)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Model:
    """One real model: its files in WORK/<name>, made on first use and reused."""

    rows = FLOAT_ROWS + INT8_ROWS
    baseline = "fp32-ort"

    threads = 0  # ONNX Runtime threads per session (0: its default, every core); --threads
    float64_gemms = False  # --float64-gemms

    def __init__(self, name: str, work: Path, calib_num: int):
        self.name, self.dir, self.calib_num = name, work / name, calib_num
        self.hf = SHARED / "models" / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fused, self._ranges, self._smoothed = {}, {}, None

    @property
    def vocab(self) -> Path:
        return self.hf / "vocab.txt"

    def canonical(self) -> Path:
        from bertrt.convert.hf_import import import_hf
        from bertrt.convert.tf_convert import convert_checkpoint

        path = self.dir / f"model-{SEQ}.onnx"
        if not path.exists():
            log(f"{self.name}: zoo import-hf + convert tf --seq {SEQ} -> {path}")
            import_hf(self.hf, self.dir / "checkpoint")
            convert_checkpoint(self.dir / "checkpoint", path, seq=SEQ, log=lambda m: None)
        return path

    def hf_onnx(self) -> Path:
        from bertrt.convert.onnx_intake import convert_onnx

        path = self.dir / "model-hf.onnx"
        if not path.exists():
            sys.path.insert(0, str(Path(__file__).parent))
            from hf_export import export

            log(f"{self.name}: torch.onnx export + convert onnx -> {path}")
            export(self.hf, self.dir / "export.onnx")
            convert_onnx(self.dir / "export.onnx", path)
        return path

    def smoothed(self, float_groups=()) -> Path:
        from bertrt.calibrate import smooth
        from bertrt.calibrate.mixed import float_gemms
        from bertrt.onnx_io import load_model, save_model

        path = self.dir / f"model-{SEQ}.smooth{'-' + '-'.join(float_groups) if float_groups else ''}.onnx"
        if not path.exists():
            log(f"{self.name}: calibrate smooth ({self.calib_num} train features) -> {path}")
            canonical = load_model(self.canonical())
            skip = float_gemms(canonical, float_groups) if float_groups else []
            plan = smooth.plan(canonical, self.feeds(), skip_gemms=skip, progress=progress())
            save_model(smooth.apply(canonical, plan), path)
        return path

    def feeds(self):
        from bertrt.calibrate.data_source import squad_feeds

        return squad_feeds(SHARED / "data/squad/train-v1.1.first44.json", self.vocab, SEQ, self.calib_num)

    def fused(self, source: Path, target: str, precision: str, varseqlen: bool = False):
        """(fused model, name map) of a canonical model, cached in memory."""
        from bertrt.surgery import pipeline

        key = (source, target, precision, varseqlen)
        if key not in self._fused:
            result = pipeline.run_file(source, target=target, precision=precision, varseqlen=varseqlen)
            if not result.complete:
                raise SystemExit(f"{self.name}: surgery {target} {precision} left the encoder partly fused")
            notes = [n for r in result.reports if r.name == "precision" for n in r.notes]
            log(f"{self.name}: surgery {target} {precision}{' varseqlen' if varseqlen else ''}: " + "; ".join(notes))
            self._fused[key] = (result.model, result.name_map())
        return self._fused[key]

    def ranges(self, source: Path, method: str) -> dict[str, float]:
        """Canonical ranges of ``source`` (cached as JSON in WORK)."""
        from bertrt.calibrate.stats import calibrate
        from bertrt.ranges import read_ranges, write_ranges

        path = self.dir / f"ranges-{source.stem}-{method}.json"
        if not path.exists():
            log(f"{self.name}: calibrate ranges {source.name} ({method}, {self.calib_num} train features)")
            result = calibrate(source, self.feeds(), method=method, progress=progress())
            write_ranges(path, result.amax)  # the ranges format's one writer and reader (bertrt.ranges)
        return read_ranges(path)

    def backend(self, row: str):
        """The backend a row runs on (see the module text)."""
        from bertrt.run.backends import OrtBackend, ReferenceBackend

        if row == "fp32-ort":
            return OrtBackend(self.canonical(), threads=self.threads)
        if row == "fp32-hf-onnx":
            return OrtBackend(self.hf_onnx(), threads=self.threads)
        if row in ("fused-fp32", "fused-fp16", "varseqlen-fp16"):
            model, _ = self.fused(self.canonical(), "trt10", row.split("-")[1], varseqlen=row.startswith("var"))
            return ReferenceBackend(None, model, threads=self.threads)
        recipe, target = row[len("int8-"):].rsplit("-", 1)
        smoothed, method, groups = RECIPES[recipe]
        return self.int8_backend(smoothed, method, groups, target)

    def int8_backend(self, smoothed: bool, method: str, groups, target: str):
        from bertrt.calibrate.mixed import float_gemm_drops, float_gemms
        from bertrt.calibrate.qdq import insert_qdq
        from bertrt.name_map import apply_name_map
        from bertrt.onnx_io import load_model
        from bertrt.run.backends import ReferenceBackend, implicit_int8_backend

        source = self.smoothed(groups) if smoothed else self.canonical()
        amax = self.ranges(source, method)
        if target == "trt11":
            graph, names = self.fused(source, "trt11", "int8")
            q, report = insert_qdq(graph, apply_name_map(amax, names, drop_unmapped=True),
                                   skip_nodes=float_gemms(graph, groups) if groups else ())
            backend = ReferenceBackend(None, q, threads=self.threads)
            backend.int8_gemms = len(report.quantized)
            return backend
        graph, names = self.fused(source, "trt10", "int8")
        drops = float_gemm_drops(load_model(source, load_external_data=False), groups) if groups else set()
        ranges = apply_name_map({k: v for k, v in amax.items() if k not in drops}, names, drop_unmapped=True)
        return implicit_int8_backend(None, graph, ranges, self.threads)


class QatModel(Model):
    """A QAT (Q/DQ) export: `convert onnx` makes its canonical model; its rows are QAT_ROWS."""

    rows = QAT_ROWS
    baseline = "qat-ort"

    def __init__(self, name: str, work: Path, calib_num: int):
        super().__init__(name, work, calib_num)
        export, float_model = QAT_MODELS[name]
        self.export, self.hf = SHARED / "models" / export, SHARED / "models" / float_model
        self.float_model = float_model

    def canonical(self) -> Path:
        from bertrt.convert.onnx_intake import convert_onnx

        path = self.dir / "model.onnx"
        if not path.exists():
            log(f"{self.name}: convert onnx {self.export} -> {path}")
            convert_onnx(self.export, path)
        return path

    def unified(self) -> Path:
        from bertrt.calibrate.qat import unify_scales
        from bertrt.onnx_io import load_model, save_model

        path = self.dir / "model.unified.onnx"
        if not path.exists():
            model, unified = unify_scales(load_model(self.canonical()))
            log(f"{self.name}: {len(unified)} tensors quantized with several scales, unified to the largest -> {path}")
            save_model(model, path)
        return path

    def backend(self, row: str):
        from bertrt.calibrate.qat import fill_ranges, qat_ranges
        from bertrt.calibrate.qdq import insert_qdq
        from bertrt.onnx_io import load_model
        from bertrt.ranges import apply_name_map
        from bertrt.run.backends import OrtBackend, ReferenceBackend, implicit_int8_backend

        if row == "qat-ort":
            return OrtBackend(self.canonical(), threads=self.threads)
        if row == "qat-unified-ort":
            return OrtBackend(self.unified(), threads=self.threads)
        target = row.rsplit("-", 1)[1]
        qat = load_model(self.canonical(), load_external_data=False)
        graph, names = self.fused(self.canonical(), target, "int8")
        own = apply_name_map(qat_ranges(qat).amax, names, drop_unmapped=True)
        if target == "trt11":  # `calibrate qat` + `calibrate qdq`: the model's weight grid, its activation scales
            q, report = insert_qdq(graph, own)
            backend = ReferenceBackend(None, q, threads=self.threads)
            backend.int8_gemms = len(report.quantized)
            return backend
        # `calibrate ranges --method minmax` + `calibrate qat --fill`, as make engine runs them
        measured = apply_name_map(self.ranges(self.canonical(), "minmax"), names, drop_unmapped=True)
        return implicit_int8_backend(None, graph, {**fill_ranges(qat, own, measured, names), **own}, self.threads)


def make_model(name: str, work: Path, calib_num: int) -> Model:
    return (QatModel if name in QAT_MODELS else Model)(name, work, calib_num)


def dev_examples(limit: int | None, work: Path):
    """(examples, dev file for the official script) of the first ``limit`` dev questions (all: the official file)."""
    from bertrt.run.squad_data import read_squad

    dev = SHARED / "data/squad/dev-v1.1.json"
    examples = read_squad(dev)
    if limit is None or limit >= len(examples):
        return examples, dev
    keep = {e.qas_id for e in examples[:limit]}
    data = json.loads(dev.read_text())
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            paragraph["qas"] = [qa for qa in paragraph["qas"] if qa["id"] in keep]
        article["paragraphs"] = [p for p in article["paragraphs"] if p["qas"]]
    data["data"] = [a for a in data["data"] if a["paragraphs"]]
    sliced = work / f"dev-v1.1.first{limit}.json"
    work.mkdir(parents=True, exist_ok=True)  # kernels_prep asks before any model is made in work
    sliced.write_text(json.dumps(data))
    return examples[:limit], sliced


def dev_tag(limit, examples) -> str:
    """How a row's predictions file names the questions it answered: WORK/<model>/predictions/<row>.<tag>.json."""
    return "full" if limit is None else f"first{len(examples)}"


def run_row(model: Model, row: str, examples, per_example, flat, out: Path, batch: int) -> dict:
    """Predict and score one row (or read its cached result)."""
    from bertrt.run.squad_predict import answers, feature_logits

    meta = out.with_suffix(".scores.json")
    if out.exists() and meta.exists():
        cached = json.loads(meta.read_text())
        if cached.get("questions") == len(examples):
            return cached
    backend = model.backend(row)
    wide = model.float64_gemms and hasattr(backend, "runner")  # the CPU reference's rows, not ONNX Runtime's
    if wide:
        backend.runner.float64_gemms = True
    log(f"{model.name} {row}: {backend!r}{', float MatMuls in float64' if wide else ''}")
    start = time.perf_counter()
    logits = feature_logits(backend, flat, seq=SEQ, batch=batch, progress=progress(), label=f"{model.name} {row}")
    texts = {k: p.text for k, p in answers(examples, per_example, logits).items()}
    seconds = time.perf_counter() - start
    backend.close()
    result = save_row(out, model.name, row, examples, texts, len(flat), seconds, getattr(backend, "int8_gemms", 0))
    log(f"{model.name} {row}: EM {result['exact_match']:.2f} F1 {result['f1']:.2f}, "
        f"{len(examples) / seconds:.2f} questions/s")
    return result


def save_row(out: Path, model: str, row: str, examples, texts: dict[str, str], features: int, seconds: float,
             int8_gemms, **extra) -> dict:
    """Score a row's answers and write its predictions file and .scores.json (what run_row reuses): their one
    writer."""
    from bertrt.run.squad_metric import evaluate

    scores = evaluate(examples, texts)
    result = {"row": row, "model": model, "questions": len(examples), "features": features,
              "exact_match": scores["exact_match"], "f1": scores["f1"], "seconds": seconds,
              "int8_gemms": int8_gemms, **extra}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(texts, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
    out.with_suffix(".scores.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return result


def official(script: Path, dev: Path, predictions: Path) -> tuple[float, float]:
    """EM/F1 from SQuAD's evaluate-v1.1.py (NVIDIA's demo copy also takes a reference F1, which it only
    compares with: 0 is given to it)."""
    cmd = [sys.executable, str(script), str(dev), str(predictions)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        run = subprocess.run(cmd + ["0"], capture_output=True, text=True, check=True)
    d = json.loads(run.stdout.strip().splitlines()[-1])
    return d["exact_match"], d["f1"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="build/squad-accuracy", help="folder for models, ranges and predictions")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rows", default=",".join(ALL_ROWS), help=f"comma-separated, of: {', '.join(ALL_ROWS)}")
    ap.add_argument("--limit", type=int, default=None, help="only the first N dev questions [default: all 10,570]")
    ap.add_argument("--calib-num", type=int, default=100, help="calibration features (train questions)")
    ap.add_argument("--batch", type=int, default=8, help="features per inference call")
    ap.add_argument("--threads", type=int, default=0,
                    help="ONNX Runtime threads per session [default: every core]; for several runs side by side")
    ap.add_argument("--float64-gemms", action="store_true",
                    help="the CPU reference's float MatMuls in float64, rounded once to float32 (rows saved as "
                         "<row>.float64-gemms...): how far last-bit changes of the GEMMs move a row")
    ap.add_argument("--official", type=Path, default=None,
                    help="SQuAD's evaluate-v1.1.py: also score every predictions file with it")
    args = ap.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ALL_ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {', '.join(unknown)}; choose from {', '.join(ALL_ROWS)}")

    from bertrt.run.features import examples_features
    from bertrt.run.tokenization import load_tokenizer

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    examples, dev = dev_examples(args.limit, work)
    tag = dev_tag(args.limit, examples)
    table = []
    for name in args.models.split(","):
        model = make_model(name, work, args.calib_num)
        model.threads = args.threads
        model.float64_gemms = args.float64_gemms
        asked = [r for r in rows if r in model.rows]
        if not asked:
            log(f"{name}: none of the rows asked for is one of its ({', '.join(model.rows)}); skipped")
            continue
        if model.baseline not in asked:
            asked.insert(0, model.baseline)  # every delta is taken from it
        per_example = examples_features(load_tokenizer(model.vocab), examples, max_seq_length=SEQ)
        flat = [f for feats in per_example for f in feats]
        log(f"{name}: {len(examples)} questions, {len(flat)} features at seq {SEQ}")
        results = {}
        for row in asked:
            wide = args.float64_gemms and row != model.baseline  # the baseline runs on ONNX Runtime as ever
            out = model.dir / "predictions" / f"{row}{'.float64-gemms' if wide else ''}.{tag}.json"
            results[row] = run_row(model, row, examples, per_example, flat, out, args.batch)
            results[row]["file"] = out
        table.append((model, results))

    print(f"\nSQuAD v1.1 dev ({len(examples)} questions, {'all' if args.limit is None else 'the first'}), "
          f"seq {SEQ}, doc stride 128, n-best 20, max answer 30; INT8 calibrated on {args.calib_num} train features")
    off = " official EM/F1" if args.official else ""
    print(f"{'model':<17} {'row':<22} {'EM':>6} {'F1':>6} {'dF1':>6} {'same':>6} {'q/s':>6} {'full dev':>8}{off}  target")
    for model, results in table:
        base = results[model.baseline]
        lines = [(model.name, row, r) for row, r in results.items()]
        if isinstance(model, QatModel):  # the float model it was trained from, where that row was made
            float_row = work / model.float_model / "predictions" / f"fp32-ort.{tag}.json"
            meta = float_row.with_suffix(".scores.json")
            if meta.exists() and json.loads(meta.read_text()).get("questions") == len(examples):
                lines.append((model.float_model, "fp32-ort", {**json.loads(meta.read_text()), "file": float_row}))
            else:
                print(f"{model.float_model:<17} {'fp32-ort':<22} not made in {work} (--models {model.float_model} "
                      f"--rows fp32-ort)")
        base_answers = json.loads(base["file"].read_text())
        for name, row, r in lines:
            preds = json.loads(r["file"].read_text())
            same = sum(preds[k] == v for k, v in base_answers.items())
            dF1 = r["f1"] - base["f1"]
            qps = r["questions"] / r["seconds"]
            target = _target(row, r, same, dF1) if name == model.name else "the float model it was trained from"
            o = ""
            if args.official:
                em, f1 = official(args.official, dev, r["file"])
                o = f" {em:>6.2f}/{f1:.2f}"
            print(f"{name:<17} {row:<22} {r['exact_match']:>6.2f} {r['f1']:>6.2f} {dF1:>+6.2f} "
                  f"{same / r['questions']:>6.1%} {qps:>6.2f} {10570 / qps / 60:>6.0f} m{o}  {target}")
    print("dF1: F1 - the model's baseline F1 (fp32-ort; a QAT model's: qat-ort); same: share of answers equal to the "
          "baseline's; q/s: questions per second of inference and post-processing on this machine; full dev: minutes "
          f"that makes for 10,570 questions. make engine's INT8 recipe: {MAKE_ENGINE_RECIPE}.")


def _target(row, r, same, dF1) -> str:
    if row in ("fused-fp32", "fp32-hf-onnx"):
        return "PASS same answers" if same == r["questions"] else f"FAIL {r['questions'] - same} differ"
    if row in ("fused-fp16", "varseqlen-fp16"):
        return ("PASS" if abs(dF1) <= FP16_BOUND else "FAIL") + f" |dF1| <= {FP16_BOUND}"
    if row.rsplit("-", 1)[0] == f"int8-{MAKE_ENGINE_RECIPE}":
        return ("PASS" if -dF1 <= INT8_BOUND else "FAIL") + f" drop <= {INT8_BOUND} (make engine)"
    if row in ("qat-trt10", "qat-trt11"):
        return ("PASS" if abs(dF1) <= QAT_BOUND else "FAIL") + f" |dF1| <= {QAT_BOUND} (within {QAT_BOUND} of qat-ort)"
    return ""


if __name__ == "__main__":
    main()
