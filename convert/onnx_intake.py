"""Any exporter's BERT ONNX (PyTorch legacy or dynamo, Hugging Face, keras2onnx, QAT Q/DQ) -> the canonical contract.

The canonical model has inputs ``input_ids``, ``segment_ids``, ``input_mask`` (int32 [batch, seq])
and output ``logits`` (float32 [batch, seq, 2]) or, for an encoder without a QA head,
``hidden_states`` ([batch, seq, hidden]), at opset 17 or above. The steps:

1. the source must pass onnx.checker and be exported for inference (one line naming the problem otherwise);
2. opsets below 17 are raised to 17 by onnx.version_converter, and the Softmax wrapper it leaves is
   unwrapped where it is a plain last-axis Softmax (convert/onnx_upgrade.py); every node gets a unique name;
3. the edges change: inputs are renamed and, where the model consumes another dtype, a Cast from int32
   feeds the old consumers; separate start/end logits are joined with Unsqueeze + Concat; with ``seq``
   the sequence axis is fixed. Declared output shapes are not trusted (PyTorch 1.x declared the traced
   length): they are inferred again from the inputs;
4. the result runs once on ONNX Runtime before it is written (convert/onnx_check.py).

The inside of the graph is left as the exporter wrote it, so the converted model computes exactly what
the source does.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from bertrt.contract import CANONICAL_INPUTS as INPUTS
from bertrt.convert.onnx_check import check_inference_mode, check_source, run_once, source_output_shapes
from bertrt.convert.onnx_upgrade import default_opset, name_nodes, unwrap_softmax, upgrade
from bertrt.errors import BertrtError
from bertrt.onnx_io import EXTERNAL_DATA_THRESHOLD, load_model, model_bytes, save_model
from bertrt.sanitize import QDQ_OPS, import_with_shapes, sanitize

# Names exporters and model hubs give the three inputs (compared lower-case, without a ':0' suffix).
INPUT_ALIASES = {
    "input_ids": {"input_ids", "input_word_ids", "word_ids", "token_ids", "ids", "tokens"},
    "segment_ids": {"segment_ids", "token_type_ids", "input_type_ids", "type_ids", "segments"},
    "input_mask": {"input_mask", "attention_mask", "input_masks", "attention_masks", "mask"},
}
ID_DTYPES = (np.int32, np.int64)
MASK_DTYPES = (np.int32, np.int64, np.float32, np.float16, np.bool_)
# Ops an exporter puts between a token-id input and its embedding Gather.
ID_PASSTHROUGH = {"Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Expand", "Clip"}
# Ops between a constant embedding table and its Gather (a quantized table comes through DequantizeLinear).
TABLE_PRODUCERS = {"Constant", "DequantizeLinear", "Identity", "Cast"}
POOLER_WORDS = ("pool",)
# Ops whose output says nothing of their input's values (only its shape): positions come from these.
SHAPE_OPS = {"Shape", "Size"}


def convert_onnx(src: str | os.PathLike, dst: str | os.PathLike, *, start_logits: str | None = None,
                 end_logits: str | None = None, logits: str | None = None, seq: int | None = None) -> dict:
    """Write ``src`` onto the canonical contract at ``dst``; return what was renamed, cast, joined.

    ``start_logits``/``end_logits`` (both) or ``logits`` name the outputs to take when their names do not
    say it; every other output is dropped. ``seq`` fixes a free sequence axis at that length.
    """
    src, dst = Path(src), Path(dst)
    pick = _output_choice(start_logits, end_logits, logits, src)
    model = load_model(src)
    check_source(model, src)
    check_inference_mode(model, src)
    nodes_before = len(model.graph.node)
    qdq_before = _count_qdq(model)
    model, opset_before = upgrade(model, src)
    named = name_nodes(model)
    _forget_output_shapes(model)
    graph = import_with_shapes(model)
    _run_for_output_shapes(graph, model, src)
    opset = default_opset(model)

    report = {"renamed": {}, "cast": {}, "joined": [], "added": [], "dropped": [], "output": None,
              "opset": [opset_before, opset], "named": named, "softmax_unwrapped": unwrap_softmax(graph),
              "seq": None}
    found = _match_inputs(graph, src)
    _check_embedding_gather(found["input_ids"], src)
    if seq is not None:
        report["seq"] = _fix_seq(graph, found, seq, src)
        fixed = gs.export_onnx(graph)
        _forget_output_shapes(fixed)
        graph = import_with_shapes(fixed)  # shapes again, from the fixed length
        found = _match_inputs(graph, src)
    output_plan = _match_outputs(graph, src, pick)

    _clear_inner_shapes(graph)
    graph.inputs = [_canonical_input(graph, name, found[name], report, src) for name in INPUTS]
    graph.outputs = [_canonical_output(graph, output_plan, opset, report)]

    result = sanitize(gs.export_onnx(graph))
    _check_contract(result, src)
    report["qdq_nodes"] = _count_qdq(result)
    if report["qdq_nodes"] != qdq_before:  # a guard on sanitize: scales must never be folded away
        raise BertrtError(f"internal: Q/DQ nodes changed from {qdq_before} to {report['qdq_nodes']}", src)
    report["nodes"] = [nodes_before, len(result.graph.node)]
    report["changes"] = _describe(report)
    _save_checked(result, dst, src, seq)
    return report


def _save_checked(model: onnx.ModelProto, dst: Path, src: Path, seq: int | None) -> None:
    """Write the model beside dst, run it once from there on ONNX Runtime (no in-memory copy of the weights),
    then move it in place; nothing is written if it cannot run."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dst.name}.", suffix=".check", dir=dst.parent) as tmp:
        staged = save_model(model, Path(tmp) / dst.name)
        run_once(model, src, seq, path=staged)
        for f in sorted(Path(tmp).iterdir()):
            os.replace(f, dst.parent / f.name)


