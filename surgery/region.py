"""Evaluate a piece of a graph on test data, to prove a rewrite equal before making it.

A fusion pass finds a candidate by its structure, then runs the candidate's original nodes (with
ONNX Runtime) and the plugin's numpy reference on the same random inputs. Only a
candidate whose numbers agree is rewritten; one that does not is reported with the difference.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

from bertrt.surgery.graph_utils import ancestors, const_value


FEED_BYTES = 1 << 20


class RegionError(Exception):
    """The region could not be evaluated (an input it needs was not given)."""


def evaluate(graph: gs.Graph, outputs: list[gs.Tensor], feeds: list[tuple[gs.Tensor, np.ndarray]]) -> list[np.ndarray]:
    """Run the nodes that ``outputs`` depend on, with ``feeds`` ((tensor, value) pairs) standing for those tensors."""
    fed = {id(t): (t, v) for t, v in feeds}
    nodes = ancestors(outputs, stop=[t for t, _ in feeds])
    inits, inputs, seen = [], [], set()
    node_protos = []
    for node in nodes:
        node_protos.append(OnnxExporter.export_node(node))
        for t in node.inputs:
            if not t.name or t.name in seen or id(t) in fed:
                continue
            p = t.inputs[0] if t.inputs else None
            if p is not None and any(p is n for n in nodes):
                continue
            value = const_value(t)
            if value is None:
                raise RegionError(f"tensor {t.name} is needed but not given")
            seen.add(t.name)
            if value.nbytes > FEED_BYTES:  # handed over as an input: no copy into the region's protobuf
                fed[id(t)] = (t, np.asarray(value))
            else:
                inits.append(numpy_helper.from_array(np.asarray(value), t.name))
    feed_by_name = {}
    for t, v in fed.values():
        inputs.append(helper.make_tensor_value_info(t.name, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape))
        feed_by_name[t.name] = v
    out_names = [t.name for t in outputs]
    model = helper.make_model(
        helper.make_graph(node_protos, "region", inputs, [helper.make_empty_tensor_value_info(n) for n in out_names],
                          initializer=inits),
        opset_imports=_opsets(graph),
    )
    # The oldest IR version that has these opsets: onnx's newest (IR 14 with onnx 1.23) is refused by an older
    # ONNX Runtime (1.30 reads up to IR 13) although the region's ops are years older.
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    try:
        return _session(model).run(out_names, feed_by_name)
    except Exception as e:  # the evaluator raises many types for inputs that do not fit the region
        raise RegionError(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # run the nodes as written
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle spinning starves numpy
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _opsets(graph: gs.Graph):
    ops = {"": graph.opset}
    for imp in graph.import_domains or []:
        ops.setdefault(imp.domain, imp.version)
    return [helper.make_opsetid(d, v) for d, v in ops.items()]


def max_rel_err(got: np.ndarray, want: np.ndarray) -> float:
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    return float(np.max(np.abs(got - want)) / max(1e-6, float(np.max(np.abs(want)))))
