"""One declarative spec per TensorRT BERT plugin and version, and ``validate`` for plugin nodes.

The facts come from shared/specs/trt-bert-plugins.md (§3 versions, §4 fields/inputs/outputs, §5 parser
mapping). A field's ``kind`` is the PluginField type the creator expects: ``int32`` (ONNX INT attribute),
``float32`` (FLOAT) or ``weights`` (TENSOR of float32/float16; FLOATS also converts). A weight's
``length`` is ``"E"`` (exactly the hidden size) or ``"k*E"`` (whole rows of E: a [k, E] table).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper

from bertrt.plugins.nodes import (EMB_LAYER_NORM, FC, GELU, PLUGIN_DOMAIN, QKV_TO_CONTEXT, SKIP_LAYER_NORM,
                                  TYPE_FP16, TYPE_FP32, TYPE_INT8, as_node_proto, read_attrs,
                                  read_scalar_attrs)
from bertrt.plugins.shapes import GraphInfo


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: str  # "int32" | "float32" | "weights"
    required: bool
    default: object = None
    length: str = "1"  # "1" (scalar), "E", "k*E"
    choices: tuple | None = None
    doc: str = ""
    implied: str | None = None  # "E": make_plugin_node fills in the hidden size when the field is not given


@dataclass(frozen=True)
class TensorSpec:
    name: str
    rank: int | None  # None: any rank
    dtype: str  # "int32", "type_id", "output_fp16", "int8", "any"
    layout: str
    when: str = ""  # when the tensor is present, if not always


@dataclass(frozen=True)
class PluginSpec:
    """One plugin version: its fields, tensors and the facts about it that code branches on.

    Adding a plugin version is one row of ``_TABLE``: the validator, the passes, the CPU reference and
    ``make_plugin_node`` read these properties, never version strings.
    """

    plugin: str
    version: str
    interface: str  # "IPluginV2DynamicExt" (legacy) or "IPluginV3"
    variant: str
    fields: tuple[FieldSpec, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    limits: tuple[str, ...] = ()  # what the properties below do not say, in words
    hidden_from: str | None = None  # the field whose value (int) or length (weights) is E
    emitted: bool = True
    why_not: str = ""
    # The TensorRT release whose plugin library has it (§3: the IPluginV3 versions came in 10.4-10.6; the V2 ones
    # were all in 8.6, the oldest release the spec covers).
    since: str = "8.6"
    # "fixed": padded [S, B, ...] tensors; "varseqlen": packed tokens [T, ...]; "interleaved": packed INT8
    # [1, C, T, 1] CHW32.
    layout: str = "fixed"
    layout_field: str | None = None  # a var-seqlen plugin's field that selects the fixed layout when 0
    hidden_axis: int | None = None  # the axis of input 0 that holds E (None: any shape whose volume E divides)
    padded_mask_rank: int | None = None  # QKV in the fixed layout: rank of the mask input ([B, P] or [B])
    fused_head_sizes: tuple[int, ...] = ()  # QKV in the fixed layout: head sizes with fused (FP16/INT8) kernels
    head_sizes: tuple[int, ...] | None = None  # QKV: the only head sizes it runs
    max_head_size: int | None = None  # QKV packed: the largest head size it has kernels for
    max_seq: int | None = None  # the longest sequence it computes (packed: the max_seqlen input's length)
    int8: str = "type_id"  # how INT8 is chosen: "type_id" (= 2), "only" (INT8 is all it runs) or "none"
    padded_int8: bool = True  # False: in the fixed layout it runs unfused kernels, which have no INT8
    int8_seqs: tuple[int, ...] | None = None  # INT8 needs one of these fixed sequence lengths
    int8_hidden: tuple[int, ...] | None = None  # INT8 needs one of these hidden sizes

    def field(self, name: str) -> FieldSpec | None:
        return next((f for f in self.fields if f.name == name), None)

    @property
    def key(self) -> tuple[str, str]:
        return self.plugin, self.version

    @property
    def int8_only(self) -> bool:
        return self.int8 == "only"

    @property
    def pre_ln_output(self) -> bool:
        """The "MTron" variants: a second output with the sum before the LayerNorm."""
        return any(t.name == "pre_ln_sum" for t in self.outputs)

    @property
    def takes_padded(self) -> bool:
        """Whether it can run on padded [S, B] tensors (fixed layout, or var-seqlen capable with the field 0)."""
        return self.layout == "fixed" or self.layout_field is not None

    def packed(self, values: dict | None = None) -> bool:
        """Whether a node with these field values runs on packed tokens [T] (var-seqlen)."""
        if self.layout_field is not None:
            field = self.field(self.layout_field)
            return bool((values or {}).get(self.layout_field, field.default if field else 0))
        return self.layout != "fixed"

    def int8_problem(self, head_size: int | None = None, seq: int | None = None, hidden: int | None = None,
                     values: dict | None = None) -> str | None:
        """Why a node of this version cannot run INT8 with these sizes (None: it can). Unknown sizes pass."""
        if self.int8 == "none":
            return f"{self.plugin} v{self.version} has no INT8"
        if not self.packed(values) and not self.padded_int8:
            return "the fixed layout runs the unfused path, which has no INT8"
        if head_size is not None and self.fused_head_sizes and not self.packed(values) \
                and head_size not in self.fused_head_sizes:
            return f"INT8 needs head size {_one_of(self.fused_head_sizes)} (the fused kernels), not {head_size}"
        if seq is not None and self.int8_seqs and not self.packed(values) and seq not in self.int8_seqs:
            return f"INT8 needs a fixed sequence length of {_one_of(self.int8_seqs)}, not {seq}"
        if hidden is not None and self.int8_hidden and hidden not in self.int8_hidden:
            return f"INT8 needs hidden size {_one_of(self.int8_hidden)}, not {hidden}"
        return None


def _one_of(values) -> str:
    values = [str(v) for v in values]
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]


# ---------------------------------------------------------------- EmbLayerNorm (§4.1)

_EMB_WEIGHTS = (
    FieldSpec("bert_embeddings_layernorm_beta", "weights", True, length="E", doc="LN beta; E is its length"),
    FieldSpec("bert_embeddings_layernorm_gamma", "weights", True, length="E", doc="LN gamma"),
    FieldSpec("bert_embeddings_word_embeddings", "weights", True, length="k*E", doc="[V, E] token table"),
    FieldSpec("bert_embeddings_token_type_embeddings", "weights", True, length="k*E", doc="[Tt, E] segment table"),
    FieldSpec("bert_embeddings_position_embeddings", "weights", True, length="k*E",
              doc="[P, E] position table; P >= S"),
)
_OUTPUT_FP16 = FieldSpec("output_fp16", "int32", False, 0, choices=(0, 1), doc="1: output 0 in FP16")

_EMB_FIXED = dict(
    fields=_EMB_WEIGHTS + (
        _OUTPUT_FP16,
        FieldSpec("full_mask", "int32", False, 0, choices=(0, 1), doc="force the packed mask (deprecated)"),
        FieldSpec("mha_type_id", "int32", False, 0, choices=(0, 1, 2), doc="type_id of the QKV plugin downstream"),
    ),
    inputs=(TensorSpec("input_ids", 2, "int32", "[S, B]"), TensorSpec("segment_ids", 2, "int32", "[S, B]"),
            TensorSpec("input_mask", 2, "int32", "[S, B], contiguous 1s then 0s")),
    outputs=(TensorSpec("embeddings", 5, "output_fp16", "[S, B, E, 1, 1]"),
             TensorSpec("mask_idx", 2, "int32", "[B, 1] maskIdx = first zero of the mask (or packed [B, P])")),
    limits=("S <= number of position rows", "ids in [0, V), segments in [0, Tt)",
            "packed mask (P = 512/6144) only on GPU with mha_type_id in {1, 2} and S in {64, 96, 128, 384}"),
    hidden_from="bert_embeddings_layernorm_beta", int8="none",
)
_EMB_VAR_INPUTS = (TensorSpec("input_ids", 1, "int32", "[T] packed"), TensorSpec("segment_ids", 1, "int32", "[T]"),
                   TensorSpec("cu_seqlens", 1, "int32", "[B + 1] prefix sums"),
                   TensorSpec("max_seqlen", 1, "any", "[maxS]; only its shape is read"))
_EMB_VAR = dict(fields=_EMB_WEIGHTS + (_OUTPUT_FP16,), inputs=_EMB_VAR_INPUTS,
                limits=("positions restart at 0 per sequence", "FP16 or INT8 downstream only; SM 75+"),
                hidden_from="bert_embeddings_layernorm_beta", layout="varseqlen", int8="none",
                max_seq=384)  # positions >= 384 are never computed (§4.1.2)
_EMB_HFACE_OUT = (TensorSpec("embeddings", 4, "output_fp16", "[T, E, 1, 1]"),
                  TensorSpec("unused", 0, "int32", "0-d, never written"))
_EMB_MTRON_OUT = (TensorSpec("embeddings", 4, "output_fp16", "[T, E, 1, 1]"),
                  TensorSpec("pre_ln_sum", 4, "output_fp16", "[T, E, 1, 1] word + token + position"))

# ---------------------------------------------------------------- QKVToContext (§4.2)

_TYPE_ID = FieldSpec("type_id", "int32", True, choices=(0, 1, 2), doc="0 FP32, 1 FP16, 2 INT8")
_QKV_COMMON = (
    _TYPE_ID,
    FieldSpec("hidden_size", "int32", True, doc="E"),
    FieldSpec("num_heads", "int32", True, doc="N; head size H = E / N"),
    FieldSpec("has_mask", "int32", True, choices=(0, 1)),
    FieldSpec("dq_probs", "float32", False, 1 / 127, doc="INT8 probability step"),
)
_QKV_FIXED = dict(
    fields=_QKV_COMMON,
    inputs=(TensorSpec("qkv", 5, "type_id", "[S, B, 3E, 1, 1], channels per head [N, 3, H]"),
            TensorSpec("mask_idx", 2, "int32", "[B, P]: EmbLN v1/v6 output 1", when="has_mask=1")),
    outputs=(TensorSpec("context", 5, "type_id", "[S, B, E, 1, 1]"),),
    limits=("INT8 needs has_mask=1 and the fused kernels", "fused FP16 kernels need S in {64, 96, 128, 384}"),
    hidden_from="hidden_size", hidden_axis=2, padded_mask_rank=2,
    # The fused kernels (FP16 and INT8) exist for H = 64 only; INT8 ones for S 128 and 384 on every GPU (§4.2.2).
    fused_head_sizes=(64,), int8_seqs=(128, 384),
)
_QKV_VAR = dict(
    fields=_QKV_COMMON + (
        FieldSpec("var_seqlen", "int32", False, 0, choices=(0, 1), doc="1: packed tokens + cu_seqlens"),
        FieldSpec("use_int8_scale_max", "int32", False, 1, choices=(0, 1)),
    ),
    inputs=(TensorSpec("qkv", None, "type_id", "var_seqlen=1: [T, 3E, 1, 1]; var_seqlen=0: [S, B, 3E, 1, 1]"),
            TensorSpec("mask", None, "any", "var_seqlen=1: dummy (any); var_seqlen=0: 1-D int32 [B] maskIdx",
                       when="has_mask=1"),
            TensorSpec("cu_seqlens", 1, "int32", "[B + 1]", when="var_seqlen=1"),
            TensorSpec("max_seqlen", 1, "any", "[maxS]; only its shape is read", when="var_seqlen=1")),
    outputs=(TensorSpec("context", None, "type_id", "[T, E, 1, 1] or [S, B, E, 1, 1]"),),
    limits=("var_seqlen=1: type_id FP16 or INT8, has_mask=1", "var_seqlen=0: FP32/FP16 only (unfused)"),
    hidden_from="hidden_size", layout="varseqlen", layout_field="var_seqlen", hidden_axis=2, padded_mask_rank=1,
    padded_int8=False, max_head_size=64, max_seq=512,  # kernels for H 32 and 64; maxS > 512 asserts (§4.2.3)
)
_QKV_INTERLEAVED = dict(
    fields=(
        FieldSpec("hidden_size", "int32", True, doc="E"),
        FieldSpec("num_heads", "int32", True, doc="N; H must be 64"),
        FieldSpec("dq_probs", "float32", False, 1 / 127),
        FieldSpec("use_int8_scale_max", "int32", False, 1, choices=(0, 1)),
        FieldSpec("use_explicit_int8", "int32", False, 0, choices=(0, 1)),
        FieldSpec("input_qkv_scale", "float32", False, 1.0, doc="used iff use_explicit_int8=1"),
        FieldSpec("output_ctx_scale", "float32", False, 1.0, doc="used iff use_explicit_int8=1"),
    ),
    inputs=(TensorSpec("qkv", 4, "int8", "[1, 3E, T, 1] CHW32, channels [3, N, H]"),
            TensorSpec("cu_seqlens", 1, "int32", "[B + 1]"),
            TensorSpec("max_seqlen", 1, "any", "[maxS]; only its shape is read")),
    outputs=(TensorSpec("context", 4, "int8", "[1, E, T, 1] CHW32"),),
    limits=("BMM1 scale is hard-coded 1/8, so H = 64",),
    hidden_from="hidden_size", layout="interleaved", int8="only", head_sizes=(64,), max_seq=384,
)

# ---------------------------------------------------------------- SkipLayerNorm (§4.3)

_SKIP_WEIGHTS = (FieldSpec("beta", "weights", True, length="E"), FieldSpec("gamma", "weights", True, length="E"))
_SKIP_BIAS = FieldSpec("bias", "weights", False, length="E", doc="added to input + skip")
_SKIP_FIXED = dict(
    fields=(_TYPE_ID, FieldSpec("ld", "int32", True, doc="E", implied="E")) + _SKIP_WEIGHTS + (_SKIP_BIAS,),
    inputs=(TensorSpec("input", 5, "type_id", "[S, B, E, 1, 1]"), TensorSpec("skip", 5, "type_id", "[S, B, E, 1, 1]")),
    outputs=(TensorSpec("output", 5, "type_id", "[S, B, E, 1, 1]"),),
    hidden_from="ld", hidden_axis=2, int8_hidden=(768, 1024),
)
_SKIP_VAR = dict(
    fields=(_TYPE_ID,) + _SKIP_WEIGHTS + (_SKIP_BIAS,),
    inputs=(TensorSpec("input", None, "type_id", "any shape, volume divisible by E; [T, E, 1, 1] in practice"),
            TensorSpec("skip", None, "type_id", "same shape as input")),
    outputs=(TensorSpec("output", None, "type_id", "same shape as input"),),
    hidden_from="beta", layout="varseqlen", int8_hidden=(768, 1024),
)
_SKIP_IL_IN = (TensorSpec("input", 4, "int8", "[1, E, T, 1] CHW32"), TensorSpec("skip", 4, "int8", "[1, E, T, 1] CHW32"))
_SKIP_INTERLEAVED = dict(fields=_SKIP_WEIGHTS, inputs=_SKIP_IL_IN, hidden_from="beta", layout="interleaved",
                         int8="only", hidden_axis=1, int8_hidden=(768, 1024, 1536, 2048))
_SKIP_HFACE = dict(_SKIP_INTERLEAVED, outputs=(TensorSpec("output", 4, "int8", "[1, E, T, 1] CHW32"),))
_SKIP_MTRON = dict(_SKIP_INTERLEAVED, outputs=(TensorSpec("output", 4, "int8", "[1, E, T, 1] CHW32"),
                                               TensorSpec("pre_ln_sum", 4, "int8", "[1, E, T, 1] input + skip")))

V2, V3 = "IPluginV2DynamicExt", "IPluginV3"

# (plugin, version, interface, variant, properties, the TensorRT release that added it)

_TABLE = [
    (EMB_LAYER_NORM, "1", V2, "fixed length", _EMB_FIXED, "8.6"),
    (EMB_LAYER_NORM, "2", V2, "var-seqlen HFace", {**_EMB_VAR, "outputs": _EMB_HFACE_OUT}, "8.6"),
    (EMB_LAYER_NORM, "3", V2, "var-seqlen MTron", {**_EMB_VAR, "outputs": _EMB_MTRON_OUT}, "8.6"),
    (EMB_LAYER_NORM, "4", V3, "var-seqlen HFace", {**_EMB_VAR, "outputs": _EMB_HFACE_OUT}, "10.4"),
    (EMB_LAYER_NORM, "5", V3, "var-seqlen MTron", {**_EMB_VAR, "outputs": _EMB_MTRON_OUT}, "10.4"),
    (EMB_LAYER_NORM, "6", V3, "fixed length", _EMB_FIXED, "10.6"),
    (QKV_TO_CONTEXT, "1", V2, "fixed length", _QKV_FIXED, "8.6"),
    (QKV_TO_CONTEXT, "2", V2, "var-seqlen capable", _QKV_VAR, "8.6"),
    (QKV_TO_CONTEXT, "3", V2, "INT8 interleaved var-seqlen", _QKV_INTERLEAVED, "8.6"),
    (QKV_TO_CONTEXT, "4", V3, "fixed length", _QKV_FIXED, "10.5"),
    (QKV_TO_CONTEXT, "5", V3, "var-seqlen capable", _QKV_VAR, "10.5"),
    (QKV_TO_CONTEXT, "6", V3, "INT8 interleaved var-seqlen", _QKV_INTERLEAVED, "10.5"),
    (SKIP_LAYER_NORM, "1", V2, "fixed length", _SKIP_FIXED, "8.6"),
    (SKIP_LAYER_NORM, "2", V2, "var-seqlen", _SKIP_VAR, "8.6"),
    (SKIP_LAYER_NORM, "3", V2, "INT8 interleaved HFace", _SKIP_HFACE, "8.6"),
    (SKIP_LAYER_NORM, "4", V2, "INT8 interleaved MTron", _SKIP_MTRON, "8.6"),
    (SKIP_LAYER_NORM, "5", V3, "fixed length", _SKIP_FIXED, "10.4"),
    (SKIP_LAYER_NORM, "6", V3, "var-seqlen", _SKIP_VAR, "10.4"),
    (SKIP_LAYER_NORM, "7", V3, "INT8 interleaved HFace", _SKIP_HFACE, "10.4"),
    (SKIP_LAYER_NORM, "8", V3, "INT8 interleaved MTron", _SKIP_MTRON, "10.4"),
]

_NOT_EMITTED = [
    (FC, "1", V2, "FC without bias", dict(
        fields=(FieldSpec("out_dims", "int32", True), FieldSpec("type_id", "int32", True, choices=(0, 1)),
                FieldSpec("W", "weights", True, length="k*E")),
        inputs=(TensorSpec("input", 5, "type_id", "[S, B, K, 1, 1]"),),
        outputs=(TensorSpec("output", 5, "type_id", "[S, B, out_dims, 1, 1]"),)),
     "deprecated since TensorRT 10.6 and never faster than a native MatMul, which TensorRT fuses itself"),
    (GELU, "1", V2, "GELU (tanh form)", dict(
        fields=(FieldSpec("type_id", "int32", True, choices=(0, 1)), FieldSpec("bias", "weights", False)),
        inputs=(TensorSpec("input", None, "type_id", "any"),), outputs=(TensorSpec("output", None, "type_id", "any"),)),
     "deprecated since TensorRT 9.0 and removed in 11.0; native elementwise GELU fuses as well"),
]


def _build() -> dict[tuple[str, str], PluginSpec]:
    specs = {}
    for plugin, version, iface, variant, d, since in _TABLE:
        specs[plugin, version] = PluginSpec(plugin, version, iface, variant, **d, since=since)
    for plugin, version, iface, variant, d, why in _NOT_EMITTED:
        specs[plugin, version] = PluginSpec(plugin, version, iface, variant, **d, emitted=False, why_not=why)
    return specs


SPECS: dict[tuple[str, str], PluginSpec] = _build()


def get_spec(plugin: str, version: str | int) -> PluginSpec | None:
    return SPECS.get((plugin, str(version)))


def spec_of(node) -> PluginSpec | None:
    """The spec of a plugin node (NodeProto or gs.Node) by its op type and plugin_version; None if unknown."""
    if isinstance(node, gs.Node):
        return get_spec(node.op, node.attrs.get("plugin_version", ""))
    ver = read_scalar_attrs(node).get("plugin_version")
    return get_spec(node.op_type, ver.value) if ver is not None and ver.kind == "STRING" else None


def versions(plugin: str) -> list[str]:
    return sorted(v for p, v in SPECS if p == plugin)


# The var-seqlen contract's limits, from the table: the longest packed sequence is the least any var-seqlen
# EmbLayerNorm computes positions for (QKVToContext alone would take more), and packed attention has kernels
# up to this head size.
MAX_SEQLEN = min(s.max_seq for s in SPECS.values() if s.plugin == EMB_LAYER_NORM and s.layout == "varseqlen")
MAX_PACKED_HEAD_SIZE = min(s.max_head_size for s in SPECS.values()
                           if s.plugin == QKV_TO_CONTEXT and s.layout == "varseqlen")


# ---------------------------------------------------------------- validation

_FLOAT_TENSORS = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.DOUBLE: "float64"}


def field_values(spec: PluginSpec, node) -> dict[str, object]:
    """The node's field values with the spec's defaults filled in (weights as flat float32 arrays)."""
    import numpy as np

    attrs = read_attrs(node)
    out = {}
    for f in spec.fields:
        a = attrs.get(f.name)
        if a is None:
            out[f.name] = f.default
        elif f.kind == "weights":
            out[f.name] = np.asarray(a.value, dtype=np.float32).ravel()
        elif f.kind == "int32":
            out[f.name] = int(a.value) if a.kind == "INT" else a.value
        else:
            out[f.name] = float(a.value) if a.kind == "FLOAT" else a.value
    return out


def validate(node, graph=None, strongly_typed: bool = False) -> list[str]:
    """Every problem TensorRT's parser or plugin would have with this node, each with its reason.

    ``node`` is an onnx NodeProto or an onnx-graphsurgeon Node; ``graph`` (a ModelProto, GraphProto or
    gs.Graph) adds checks of input ranks, dtypes and producers, and of the model's opset_import;
    ``strongly_typed`` (a trt11 build) those of ``typing_problems``. An empty list means the node is valid.
    """
    problems = _validate(node, graph)
    if strongly_typed and graph is not None:
        problems += typing_problems(node, graph)
    return problems


def _validate(node, graph) -> list[str]:
    proto = as_node_proto(node)  # one form for both; attributes read exactly as they will be saved
    proto_op, domain = proto.op_type, proto.domain
    attrs = read_attrs(proto)
    problems: list[str] = []
    if domain != PLUGIN_DOMAIN:
        problems.append(f"domain is '{domain}', expected '{PLUGIN_DOMAIN}' (declared in opset_import)")
    info = GraphInfo.of(graph) if graph is not None else None
    if info is not None and info.domains is not None and PLUGIN_DOMAIN not in info.domains:
        problems.append(f"the model's opset_import does not declare the domain '{PLUGIN_DOMAIN}'")

    ns = attrs.get("plugin_namespace")
    if ns is None:
        problems.append("missing plugin_namespace (STRING attribute, normally '')")
    elif ns.kind != "STRING":
        problems.append(f"plugin_namespace is {ns.kind}, must be a STRING")
    ver = attrs.get("plugin_version")
    if ver is None:
        problems.append("missing plugin_version (STRING attribute); TensorRT would silently take version '1'")
        return problems
    if ver.kind != "STRING":
        problems.append(f"plugin_version is {ver.kind}, must be a STRING (TensorRT reads it as a string and "
                        "would find no plugin)")
        return problems
    spec = get_spec(proto_op, ver.value)
    if spec is None:
        known = ", ".join(versions(proto_op)) or "none: not a TensorRT BERT plugin"
        problems.append(f"{proto_op} has no version '{ver.value}' (known: {known})")
        return problems
    if not spec.emitted:
        problems.append(f"{spec.plugin} is not emitted by bertrt: {spec.why_not}")
        return problems

    soft, fatal = _check_fields(spec, attrs)
    problems += soft + fatal
    if fatal:
        return problems  # the rules below read field values that are absent or of the wrong type
    values = field_values(spec, proto)
    E = _hidden(spec, values)
    problems += _check_lengths(spec, values, E)
    if not E or E <= 0:
        return problems
    problems += _RULES[spec.plugin](spec, values, E, list(proto.input), list(proto.output), info)
    return problems


# What a TensorSpec's dtype rule asks of the tensor, given the node's type field (nvinfer1::DataType).
_TYPE_ID_DTYPES = {TYPE_FP32: "float32", TYPE_FP16: "float16", TYPE_INT8: "int8"}
_TYPE_NAMES = {TYPE_FP32: "FP32", TYPE_FP16: "FP16", TYPE_INT8: "INT8"}


def typing_problems(node, graph) -> list[str]:
    """In a strongly typed network (TensorRT 11's only kind) TensorRT converts no types for a plugin: each
    input must arrive in the type its ``type_id`` names (qkvToContextPlugin, skipLayerNormPlugin:
    supportsFormatCombination), and EmbLayerNorm's output is FP16 exactly when ``output_fp16`` = 1. A graph
    whose declared tensor types disagree with its plugin fields finds no implementation. Reads the scalar
    fields only, so a node without its weights (``graph_io.read_skeleton``) is checked as well."""
    spec = spec_of(node)
    if spec is None or not spec.emitted:
        return []
    info = GraphInfo.of(graph)
    attrs = read_scalar_attrs(node)
    proto = node if not isinstance(node, gs.Node) else None
    inputs = list(proto.input) if proto is not None else [t.name for t in node.inputs]
    outputs = list(proto.output) if proto is not None else [t.name for t in node.outputs]
    problems = []
    for kind, names, specs in (("input", inputs, spec.inputs), ("output", outputs, spec.outputs)):
        for i, (name, t) in enumerate(zip(names, specs)):
            if not name or t.dtype not in ("type_id", "output_fp16", "int8"):
                continue
            if t.dtype == "int8":
                want, why = "int8", f"{spec.plugin} v{spec.version} runs INT8 only"
            else:
                field = spec.field(t.dtype)
                a = attrs.get(t.dtype)
                value = a.value if a is not None and a.kind == "INT" else field.default if field else None
                if t.dtype == "output_fp16":
                    want = "float16" if value == 1 else "float32"
                    why = f"output_fp16 = {value or 0}"
                elif value in _TYPE_ID_DTYPES:
                    want = _TYPE_ID_DTYPES[value]
                    why = f"type_id = {value} ({_TYPE_NAMES[value]})"
                else:
                    continue  # an unreadable type_id is the validator's to report
            have = declared_dtype(info, name)
            if have is not None and have != want:
                problems.append(f"{kind} {i} ({t.name}) {name} is {have}, but {why} needs {want}: a strongly typed "
                                "network converts no types for a plugin")
    return problems


def graph_typing_problems(graph) -> list[str]:
    """``typing_problems`` of every plugin node of a model (or gs graph), each as "<node>: <problem>"."""
    from bertrt.plugins.nodes import is_plugin_node

    info = GraphInfo.of(graph)
    nodes = graph.nodes if isinstance(graph, gs.Graph) else graph.graph.node
    return [f"{n.name}: {p}" for n in nodes if is_plugin_node(n) for p in typing_problems(n, info)]


def declared_dtype(info: GraphInfo, name: str) -> str | None:
    """The dtype the graph gives a tensor: declared (value_info, inputs, initializers), else what its producer
    makes (a Cast's ``to``; a DequantizeLinear's scale type), else None (unknown)."""
    dt = info.dtype(name)
    if dt is not None:
        return dt
    prod = info.producer(name)
    if prod is None:
        return None
    op = prod.op if isinstance(prod, gs.Node) else prod.op_type
    if op == "Cast":
        to = read_scalar_attrs(prod).get("to")
        return np.dtype(helper.tensor_dtype_to_np_dtype(to.value)).name if to is not None and to.kind == "INT" else None
    if op == "DequantizeLinear":
        ins = [t.name for t in prod.inputs] if isinstance(prod, gs.Node) else list(prod.input)
        return info.dtype(ins[1]) if len(ins) > 1 else None
    return None


def _check_fields(spec: PluginSpec, attrs) -> tuple[list[str], list[str]]:
    """(problems the later rules can live with, problems that make field values unreadable)."""
    soft, problems = [], []
    for name, a in attrs.items():
        if name in ("plugin_version", "plugin_namespace"):
            continue
        if spec.field(name) is None:
            soft.append(f"attribute {name} is not a field of {spec.plugin} v{spec.version}; "
                            "TensorRT would silently ignore it")
    for f in spec.fields:
        a = attrs.get(f.name)
        if a is None:
            if f.required:
                problems.append(f"missing required field {f.name} ({_kind_text(f)})")
            continue
        if f.kind == "int32" and a.kind != "INT":
            problems.append(f"field {f.name} is {a.kind}, must be INT (an int32 field)")
        elif f.kind == "float32" and a.kind != "FLOAT":
            problems.append(f"field {f.name} is {a.kind}, must be FLOAT (a float32 field)")
        elif f.kind == "weights":
            if a.kind == "TENSOR" and a.tensor_dtype not in _FLOAT_TENSORS:
                problems.append(f"field {f.name} is a {TensorProto.DataType.Name(a.tensor_dtype)} tensor, "
                                "must be float32 or float16 weights")
            elif a.kind not in ("TENSOR", "FLOATS"):
                problems.append(f"field {f.name} is {a.kind}, must be a TENSOR of float32 or float16 weights")
        elif f.choices is not None and a.kind == "INT" and a.value not in f.choices:
            soft.append(f"field {f.name} = {a.value}, must be one of {list(f.choices)}")
    return soft, problems


def _kind_text(f: FieldSpec) -> str:
    return {"int32": "INT", "float32": "FLOAT", "weights": "TENSOR float32/float16"}[f.kind]


def _hidden(spec: PluginSpec, values) -> int | None:
    v = values.get(spec.hidden_from)
    if v is None:
        return None
    return int(v.size) if hasattr(v, "size") else int(v)


def _check_lengths(spec: PluginSpec, values, E) -> list[str]:
    problems = []
    if not E or E <= 0:
        return [f"hidden size from {spec.hidden_from} is {E}, must be > 0"]
    for f in spec.fields:
        w = values.get(f.name)
        if f.kind != "weights" or w is None:
            continue
        if f.length == "E" and w.size != E:
            problems.append(f"weight {f.name} has {w.size} values, expected E = {E} (from {spec.hidden_from})")
        elif f.length == "k*E" and (w.size == 0 or w.size % E):
            problems.append(f"weight {f.name} has {w.size} values, not whole rows of E = {E}")
    return problems


# ---------------------------------------------------------------- per-plugin rules


def _count(spec, inputs, outputs, n_in: int, n_out_max: int) -> list[str]:
    problems = []
    if len(inputs) != n_in:
        problems.append(f"{spec.plugin} v{spec.version} takes {n_in} inputs here, the node has {len(inputs)}")
    if any(name == "" for name in inputs):
        problems.append("an input name is empty; TensorRT would pass a null tensor")
    if len(outputs) > n_out_max:
        problems.append(f"{spec.plugin} v{spec.version} has {n_out_max} outputs, the node declares {len(outputs)}")
    return problems


def _rank(info, name, rank, what) -> list[str]:
    r = info.rank(name) if info else None
    if r is not None and rank is not None and r != rank:
        return [f"{what} {name} has rank {r}, expected rank {rank}"]
    return []


def _int32(info, name, what) -> list[str]:
    dt = info.dtype(name) if info else None
    if dt is not None and dt != "int32":
        return [f"{what} {name} is {dt}, expected int32"]
    return []


def _emb_rules(spec, v, E, inputs, outputs, info) -> list[str]:
    problems = _count(spec, inputs, outputs, len(spec.inputs), len(spec.outputs))
    if len(inputs) != len(spec.inputs):
        return problems
    for i, t in enumerate(spec.inputs):
        problems += _rank(info, inputs[i], t.rank, f"input {i} ({t.name})")
        if t.dtype == "int32" and info is not None:
            dt = info.dtype(inputs[i])
            if dt is not None and dt not in ("int32", "int64"):  # the parser casts int64 for this plugin
                problems.append(f"input {i} ({t.name}) {inputs[i]} is {dt}, expected int32")
    if spec.takes_padded and info is not None:
        S = info.dim(inputs[0], 0)
        P = v["bert_embeddings_position_embeddings"].size // E
        if isinstance(S, int) and S > P:
            problems.append(f"sequence length {S} exceeds the {P} position embeddings")
    return problems


def _qkv_rules(spec, v, E, inputs, outputs, info) -> list[str]:
    problems = []
    N = v["num_heads"]
    if N <= 0 or E % N:
        return [f"hidden_size {E} is not divisible by num_heads {N}"]
    H = E // N
    if v.get("dq_probs") is not None and v["dq_probs"] <= 0:
        problems.append(f"dq_probs = {v['dq_probs']}, must be > 0")
    if spec.head_sizes is not None and H not in spec.head_sizes:
        problems.append(f"head size {H}: {spec.plugin} v{spec.version} runs head size {_one_of(spec.head_sizes)} "
                        "only")
    if spec.layout == "interleaved":
        for s in ("input_qkv_scale", "output_ctx_scale"):
            if v[s] <= 0:
                problems.append(f"{s} = {v[s]}, must be > 0")
        problems += _count(spec, inputs, outputs, 3, 1)
        if not problems:
            problems += _rank(info, inputs[0], 4, "input 0 (qkv)") + _int32(info, inputs[1], "input 1 (cu_seqlens)")
            problems += _max_seqlen(info, inputs[2], spec.max_seq)
        return problems

    if spec.packed(v):
        if v["type_id"] not in (TYPE_FP16, TYPE_INT8):
            problems.append(f"{spec.layout_field}=1 needs type_id FP16 (1) or INT8 (2); FP32 asserts")
        if v["has_mask"] != 1:
            problems.append(f"{spec.layout_field}=1 needs has_mask=1 (the plugin asserts exactly 4 inputs)")
        if spec.max_head_size is not None and H > spec.max_head_size:
            problems.append(f"head size {H} > {spec.max_head_size} is not supported with {spec.layout_field}=1")
        problems += _count(spec, inputs, outputs, 4, 1)
        if len(inputs) == 4:
            problems += _rank(info, inputs[0], 4, "input 0 (qkv)")
            problems += _int32(info, inputs[2], "input 2 (cu_seqlens)") + _rank(info, inputs[2], 1, "input 2")
            problems += _max_seqlen(info, inputs[3], spec.max_seq)
        return problems

    if v["type_id"] == TYPE_INT8 and not spec.padded_int8:
        problems.append(f"{spec.layout_field}=0 runs the unfused path, which has no INT8 (type_id=2 asserts)")
    if v["type_id"] == TYPE_INT8 and v["has_mask"] != 1:
        problems.append("INT8 needs has_mask=1 (only the fused kernels run INT8)")
    problems += _count(spec, inputs, outputs, 1 + v["has_mask"], 1)
    if len(inputs) != 1 + v["has_mask"]:
        return problems
    problems += _rank(info, inputs[0], 5, "input 0 (qkv)")
    if info is not None:
        d = info.dim(inputs[0], spec.hidden_axis)
        if isinstance(d, int) and d != 3 * E:
            problems.append(f"input 0 (qkv) has {d} channels, expected 3 * hidden_size = {3 * E}")
    if v["has_mask"]:
        mask = inputs[1]
        want = spec.padded_mask_rank
        layout = "[B, P] (EmbLN v1/v6 output 1)" if want == 2 else "1-D [B] maskIdx"
        problems += _int32(info, mask, "mask input")
        r = info.rank(mask) if info else None
        if r is None and info is not None:
            r = _producer_rank(info, mask)
        if r is not None and r != want:
            mode = f"with {spec.layout_field}=0 " if spec.layout_field else ""
            problems.append(f"mask input {mask} has rank {r}; {spec.plugin} v{spec.version} {mode}takes a {layout}")
        if info is not None:
            prod = info.producer(mask)
            if prod is not None and _is(prod, EMB_LAYER_NORM):
                pv = read_scalar_attrs(prod)
                mha = pv["mha_type_id"].value if "mha_type_id" in pv else 0
                if mha != v["type_id"]:
                    problems.append(f"the EmbLayerNorm producing {mask} has mha_type_id {mha} but this node's "
                                    f"type_id is {v['type_id']}; they must be equal (it decides the mask format)")
    return problems


def _skip_rules(spec, v, E, inputs, outputs, info) -> list[str]:
    problems = _count(spec, inputs, outputs, 2, len(spec.outputs))
    int8 = spec.int8_only or v.get("type_id") == TYPE_INT8
    if int8 and (why := spec.int8_problem(hidden=E)) is not None:
        problems.append(f"{'interleaved' if spec.int8_only else 'INT8'} SkipLayerNorm: {why}")
    if len(inputs) != 2 or info is None:
        return problems
    rank = spec.inputs[0].rank
    for i in range(2):
        problems += _rank(info, inputs[i], rank, f"input {i}")
    s0, s1 = info.shape(inputs[0]), info.shape(inputs[1])
    if s0 is not None and s1 is not None and len(s0) == len(s1):
        for a, b in zip(s0, s1):
            if isinstance(a, int) and isinstance(b, int) and a != b:
                problems.append(f"input and skip shapes differ: {list(s0)} vs {list(s1)}")
                break
    hd = spec.hidden_axis
    if hd is not None and s0 is not None and len(s0) > hd and isinstance(s0[hd], int) and s0[hd] != E:
        problems.append(f"input 0 has hidden size {s0[hd]} at dim {hd}, but the weights have E = {E}")
    return problems


def _max_seqlen(info, name, limit) -> list[str]:
    if info is None:
        return []
    d = info.dim(name, 0)
    if isinstance(d, int) and d > limit:
        return [f"max_seqlen {name} is {d} long; this plugin supports at most {limit}"]
    return []


def _is(node, plugin) -> bool:
    return (node.op_type if hasattr(node, "op_type") else node.op) == plugin


def _producer_rank(info, name) -> int | None:
    """Rank of a plugin output whose shape the graph does not record, from the producer's spec."""
    prod = info.producer(name)
    if prod is None or not _is(prod, EMB_LAYER_NORM):
        return None
    ver = read_scalar_attrs(prod).get("plugin_version")
    spec = get_spec(EMB_LAYER_NORM, ver.value) if ver is not None and ver.kind == "STRING" else None
    outs = list(prod.output) if hasattr(prod, "output") else [t.name for t in prod.outputs]
    if spec is None or name not in outs:
        return None
    return spec.outputs[outs.index(name)].rank


_RULES = {EMB_LAYER_NORM: _emb_rules, QKV_TO_CONTEXT: _qkv_rules, SKIP_LAYER_NORM: _skip_rules}
