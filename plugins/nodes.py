"""How a TensorRT plugin appears in ONNX: the custom domain, node construction and attribute reading.

A plugin node has op_type = plugin name, STRING attributes ``plugin_version`` and ``plugin_namespace``,
and one attribute per plugin field (INT for int32 fields, FLOAT for float32, TENSOR for weights). It lives
in the custom domain ``trt.plugins``, which the model declares in ``opset_import`` so that ONNX tooling
accepts it; TensorRT's parser does not look at the domain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import AttributeProto, numpy_helper

PLUGIN_DOMAIN = "trt.plugins"
PLUGIN_DOMAIN_VERSION = 1

EMB_LAYER_NORM = "CustomEmbLayerNormPluginDynamic"
QKV_TO_CONTEXT = "CustomQKVToContextPluginDynamic"
SKIP_LAYER_NORM = "CustomSkipLayerNormPluginDynamic"
FC = "CustomFCPluginDynamic"
GELU = "CustomGeluPluginDynamic"
PLUGIN_NAMES = (EMB_LAYER_NORM, QKV_TO_CONTEXT, SKIP_LAYER_NORM, FC, GELU)

# nvinfer1::DataType values used by type_id / mha_type_id.
TYPE_FP32, TYPE_FP16, TYPE_INT8 = 0, 1, 2


def is_plugin_node(node) -> bool:
    """True for a NodeProto or gs.Node that is one of the TensorRT BERT plugins."""
    op = node.op_type if isinstance(node, onnx.NodeProto) else node.op
    return op in PLUGIN_NAMES


@dataclass(frozen=True)
class Attr:
    """One node attribute as ONNX stores it: its AttributeProto type name and its Python/numpy value."""

    kind: str  # "INT", "FLOAT", "STRING", "TENSOR", "INTS", "FLOATS", ...
    value: object
    tensor_dtype: int | None = None  # TensorProto data type for TENSOR attributes


def as_node_proto(node) -> onnx.NodeProto:
    """A NodeProto for either form, so one code path reads attributes exactly as they will be saved."""
    if isinstance(node, onnx.NodeProto):
        return node
    if isinstance(node, gs.Node):
        from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

        return OnnxExporter.export_node(node)
    raise TypeError(f"expected an onnx NodeProto or an onnx-graphsurgeon Node, got {type(node).__name__}")


def read_attrs(node) -> dict[str, Attr]:
    proto = as_node_proto(node)
    out = {}
    for a in proto.attribute:
        kind = AttributeProto.AttributeType.Name(a.type)
        if a.type == AttributeProto.TENSOR:
            out[a.name] = Attr(kind, numpy_helper.to_array(a.t), a.t.data_type)
        elif a.type == AttributeProto.STRING:
            out[a.name] = Attr(kind, a.s.decode("utf-8", errors="replace"))
        else:
            out[a.name] = Attr(kind, onnx.helper.get_attribute_value(a))
    return out


def read_scalar_attrs(node) -> dict[str, Attr]:
    """Like read_attrs, without the weight (TENSOR) attributes: cheap for a node carrying large tables."""
    if isinstance(node, gs.Node):
        light = {k: v for k, v in node.attrs.items() if not isinstance(v, (gs.Constant, np.ndarray))}
        node = gs.Node(op=node.op, name=node.name, attrs=light, domain=node.domain)
    else:  # a NodeProto's weights are not decoded either (read_skeleton's have no data to decode)
        light = onnx.NodeProto(op_type=node.op_type, name=node.name, domain=node.domain)
        light.attribute.extend(a for a in node.attribute if a.type != AttributeProto.TENSOR)
        node = light
    return {k: a for k, a in read_attrs(node).items() if a.kind != "TENSOR"}


def plugin_version(node) -> str | None:
    """The version string, or None if it is missing or not a STRING."""
    a = read_attrs(node).get("plugin_version")
    return a.value if a is not None and a.kind == "STRING" else None


def make_plugin_node(spec, inputs: list, outputs: list, fields: dict | None = None, name: str | None = None,
                     namespace: str = "") -> gs.Node:
    """An onnx-graphsurgeon node of the plugin version ``spec`` (a ``bertrt.plugins.specs.PluginSpec``), in the
    ``trt.plugins`` domain.

    ``fields`` maps field names to values: Python/numpy ints become INT attributes, floats FLOAT, and
    numpy arrays TENSOR attributes (keep float32 or float16; they are forwarded as weights). Fields the
    spec implies are filled in when not given (SkipLayerNorm v1/v5's ``ld`` = the length of ``beta``). The
    exporter adds ``trt.plugins`` to the model's opset_import.
    """
    fields = dict(fields or {})
    for f in spec.fields:
        if f.implied == "E" and f.name not in fields:
            E = next((np.asarray(v.values if isinstance(v, gs.Constant) else v).size for k, v in fields.items()
                      if spec.field(k) is not None and spec.field(k).length == "E"), None)
            if E is None:
                raise ValueError(f"{spec.plugin} v{spec.version}: field {f.name} is the hidden size, and no field of "
                                 "length E tells it")
            fields[f.name] = E
    attrs: dict = {"plugin_version": spec.version, "plugin_namespace": namespace}
    plugin = spec.plugin
    for key, val in fields.items():
        if isinstance(val, (bool, np.bool_)):
            attrs[key] = int(val)
        elif isinstance(val, (int, np.integer)):
            attrs[key] = int(val)
        elif isinstance(val, (float, np.floating)):
            attrs[key] = float(val)
        elif isinstance(val, np.ndarray):
            attrs[key] = gs.Constant(f"{name or plugin}.{key}", np.ascontiguousarray(val))
        elif isinstance(val, gs.Constant):
            attrs[key] = val
        else:
            raise TypeError(f"plugin field {key}: unsupported value type {type(val).__name__}")
    return gs.Node(op=plugin, name=name, domain=PLUGIN_DOMAIN, attrs=attrs, inputs=inputs, outputs=outputs)


def declare_plugin_domain(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add ``trt.plugins`` to the model's opset_import if it is missing (in place; returns the model)."""
    if not any(o.domain == PLUGIN_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(PLUGIN_DOMAIN, PLUGIN_DOMAIN_VERSION))
    return model
