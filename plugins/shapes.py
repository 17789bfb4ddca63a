"""What a graph records about its tensors (dtype, shape, producer), in one form for protos and gs graphs.

The validator uses it to check a plugin node's inputs. Only declared information is used (graph inputs,
outputs, value_info, initializers): ONNX shape inference stops at custom-domain nodes anyway.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper


class GraphInfo:
    def __init__(self, types: dict, shapes: dict, producers: dict, domains: set | None):
        self._types = types  # name -> numpy dtype name
        self._shapes = shapes  # name -> tuple of int | str | None
        self._producers = producers  # name -> node (NodeProto or gs.Node)
        self.domains = domains  # opset_import domains, or None when unknown (a bare GraphProto)

    @classmethod
    def of(cls, graph) -> "GraphInfo":
        """From a ModelProto, GraphProto, gs.Graph, or an existing GraphInfo (returned as it is)."""
        if isinstance(graph, GraphInfo):
            return graph
        if isinstance(graph, onnx.ModelProto):
            info = cls._from_proto(graph.graph)
            info.domains = {o.domain for o in graph.opset_import}
            return info
        if isinstance(graph, onnx.GraphProto):
            return cls._from_proto(graph)
        if isinstance(graph, gs.Graph):
            return cls._from_gs(graph)
        raise TypeError(f"expected an ONNX model or graph, got {type(graph).__name__}")

    @classmethod
    def _from_proto(cls, g: onnx.GraphProto) -> "GraphInfo":
        types, shapes = {}, {}
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            tt = vi.type.tensor_type
            if tt.elem_type:
                types[vi.name] = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
            if tt.HasField("shape"):
                shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                        for d in tt.shape.dim)
        for init in g.initializer:
            types[init.name] = np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).name
            shapes[init.name] = tuple(init.dims)
        producers = {out: n for n in g.node for out in n.output if out}
        return cls(types, shapes, producers, None)

    @classmethod
    def _from_gs(cls, g: gs.Graph) -> "GraphInfo":
        types, shapes, producers = {}, {}, {}
        for name, t in g.tensors().items():
            if t.dtype is not None:
                try:
                    types[name] = np.dtype(t.dtype).name
                except TypeError:
                    types[name] = np.dtype(helper.tensor_dtype_to_np_dtype(t.dtype)).name
            if t.shape is not None:
                shapes[name] = tuple(t.shape)
            if t.inputs:
                producers[name] = t.inputs[0]
        domains = {o.domain for o in g.import_domains} if g.import_domains is not None else None
        if domains is not None:  # the exporter declares every domain a node uses
            domains |= {n.domain for n in g.nodes if n.domain}
        return cls(types, shapes, producers, domains)

    def dtype(self, name: str) -> str | None:
        return self._types.get(name)

    def shape(self, name: str) -> tuple | None:
        return self._shapes.get(name)

    def rank(self, name: str) -> int | None:
        s = self._shapes.get(name)
        return None if s is None else len(s)

    def dim(self, name: str, i: int):
        s = self._shapes.get(name)
        return s[i] if s is not None and len(s) > i else None

    def producer(self, name: str):
        return self._producers.get(name)