def _output_choice(start, end, logits, src) -> dict | None:
    if logits is not None and (start is not None or end is not None):
        raise BertrtError("name the logits either as one [batch, seq, 2] output or as start and end outputs, "
                          "not both", src)
    if (start is None) != (end is None):
        raise BertrtError("the start and the end logits are named together (both or neither)", src)
    if start is not None and start == end:
        raise BertrtError(f"the start and the end logits are both '{start}'", src)
    if logits is not None:
        return {"logits": logits}
    return None if start is None else {"start": start, "end": end}


def _describe(report: dict) -> list[str]:
    """One line per change, for the command to print."""
    lines = []
    if report["opset"][0] != report["opset"][1]:
        lines.append(f"opset {report['opset'][0]} -> {report['opset'][1]} (onnx.version_converter)")
    if report["softmax_unwrapped"]:
        lines.append(f"{report['softmax_unwrapped']} Softmax(es) over the last axis unwrapped from Flatten/Reshape")
    if report["named"]:
        lines.append(f"named {report['named']} node(s) that had no name or a name already taken")
    if report["seq"] is not None:
        lines.append(f"sequence fixed at {report['seq']}")
    lines += [f"renamed {old} -> {new}" for old, new in report["renamed"].items()]
    lines += [f"{name}: int32 at the edge, Cast to {dtype} inside" if name in INPUTS
              else f"{name}: Cast from {dtype} to float32" for name, dtype in report["cast"].items()]
    if report["joined"]:
        lines.append(f"joined {' and '.join(report['joined'])} -> logits [batch, seq, 2]")
    lines += [f"added {name} (the source has no such input; it is not read)" for name in report["added"]]
    lines += [f"dropped output {name}" for name in report["dropped"]]
    lines.append(f"output {report['output']}; {report['qdq_nodes']} Q/DQ nodes kept; "
                 f"nodes {report['nodes'][0]} -> {report['nodes'][1]} after sanitize; ran once on ONNX Runtime")
    return lines


# --- inputs -------------------------------------------------------------------------------------------

def _alias_key(name: str) -> str:
    return re.sub(r":\d+$", "", name).lower()


