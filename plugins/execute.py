"""Run one plugin node on numpy arrays with the reference that its name, version and fields select.

Tensor types at the boundary: a float16 input is read as it is; an int8 input is dequantized with its
scale. Outputs take the dtype the graph declares for them (float16 / int8 / float32); with no
declaration they are float32 holding the values the plugin's precision allows (FP16-rounded, or
fake-quantized INT8), which is what a weakly-typed TensorRT build hands to the next layer.

INT8 scales: QKV v3/v6 with use_explicit_int8=1 carry them as fields; every other INT8 path takes
them from ``amax`` (tensor name -> amax, as a calibration cache gives), scale = amax / 127.
"""

from __future__ import annotations

import numpy as np

from bertrt.errors import BertrtError
from bertrt.plugins import reference as ref
from bertrt.plugins.nodes import EMB_LAYER_NORM, QKV_TO_CONTEXT, SKIP_LAYER_NORM, TYPE_INT8, read_attrs
from bertrt.plugins.specs import field_values, get_spec


class PluginExecutor:
    """One plugin node, its fields parsed once, callable many times."""

    def __init__(self, node, out_dtypes: dict[str, str] | None = None, amax: dict[str, float] | None = None):
        self.node = node
        self.name = node.name or node.output[0]
        attrs = read_attrs(node)
        self.spec = get_spec(node.op_type, attrs["plugin_version"].value)
        self.v = field_values(self.spec, node)
        self.inputs = list(node.input)
        self.outputs = list(node.output)
        self.out_dtypes = out_dtypes or {}
        self.amax = amax or {}
        self._run = {EMB_LAYER_NORM: self._emb, QKV_TO_CONTEXT: self._qkv, SKIP_LAYER_NORM: self._skip}[
            self.spec.plugin]

    def __call__(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Output name -> array for every output the node declares (an empty name drops that output)."""
        outs = self._run(arrays)
        return {name: self._to_declared(o, name) for o, name in zip(outs, self.outputs) if name}

    # -------------------------------------------------------------- helpers

    def scale(self, tensor: str) -> float:
        if tensor not in self.amax:
            raise BertrtError(f"plugin {self.name} runs in INT8 but no amax is given for its tensor '{tensor}' "
                              "(pass the calibration table)")
        return ref.scale_from_amax(self.amax[tensor])

    def _real(self, arr: np.ndarray, tensor: str) -> np.ndarray:
        if arr.dtype == np.int8:
            return arr.astype(np.float32) * np.float32(self.scale(tensor))
        return np.asarray(arr, dtype=np.float32)

    def _to_declared(self, out: np.ndarray, name: str) -> np.ndarray:
        want = self.out_dtypes.get(name)
        if out.dtype in (np.int32, np.int8) or want in (None, "float32", out.dtype.name):
            return out
        if want == "float16":
            return out.astype(np.float16)
        if want == "int8":
            return np.clip(np.rint(out / np.float32(self.scale(name))), ref.INT8_OUT_MIN, 127).astype(np.int8)
        return out.astype(want)

    # -------------------------------------------------------------- per plugin

    def _emb(self, a):
        v = self.v
        tables = (v["bert_embeddings_word_embeddings"], v["bert_embeddings_token_type_embeddings"],
                  v["bert_embeddings_position_embeddings"])
        E = v["bert_embeddings_layernorm_beta"].size
        word, tok, pos = (t.reshape(-1, E) for t in tables)
        gamma, beta = v["bert_embeddings_layernorm_gamma"], v["bert_embeddings_layernorm_beta"]
        fp16 = bool(v["output_fp16"])
        ids, seg = np.asarray(a[0]), np.asarray(a[1])
        self._check_ids(ids, word.shape[0], "token id", 0)
        self._check_ids(seg, tok.shape[0], "segment id", 1)
        if not self.spec.packed(v):
            if ids.shape[0] > pos.shape[0]:
                raise BertrtError(f"plugin {self.name}: sequence length {ids.shape[0]} exceeds the "
                                  f"{pos.shape[0]} position embeddings")
            return ref.emb_ln_fixed(ids, seg, np.asarray(a[2]), word, tok, pos, gamma, beta, fp16)
        cu = np.asarray(a[2])
        return ref.emb_ln_varseqlen(ids, seg, cu, word, tok, pos, gamma, beta, fp16, mtron=self.spec.pre_ln_output)

    def _check_ids(self, ids, n, what, i):
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise BertrtError(f"plugin {self.name}: input {i} has a {what} outside [0, {n}) "
                              f"(min {ids.min()}, max {ids.max()})")

    def _qkv(self, a):
        v = self.v
        N = v["num_heads"]
        if self.spec.layout == "interleaved":
            explicit = v["use_explicit_int8"] == 1
            s_qkv = v["input_qkv_scale"] if explicit else self.scale(self.inputs[0])
            s_ctx = v["output_ctx_scale"] if explicit else self.scale(self.outputs[0])
            x = a[0].astype(np.float32) * np.float32(s_qkv) if a[0].dtype == np.int8 else a[0]
            out = ref.qkv_interleaved_int8(x, np.asarray(a[1]), N, s_qkv, s_ctx, v["dq_probs"])
            if self.out_dtypes.get(self.outputs[0]) == "int8" or a[0].dtype == np.int8:
                return [np.clip(np.rint(out / np.float32(s_ctx)), ref.INT8_OUT_MIN, 127).astype(np.int8)]
            return [out]
        t = v["type_id"]
        s_qkv = self.scale(self.inputs[0]) if t == TYPE_INT8 else None
        s_ctx = self.scale(self.outputs[0]) if t == TYPE_INT8 else None
        x = self._real(a[0], self.inputs[0])
        if self.spec.packed(v):
            return [ref.qkv_varseqlen(x, np.asarray(a[2]), N, t, s_qkv, s_ctx, v["dq_probs"])]
        mask = np.asarray(a[1]) if v["has_mask"] else None
        if mask is not None and self.spec.padded_mask_rank == 2 and mask.ndim == 2 and mask.shape[1] != 1:
            raise BertrtError(f"plugin {self.name}: packed mask [B, {mask.shape[1]}] is GPU-specific; the CPU "
                              "reference needs the maskIdx form [B, 1]")
        fused = bool(v["has_mask"]) and bool(self.spec.fused_head_sizes)  # v1/v4: the fused runner where it has kernels
        return [ref.qkv_fixed(x, N, mask, t, s_qkv, s_ctx, v["dq_probs"], fused=fused)]

    def _skip(self, a):
        v = self.v
        if self.spec.layout == "interleaved":
            s_in, s_skip = self.scale(self.inputs[0]), self.scale(self.inputs[1])
            s_out = self.scale(self.outputs[0])
            x, skip = self._real(a[0], self.inputs[0]), self._real(a[1], self.inputs[1])
            mtron = self.spec.pre_ln_output
            s_sum = self.scale(self.outputs[1]) if mtron and len(self.outputs) > 1 and self.outputs[1] else None
            if mtron and s_sum is None:
                return [ref.skip_ln_interleaved(x, skip, v["gamma"], v["beta"], s_in, s_skip, s_out)]
            out = ref.skip_ln_interleaved(x, skip, v["gamma"], v["beta"], s_in, s_skip, s_out, mtron, s_sum)
            return list(out) if mtron else [out]
        t = v["type_id"]
        scales = (self.scale(self.inputs[0]), self.scale(self.inputs[1]), self.scale(self.outputs[0])) \
            if t == TYPE_INT8 else (None, None, None)
        x, skip = self._real(a[0], self.inputs[0]), self._real(a[1], self.inputs[1])
        return [ref.skip_ln(x, skip, v["gamma"], v["beta"], v["bias"], t, *scales)]
