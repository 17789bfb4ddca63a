"""Whether onnx.checker takes a model and ONNX Runtime runs it: what a stage checks of the graph it is handed
before it works on it.

onnx.checker passes graphs that nothing can run (duplicate node names, an input whose type its consumers do
not take, an initializer whose data does not fit its shape); ONNX Runtime finds those when it loads the
graph, and the rest when it runs it once on a small valid input. ONNX Runtime in turn runs some graphs the
checker refuses (an op at an opset that has no such op), which no later tool need take.
"""

from __future__ import annotations

import os

import numpy as np

from bertrt.errors import BertrtError

# A batch every model takes (one sequence: a BERT-Base at a fixed 384 runs it in half a second); a sequence
# shorter than any position table.
PROBE_BATCH, PROBE_SEQ = 1, 8


def ort_message(e: Exception) -> str:
    """ONNX Runtime's reason in one line: its messages start with "[ONNXRuntimeError] : 1 : FAIL : "."""
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else type(e).__name__
    return text.split(" : ", 3)[-1] if text.startswith("[ONNXRuntimeError]") else text


def probe_feeds(session) -> dict[str, np.ndarray]:
    """Inputs a BERT takes at [PROBE_BATCH, PROBE_SEQ]: zeros for ids and segments, ones for the mask."""
    from onnx import helper

    feeds = {}
    for i in session.get_inputs():
        dims = [d if isinstance(d, int) and d > 0 else (PROBE_BATCH if k == 0 else PROBE_SEQ if k == 1 else 1)
                for k, d in enumerate(i.shape)]
        elem = {"tensor(int32)": 6, "tensor(int64)": 7, "tensor(float)": 1, "tensor(float16)": 10,
                "tensor(bool)": 9}.get(i.type)
        if elem is None:
            raise BertrtError(f"input '{i.name}' is a {i.type}, which no BERT input is")
        fill = np.ones if "mask" in i.name.lower() else np.zeros
        feeds[i.name] = fill(dims, helper.tensor_dtype_to_np_dtype(elem))
    return feeds


def quiet_options(optimize: bool = True):
    """SessionOptions for a session whose failures bertrt reports itself: ONNX Runtime's C++ log off (its reason is
    in the exception, which becomes the one Error line; the log, written to the terminal past Python, would be a
    second, colored one)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    return options


def check_loads(path: str | os.PathLike, hint: str | None = None):
    """The ONNX Runtime session of the model at path; a BertrtError naming the file and ONNX Runtime's reason if
    it cannot load it."""
    import onnxruntime as ort

    options = quiet_options(optimize=False)
    try:
        return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ONNX Runtime raises its own Fail/InvalidGraph/InvalidProtobuf types
        raise BertrtError(f"ONNX Runtime cannot load it: {ort_message(e)}", path, hint=hint) from None


def check_runs(path: str | os.PathLike, hint: str | None = None) -> None:
    """Load the model at path into ONNX Runtime and run it once (``probe_feeds``); a BertrtError naming the file
    and ONNX Runtime's reason if either fails."""
    session = check_loads(path, hint)
    feeds = probe_feeds(session)
    try:
        session.run(None, feeds)
    except Exception as e:
        shape = "x".join(str(d) for d in next(iter(feeds.values())).shape) if feeds else "no inputs"
        raise BertrtError(f"ONNX Runtime cannot run it (inputs {shape}): {ort_message(e)}", path, hint=hint) from None


def check_model_file(path: str | os.PathLike, hint: str | None = None) -> None:
    """The file is a model (``graph_io.read_skeleton``), onnx.checker takes its graph, and ``check_runs``.

    The checker reads the graph without its weights, the initializers standing as typed inputs (no check reads
    their values; ONNX Runtime's load checks that their data fits their shape): milliseconds for a 2 GB model."""
    import onnx
    from onnx import helper

    from bertrt.graph_io import read_skeleton

    model = read_skeleton(path)
    g = model.graph
    declared = {i.name for i in g.input}
    inputs = list(g.input) + [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                              for t in g.initializer if t.name not in declared]
    light = helper.make_model(helper.make_graph(g.node, g.name or "graph", inputs, g.output, value_info=g.value_info),
                              opset_imports=model.opset_import, ir_version=model.ir_version)
    try:
        onnx.checker.check_model(light)
    except (onnx.checker.ValidationError, ValueError) as e:
        lines = str(e).strip().splitlines()
        raise BertrtError(f"not a valid ONNX model: {lines[0] if lines else type(e).__name__}", path,
                          hint=hint) from None
    check_runs(path, hint)