def _match_inputs(graph: gs.Graph, src: Path) -> dict:
    found, unknown = dict.fromkeys(INPUTS), []
    for tensor in graph.inputs:
        key = _alias_key(tensor.name)
        role = next((r for r, names in INPUT_ALIASES.items() if key in names), None)
        if role is None:
            unknown.append(tensor.name)
            continue
        if found[role] is not None:
            raise BertrtError(f"inputs '{found[role].name}' and '{tensor.name}' are both {role}", src)
        found[role] = tensor
    if found["input_ids"] is None:
        names = ", ".join(t.name for t in graph.inputs) or "none"
        raise BertrtError(f"not a BERT encoder: no token-id input (expected one named input_ids, "
                          f"input_word_ids, ...; inputs are: {names})", src)
    if unknown:
        raise BertrtError(f"input '{unknown[0]}' has no place in the canonical contract "
                          f"(input_ids, segment_ids, input_mask)", src)
    for role, tensor in found.items():
        if tensor is None:
            continue
        allowed = MASK_DTYPES if role == "input_mask" else ID_DTYPES
        if tensor.dtype is None or np.dtype(tensor.dtype) not in [np.dtype(d) for d in allowed]:
            raise BertrtError(f"input '{tensor.name}' is {_dtype_name(tensor.dtype)}, expected "
                              f"{' or '.join(np.dtype(d).name for d in allowed)} for {role}", src)
        if tensor.shape is None or len(tensor.shape) != 2:
            rank = "unknown" if tensor.shape is None else len(tensor.shape)
            raise BertrtError(f"input '{tensor.name}' has rank {rank}, expected [batch, seq]", src)
    return found


def _check_embedding_gather(ids: gs.Variable, src: Path) -> None:
    """The token ids must index a 2-D constant table through a Gather: that is what makes it BERT."""
    frontier, seen = [ids], set()
    while frontier:
        tensor = frontier.pop()
        if tensor.name in seen:
            continue
        seen.add(tensor.name)
        for node in tensor.outputs:
            if node.op == "Gather" and len(node.inputs) > 1 and node.inputs[1] is tensor \
                    and _is_table(node.inputs[0]):
                return
            if node.op in ID_PASSTHROUGH and node.inputs and node.inputs[0] is tensor:
                frontier.extend(node.outputs)
    raise BertrtError(f"not a BERT encoder: input '{ids.name}' does not feed a Gather on an embedding table", src)


def _is_table(tensor: gs.Tensor) -> bool:
    if isinstance(tensor, gs.Constant):
        return len(tensor.shape) == 2
    producer = tensor.inputs[0] if len(tensor.inputs) == 1 else None
    if producer is None or producer.op not in TABLE_PRODUCERS:
        return False
    if producer.op == "Constant":
        value = producer.attrs.get("value")
        return value is not None and len(value.shape) == 2
    return _is_table(producer.inputs[0])


def _canonical_input(graph: gs.Graph, name: str, tensor: gs.Variable | None, report: dict, src: Path):
    if tensor is None:
        # e.g. DistilBERT-style exports without token types: the input exists but nothing reads it.
        report["added"].append(name)
        return gs.Variable(_free_name(graph, name), np.int32, ["batch", "seq"])
    shape = _edge_shape(tensor.shape, ["batch", "seq"])
    old_name = tensor.name
    if old_name != name:
        report["renamed"][old_name] = name
    if np.dtype(tensor.dtype) == np.int32:
        _free_name(graph, name, keep=tensor)
        tensor.name, tensor.shape = name, shape
        return tensor
    # The model reads another dtype: the graph edge becomes int32 and a Cast feeds the old consumers.
    report["cast"][name] = np.dtype(tensor.dtype).name
    tensor.name = _unique(graph, f"{name}_{np.dtype(tensor.dtype).name}", exclude=tensor)
    _free_name(graph, name)
    edge = gs.Variable(name, np.int32, shape)
    graph.nodes.append(gs.Node("Cast", name=_unique(graph, f"{name}_cast"), attrs={"to": _onnx_dtype(tensor.dtype)},
                               inputs=[edge], outputs=[tensor]))
    return edge


