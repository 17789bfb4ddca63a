"""Any exporter's BERT ONNX (PyTorch legacy or dynamo, Hugging Face, QAT Q/DQ) -> the canonical contract.

The canonical model has inputs ``input_ids``, ``segment_ids``, ``input_mask`` (int32 [batch, seq])
and output ``logits`` (float32 [batch, seq, 2]) or, for an encoder without a QA head,
``hidden_states`` ([batch, seq, hidden]). Only the edges change: inputs are renamed and, where the
model consumes another dtype, a Cast from int32 feeds the old consumers; separate start/end logits
are joined with Unsqueeze + Concat. The inside of the graph is left as the exporter wrote it, so
the converted model computes exactly what the source does.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from bertrt.contract import CANONICAL_INPUTS as INPUTS
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


def convert_onnx(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """Write ``src`` onto the canonical contract at ``dst``; return what was renamed, cast, joined."""
    src, dst = Path(src), Path(dst)
    model = load_model(src)
    nodes_before = len(model.graph.node)
    qdq_before = _count_qdq(model)
    graph = import_with_shapes(model)
    opset = _default_opset(model)

    report = {"renamed": {}, "cast": {}, "joined": [], "added": [], "dropped": [], "output": None}
    found = _match_inputs(graph, src)
    _check_embedding_gather(found["input_ids"], src)
    output_plan = _match_outputs(graph, src)

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
    save_model(result, dst)
    return report


def _describe(report: dict) -> list[str]:
    """One line per change, for the command to print."""
    lines = [f"renamed {old} -> {new}" for old, new in report["renamed"].items()]
    lines += [f"{name}: int32 at the edge, Cast to {dtype} inside" if name in INPUTS
              else f"{name}: Cast from {dtype} to float32" for name, dtype in report["cast"].items()]
    if report["joined"]:
        lines.append(f"joined {' and '.join(report['joined'])} -> logits [batch, seq, 2]")
    lines += [f"added {name} (the source has no such input; it is not read)" for name in report["added"]]
    lines += [f"dropped output {name}" for name in report["dropped"]]
    lines.append(f"output {report['output']}; {report['qdq_nodes']} Q/DQ nodes kept; "
                 f"nodes {report['nodes'][0]} -> {report['nodes'][1]} after sanitize")
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

def _match_outputs(graph: gs.Graph, src: Path) -> dict:
    """Decide which contract the outputs fit: logits, start/end to join, or encoder hidden states."""
    outs = list(graph.outputs)
    for t in outs:
        if t in graph.inputs:
            raise BertrtError(f"output '{t.name}' is a graph input, not a computed value", src)
        if t.dtype is None or not np.issubdtype(np.dtype(t.dtype), np.floating):
            raise BertrtError(f"output '{t.name}' is {_dtype_name(t.dtype)}, expected floating-point", src)
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
                      f"logits [batch, seq] each, or hidden states [batch, seq, hidden]", src)


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


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _count_qdq(model: onnx.ModelProto) -> int:
    return sum(1 for n in model.graph.node if n.op_type in QDQ_OPS)


def _onnx_dtype(dtype) -> int:
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _dtype_name(dtype) -> str:
    return "of unknown type" if dtype is None else np.dtype(dtype).name


def _shape_text(shape) -> str:
    return "[?]" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"
