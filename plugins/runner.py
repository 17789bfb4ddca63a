"""Execute a fused ONNX graph (plugin nodes among standard ops) on the CPU.

The graph's node list (topologically ordered, as ONNX requires) is cut at plugin nodes: each run of
standard nodes between plugins becomes one ONNX Runtime session on the extracted subgraph, and each
plugin node runs in numpy through ``PluginExecutor``. So ONNX Runtime does all it can (GEMMs, GELU,
reshapes) and only the plugins are ours. A segment's session is made on first use, with the input
dtypes it then sees and dynamic dims, so one runner serves any batch and sequence length.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from bertrt.errors import BertrtError
from bertrt.onnx_io import load_model
from bertrt.plugins.execute import PluginExecutor
from bertrt.plugins.nodes import is_plugin_node
from bertrt.plugins.shapes import GraphInfo
from bertrt.plugins.specs import validate


@dataclass
class Segment:
    """A run of standard nodes executed as one ONNX Runtime session."""

    nodes: list
    inputs: list[str] = field(default_factory=list)  # tensors it reads from outside (feeds, earlier steps)
    outputs: list[str] = field(default_factory=list)  # tensors later steps or the graph's outputs need
    sessions: dict = field(default_factory=dict)  # input dtypes -> InferenceSession


def constants_beside_readers(graph: onnx.GraphProto) -> list:
    """The graph's nodes in an order where each node that reads only initializers (an INT8 weight's
    DequantizeLinear, which a sorted graph lists first) comes just before its first reader. So it lands in its
    reader's segment: ONNX Runtime sees the INT8 GEMM whole (DequantizeLinear x2 -> MatMul) and sums it on the
    integers (MatMulIntegerToFloat), as TensorRT does; across segments it would get a float weight and sum
    dequantized values in float32, whose last bits the next quantization turns into whole steps."""
    consts = {t.name for t in graph.initializer} | {""}
    deferred = {}
    for n in graph.node:
        if not is_plugin_node(n) and all(i in consts or i in deferred for i in n.input):
            deferred.update((o, n) for o in n.output)
    order, placed = [], set()

    def place(n):
        if id(n) not in placed:
            for i in n.input:
                if i in deferred:
                    place(deferred[i])
            placed.add(id(n))
            order.append(n)

    for n in graph.node:
        if not (n.output and deferred.get(n.output[0]) is n):
            place(n)
    for n in graph.node:  # what no node reads (a constant graph output)
        place(n)
    return order


def has_plugin_nodes(model: onnx.ModelProto) -> bool:
    return any(is_plugin_node(n) for n in model.graph.node)


def float64_matmuls(nodes: list) -> list:
    """``nodes`` (of a float32 graph) with each float MatMul (one not reading a DequantizeLinear output: INT8 GEMMs
    stay as ONNX Runtime fuses them, on the integers) computed in float64 and rounded to float32 once. Products of
    float32 values are exact in float64 and the float64 sum's error is far below a float32 ulp, so the result is the
    correctly rounded float32 GEMM but for near-ties, whatever the order of the sums: another valid float32 result
    than ONNX Runtime's own, for telling what last-bit changes of the GEMMs do downstream."""
    dequantized = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
    out = []
    for n in nodes:
        if n.op_type != "MatMul" or n.domain not in ("", "ai.onnx") or dequantized & set(n.input):
            out.append(n)
            continue
        wide = [f"{n.name}/float64/{k}" for k in range(2)]
        out += [helper.make_node("Cast", [i], [w], to=onnx.TensorProto.DOUBLE, name=w) for i, w in zip(n.input, wide)]
        out.append(helper.make_node("MatMul", wide, [n.output[0] + "/float64"], name=n.name + "/float64"))
        out.append(helper.make_node("Cast", [n.output[0] + "/float64"], [n.output[0]], to=onnx.TensorProto.FLOAT,
                                    name=n.name))
    return out