# --- outputs ------------------------------------------------------------------------------------------

def _match_outputs(graph: gs.Graph, src: Path, pick: dict | None = None) -> dict:
    """Decide which contract the outputs fit: logits, start/end to join, or encoder hidden states."""
    outs = list(graph.outputs)
    for t in outs:
        if t in graph.inputs:
            raise BertrtError(f"output '{t.name}' is a graph input, not a computed value", src)
        if t.dtype is None or not np.issubdtype(np.dtype(t.dtype), np.floating):
            raise BertrtError(f"output '{t.name}' is {_dtype_name(t.dtype)}, expected floating-point", src)
    if pick is not None:
        return _picked_outputs(outs, pick, src)
    ranked = [t for t in outs if t.shape is not None]
    if len(outs) == 1 and len(ranked) == 1 and len(outs[0].shape) == 3 and isinstance(outs[0].shape[2], int):
        kind = "logits" if outs[0].shape[2] == 2 else "hidden_states"
        return {"kind": kind, "tensors": outs, "drop": []}
    if len(outs) == 2 and len(ranked) == 2 and all(len(t.shape) == 2 for t in outs):
        start = [t for t in outs if "start" in t.name.lower()]
        end = [t for t in outs if "end" in t.name.lower()]
        if len(start) == 1 and len(end) == 1 and start[0] is not end[0]:
            return {"kind": "logits", "tensors": [start[0], end[0]], "drop": []}
    hidden = [t for t in ranked if len(t.shape) == 3 and isinstance(t.shape[2], int) and t.shape[2] != 2]
    pooled = [t for t in outs if any(w in t.name.lower() for w in POOLER_WORDS)]
    if len(hidden) == 1 and len(outs) == 1 + len(pooled) and hidden[0] not in pooled:
        return {"kind": "hidden_states", "tensors": hidden, "drop": pooled}
    got = ", ".join(f"{t.name} {_shape_text(t.shape)}" for t in outs)
    raise BertrtError(f"outputs fit no contract ({got}); expected logits [batch, seq, 2], start and end "
                      f"logits [batch, seq] each, or hidden states [batch, seq, hidden]", src,
                      hint="name the output to take as the logits, or the two to take as the start and end logits")


def _picked_outputs(outs: list, pick: dict, src: Path) -> dict:
    """The outputs the user named (the others are dropped), checked against the contract's ranks."""
    by_name = {t.name: t for t in outs}
    for role, name in pick.items():
        if name not in by_name:
            raise BertrtError(f"no output named '{name}' (for the {role} logits); outputs are: "
                              f"{', '.join(by_name)}", src)
    chosen = [by_name[pick[r]] for r in (("logits",) if "logits" in pick else ("start", "end"))]
    rank = 3 if "logits" in pick else 2
    for role, t in zip(pick, chosen):
        if t.shape is not None and (len(t.shape) != rank or (rank == 3 and t.shape[2] not in (2, None)) or
                                    (rank == 3 and not isinstance(t.shape[2], int))):
            want = "[batch, seq, 2]" if rank == 3 else "[batch, seq]"
            raise BertrtError(f"output '{t.name}' {_shape_text(t.shape)} cannot be the {role} logits: "
                              f"expected {want}", src)
    if rank == 3 and chosen[0].shape is None:
        raise BertrtError(f"output '{chosen[0].name}' has no known shape; expected [batch, seq, 2]", src)
    return {"kind": "logits", "tensors": chosen, "drop": [t for t in outs if t not in chosen]}


