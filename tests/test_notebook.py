"""examples/inference.ipynb runs top to bottom (code cells in order, one namespace) on the tiny model."""

import json
from pathlib import Path

NOTEBOOK = Path(__file__).parents[1] / "examples" / "inference.ipynb"


def run_notebook(path):
    nb = json.loads(path.read_text())
    assert nb["nbformat"] == 4
    namespace = {"__name__": "__main__"}
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            exec(compile(source, f"{path.name} cell {index}", "exec"), namespace)
    return namespace


def test_notebook_answers_on_the_onnx_backend(tiny_onnx, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("BERTRT_ONNX", str(tiny_onnx))
    monkeypatch.setenv("BERTRT_ENGINE", str(tmp_path / "no-engine.plan"))
    ns = run_notebook(NOTEBOOK)
    assert ns["backend"].name == "onnxruntime" and ns["seq"] == 128
    predictions, questions, passage = ns["predictions"], ns["questions"], ns["passage"]
    assert len(predictions) == len(questions) == 4
    for p in predictions:
        assert p.text in passage and 0 < p.probability <= 1
    out = capsys.readouterr().out
    assert out.count("Q: ") == 4 and "4 questions in" in out


def test_notebook_makes_the_tiny_model_when_there_is_none(monkeypatch, tmp_path):
    monkeypatch.setenv("BERTRT_ONNX", str(tmp_path / "none.onnx"))
    monkeypatch.setenv("BERTRT_ENGINE", str(tmp_path / "none.plan"))
    monkeypatch.chdir(tmp_path)
    ns = run_notebook(NOTEBOOK)
    assert ns["backend"].path.endswith("tiny.onnx") and ns["backend"].input_shape.seq == 128
    assert all(p.text in ns["passage"] for p in ns["predictions"])
    # The last cell removes the temporary folder the tiny model was made in (17 MB a run otherwise).
    assert not Path(ns["scratch"].name).exists()