class ReferenceRunner:
    """Runs a fused graph: ONNX Runtime for standard segments, numpy references for plugin nodes.

    ``amax`` maps tensor names to INT8 dynamic ranges (a calibration table) for plugins whose type
    says INT8. Every plugin node is validated first; an invalid one is a BertrtError.
    """

    def __init__(self, model: onnx.ModelProto | str | os.PathLike, amax: dict[str, float] | None = None,
                 threads: int = 0, float64_gemms: bool = False):
        self.path = None
        self.float64_gemms = float64_gemms  # see float64_matmuls
        if not isinstance(model, onnx.ModelProto):
            self.path = os.fspath(model)
            model = load_model(model)
        self.model = model
        self.amax = dict(amax or {})
        self.threads = threads
        g = model.graph
        self._inits = {t.name: t for t in g.initializer}
        self._init_arrays: dict[str, np.ndarray] = {}
        self.input_infos = [vi for vi in g.input if vi.name not in self._inits]
        self.output_names = [o.name for o in g.output]
        info = GraphInfo.of(model)
        self._check(info)
        self.steps = self._partition(info)
        self._release = self._last_uses()

    # -------------------------------------------------------------- setup

    def _check(self, info: GraphInfo) -> None:
        problems = []
        for n in self.model.graph.node:
            if is_plugin_node(n):
                problems += [f"node {n.name or n.output[0]}: {p}" for p in validate(n, info)]
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise BertrtError("invalid plugin node: " + "; ".join(problems[:3]) + more, self.path)

    def _partition(self, info: GraphInfo) -> list:
        g = self.model.graph
        known = {vi.name for vi in g.input} | set(self._inits) | {""}
        steps, current = [], []
        for n in constants_beside_readers(g):
            missing = [i for i in n.input if i not in known]
            if missing:
                raise BertrtError(f"node {n.name or n.output[0]} reads {missing[0]}, which no earlier node makes "
                                  "(the graph is not topologically sorted)", self.path)
            known.update(n.output)
            if is_plugin_node(n):
                if current:
                    steps.append(Segment(current))
                    current = []
                out_dtypes = {o: info.dtype(o) for o in n.output if info.dtype(o)}
                steps.append(self._plugin_step(n, out_dtypes))
            else:
                current.append(n)
        if current:
            steps.append(Segment(current))
        # Which tensors each segment must take in and hand out.
        needed_later: set[str] = set(self.output_names)
        for step in reversed(steps):
            if isinstance(step, Segment):
                made = {o for n in step.nodes for o in n.output}
                step.outputs = [o for n in step.nodes for o in n.output if o in needed_later]
                reads = []
                for n in step.nodes:
                    for i in n.input:
                        if i and i not in made and i not in reads and (i not in self._inits or self._is_input(i)):
                            reads.append(i)
                step.inputs = reads
                needed_later |= set(reads)
            else:
                needed_later |= {i for i in step.inputs if i}
        return steps

    def _plugin_step(self, node, out_dtypes: dict[str, str]):
        """What runs one plugin node (the numpy reference here; the kernels backend runs NVIDIA's kernels)."""
        return PluginExecutor(node, out_dtypes, self.amax)

    def _last_uses(self) -> list[list[str]]:
        """For each step, the tensors no later step nor the graph's outputs read: dropped once it has run,
        so a run holds only the activations still needed (BERT-Large at seq 384 would hold gigabytes)."""
        keep = set(self.output_names)
        seen: set[str] = set()
        release = []
        for step in reversed(self.steps):
            reads = step.inputs if isinstance(step, Segment) else [i for i in step.inputs if i]
            made = step.outputs if isinstance(step, Segment) else [o for o in step.outputs if o]
            release.append([t for t in dict.fromkeys([*reads, *made]) if t not in seen and t not in keep])
            seen.update(reads)
        return release[::-1]

    def _is_input(self, name: str) -> bool:
        return any(vi.name == name for vi in self.input_infos)

    def _session(self, seg: Segment, env: dict) -> ort.InferenceSession:
        key = tuple(env[i].dtype.str for i in seg.inputs)
        sess = seg.sessions.get(key)
        if sess is None:
            sess = self._make_session(seg, env)
            seg.sessions[key] = sess
        return sess

    def _make_session(self, seg: Segment, env: dict) -> ort.InferenceSession:
        inputs = [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(env[i].dtype),
                                                [f"{i}_d{k}" for k in range(env[i].ndim)]) for i in seg.inputs]
        outputs = [helper.make_empty_tensor_value_info(o) for o in seg.outputs]
        used = {i for n in seg.nodes for i in n.input}
        inits = [self._inits[i] for i in self._inits if i in used and i not in seg.inputs]
        nodes = float64_matmuls(seg.nodes) if self.float64_gemms else seg.nodes
        graph = helper.make_graph(nodes, "segment", inputs, outputs, initializer=inits)
        m = helper.make_model(graph, opset_imports=list(self.model.opset_import), ir_version=self.model.ir_version)
        m.functions.extend(self.model.functions)
        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        opts.log_severity_level = 4  # a failure is reported from its exception, in one line (bertrt.ort_check)
        # Many sessions take turns with numpy: idle pool threads must sleep, not spin, or they starve the rest.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # Each session's arena would keep its largest activations for good: dozens of segments times a batch's
        # activations (gigabytes for BERT-Base at seq 384, batch 8). Freed tensors go back at once instead.
        opts.enable_cpu_mem_arena = False
        return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def _value(self, name: str, env: dict) -> np.ndarray:
        if name in env:
            return env[name]
        if name not in self._init_arrays:
            self._init_arrays[name] = numpy_helper.to_array(self._inits[name])
        return self._init_arrays[name]

    # -------------------------------------------------------------- run

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Graph outputs (in the graph's order) for the given graph inputs."""
        env = {}
        for vi in self.input_infos:
            if vi.name not in feeds:
                raise BertrtError(f"no value given for graph input '{vi.name}'", self.path)
            env[vi.name] = np.asarray(feeds[vi.name])
        for step, release in zip(self.steps, self._release):
            if isinstance(step, Segment):
                if step.outputs:
                    sess = self._session(step, env)
                    outs = sess.run(step.outputs, {i: env[i] for i in step.inputs})
                    env.update(zip(step.outputs, outs))
            else:
                env.update(step([self._value(i, env) if i else None for i in step.inputs]))
            for name in release:
                env.pop(name, None)
        return {name: self._value(name, env) for name in self.output_names}