def _canonical_output(graph: gs.Graph, plan: dict, opset: int, report: dict) -> gs.Variable:
    name = plan["kind"]
    report["output"] = name
    report["dropped"] = [t.name for t in plan["drop"]]
    tensors = plan["tensors"]
    if len(tensors) == 2:
        report["joined"] = [t.name for t in tensors]
        _free_name(graph, name)
        out = gs.Variable(name, tensors[0].dtype, _edge_shape(tensors[0].shape, ["batch", "seq"]) + [2])
        columns = [_unsqueeze_last(graph, t, opset) for t in tensors]
        graph.nodes.append(gs.Node("Concat", name=_unique(graph, f"{name}_concat"), attrs={"axis": -1},
                                   inputs=columns, outputs=[out]))
    else:
        out = tensors[0]
        if out.name != name:
            report["renamed"][out.name] = name
        _free_name(graph, name, keep=out)
        out.name, out.shape = name, _edge_shape(out.shape, ["batch", "seq", "hidden"])
    if np.dtype(out.dtype) != np.float32:  # e.g. an FP16 export: the contract's edge is float32
        report["cast"][name] = np.dtype(out.dtype).name
        out.name = _unique(graph, f"{name}_{np.dtype(out.dtype).name}", exclude=out)
        wide = gs.Variable(name, np.float32, out.shape)
        graph.nodes.append(gs.Node("Cast", name=_unique(graph, f"{name}_cast"), attrs={"to": onnx.TensorProto.FLOAT},
                                   inputs=[out], outputs=[wide]))
        out = wide
    return out


def _unsqueeze_last(graph: gs.Graph, tensor: gs.Variable, opset: int) -> gs.Variable:
    col = gs.Variable(_unique(graph, f"{tensor.name}_column"), tensor.dtype, None)
    if opset >= 13:  # axes moved from an attribute to an input in opset 13
        axes = gs.Constant(_unique(graph, f"{tensor.name}_axes"), np.array([-1], dtype=np.int64))
        graph.nodes.append(gs.Node("Unsqueeze", inputs=[tensor, axes], outputs=[col]))
    else:
        graph.nodes.append(gs.Node("Unsqueeze", attrs={"axes": [-1]}, inputs=[tensor], outputs=[col]))
    graph.nodes[-1].name = _unique(graph, f"{tensor.name}_unsqueeze")
    return col


# --- the sequence axis --------------------------------------------------------------------------------

def _fix_seq(graph: gs.Graph, found: dict, seq: int, src: Path) -> int:
    """Fix the inputs' sequence axis at ``seq`` (the batch stays as it is)."""
    if seq < 1:
        raise BertrtError(f"sequence length {seq} is not positive", src)
    fixed = {t.shape[1] for t in found.values() if t is not None and isinstance(t.shape[1], int)}
    if fixed and fixed != {seq}:
        raise BertrtError(f"the sequence axis is already fixed at {fixed.pop()}; it cannot become {seq}", src)
    rows = position_rows(graph, [t for t in found.values() if t is not None])
    if rows is not None and seq > rows:
        raise BertrtError(f"sequence length {seq} is longer than the position table ({rows} rows)", src)
    for t in found.values():
        if t is not None:
            t.shape = [t.shape[0], seq]
    return seq


def position_rows(graph: gs.Graph, inputs: list | None = None) -> int | None:
    """Rows of the position-embedding table: the 2-D constant table read (by a Gather or a Slice) at
    indices that depend on no value of ``inputs`` [default: the graph's] (positions come from the shape
    alone), or None if there is none (a table already sliced to a fixed length)."""
    inputs = list(graph.inputs) if inputs is None else inputs
    rows = [int(_table_rows(n.inputs[0])) for n in graph.nodes
            if n.op in ("Gather", "Slice") and len(n.inputs) > 1 and _table_rows(n.inputs[0]) is not None
            and not any(_reads_values(i, inputs) for i in n.inputs[1:])]
    return max(rows) if rows else None


def _table_rows(t: gs.Tensor) -> int | None:
    if isinstance(t, gs.Constant) and len(t.shape) == 2:
        return t.shape[0]
    p = t.inputs[0] if len(t.inputs) == 1 else None
    if p is not None and p.op == "Constant" and "value" in p.attrs and len(p.attrs["value"].shape) == 2:
        return p.attrs["value"].shape[0]
    return None


def _reads_values(t: gs.Tensor, inputs: list) -> bool:
    """Whether t is computed from the values (not only the shape) of one of ``inputs``."""
    stack, seen = [t], set()
    while stack:
        cur = stack.pop()
        if any(cur is i for i in inputs):
            return True
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        for p in cur.inputs:
            if p.op not in SHAPE_OPS:
                stack.extend(p.inputs)
    return False


def _run_for_output_shapes(graph: gs.Graph, model: onnx.ModelProto, src: Path) -> None:
    """Where shape inference could not give an output's rank or trailing dims, run the model once to see them
    (batch and sequence stay symbolic unless the inputs fix them)."""
    if all(t.shape is not None and all(isinstance(d, int) for d in t.shape[2:]) for t in graph.outputs):
        return
    seen = source_output_shapes(model, src)
    fixed = [d if isinstance(d, int) and d > 0 else None for d in (graph.inputs[0].shape or [None, None])[:2]]
    for t in graph.outputs:
        shape = seen.get(t.name)
        if shape is not None and (t.shape is None or not all(isinstance(d, int) for d in t.shape[2:])):
            t.shape = [fixed[i] if i < len(fixed) else None for i in range(min(2, len(shape)))] + list(shape[2:])


def _forget_output_shapes(model: onnx.ModelProto) -> None:
    """Drop the declared output shapes (kept: the element type): PyTorch 1.x declared the length it was traced
    at, e.g. [batch, 128] for a model computing [batch, seq]. Shape inference gives them again from the inputs."""
    for out in model.graph.output:
        if out.type.HasField("tensor_type"):
            out.type.tensor_type.ClearField("shape")


# --- checks and helpers -------------------------------------------------------------------------------

def _check_contract(model: onnx.ModelProto, src: Path) -> None:
    """The result must be the canonical contract; a failure here is a bug in intake, not in the input."""
    if model_bytes(model) < EXTERNAL_DATA_THRESHOLD:
        onnx.checker.check_model(model)
    names = [i.name for i in model.graph.input]
    types = [i.type.tensor_type.elem_type for i in model.graph.input]
    outs = [o.name for o in model.graph.output]
    if names != list(INPUTS) or set(types) != {onnx.TensorProto.INT32} or len(outs) != 1 \
            or outs[0] not in ("logits", "hidden_states") \
            or model.graph.output[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise BertrtError(f"internal: converted model is not canonical (inputs {names}, outputs {outs})", src)


def _clear_inner_shapes(graph: gs.Graph) -> None:
    # Exporters name dynamic dims their own way (s0, sequence, unk__3); the final shape inference
    # re-derives inner shapes from the renamed edges instead of mixing both namings.
    edges = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    for name, tensor in graph.tensors().items():
        if isinstance(tensor, gs.Variable) and name not in edges:
            tensor.shape = None


def _edge_shape(shape, names: list[str]) -> list:
    """Keep fixed dims; give dynamic ones the canonical names (batch, seq, hidden)."""
    return [d if isinstance(d, int) and d > 0 else names[i] for i, d in enumerate(list(shape)[:len(names)])]


def _free_name(graph: gs.Graph, name: str, keep: gs.Tensor | None = None) -> str:
    """Make ``name`` available by renaming whichever other tensor holds it."""
    holder = graph.tensors().get(name)
    if holder is not None and holder is not keep:
        holder.name = _unique(graph, f"{name}_inner")
    return name


def _unique(graph: gs.Graph, base: str, exclude: gs.Tensor | None = None) -> str:
    taken = {n for n, t in graph.tensors().items() if t is not exclude} | {n.name for n in graph.nodes}
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


def _count_qdq(model: onnx.ModelProto) -> int:
    return sum(1 for n in model.graph.node if n.op_type in QDQ_OPS)


def _onnx_dtype(dtype) -> int:
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _dtype_name(dtype) -> str:
    return "of unknown type" if dtype is None else np.dtype(dtype).name


def _shape_text(shape) -> str:
    """[batch, seq, 2]; a dim shape inference could not name (unk__3, None) is '?'."""
    if shape is None:
        return "[?]"
    return "[" + ", ".join("?" if d is None or str(d).startswith("unk__") else str(d) for d in shape) + "]"
