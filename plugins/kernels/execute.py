"""One plugin node on NVIDIA's kernels: what the plugin's enqueue does with the node's fields, on PyTorch CUDA
tensors. The tensor-type conventions at the boundary are PluginExecutor's (plugins/execute.py): float32 graph
tensors are cast to the plugin's type on the way in (FP16: round to half; INT8: quantize with amax / 127, round
half to even, clamp to [-127, 127]) and back on the way out, unless the graph declares that type.
"""

from __future__ import annotations

import numpy as np

from bertrt.errors import BertrtError
from bertrt.plugins.nodes import EMB_LAYER_NORM, QKV_TO_CONTEXT, SKIP_LAYER_NORM, TYPE_FP16, TYPE_INT8, read_attrs
from bertrt.plugins.reference import DEFAULT_DQ_PROBS, scale_from_amax
from bertrt.plugins.specs import field_values, get_spec

# mhaRunner's classes, as shim.cu numbers them.
UNFUSED, FUSED_FP16, FUSED_INT8, FUSED_FP16_V2, FUSED_INT8_V2 = range(5)
TYPE_INT32 = 3


def varseqlen_bucket(type_id: int, max_s: int) -> int:
    """The kernel sequence length QKVToContextVarSeqlenPlugin::enqueue picks for a batch's longest sequence."""
    if max_s > 512:
        raise BertrtError(f"var-seqlen attention takes sequences up to 512 tokens, got max_seqlen {max_s}")
    half = type_id == TYPE_FP16
    for limit, s in ((64, 64), (96, 96)) if half else ():
        if max_s <= limit:
            return s
    if max_s <= 128:
        return 128
    if max_s <= 192:
        return 256 if half else 192
    for limit in (256, 384):
        if max_s <= limit:
            return limit
    return 512


def to_chw32(x):
    """Logical [1, C, T, 1] -> the bytes of TensorRT's CHW32 format ([C/32, T, 32])."""
    C, T = x.shape[1], x.shape[2]
    return x.reshape(C // 32, 32, T).permute(0, 2, 1).contiguous()


def from_chw32(buf, C: int, T: int):
    return buf.reshape(C // 32, T, 32).permute(0, 2, 1).reshape(1, C, T, 1).contiguous()


class KernelExecutor:
    """One plugin node on the kernels library; called with torch CUDA tensors (None for an empty input name)."""

    def __init__(self, node, lib, sm: int, out_dtypes: dict[str, str] | None = None,
                 amax: dict[str, float] | None = None):
        import torch

        self.torch = torch
        self.node, self.lib, self.sm = node, lib, sm
        self.name = node.name or node.output[0]
        self.spec = get_spec(node.op_type, read_attrs(node)["plugin_version"].value)
        self.v = field_values(self.spec, node)
        self.inputs, self.outputs = list(node.input), list(node.output)
        self.out_dtypes = out_dtypes or {}
        self.amax = amax or {}
        self._dev: dict[str, object] = {}
        self._runners: dict[tuple, int] = {}
        self._run = {EMB_LAYER_NORM: self._emb, QKV_TO_CONTEXT: self._qkv, SKIP_LAYER_NORM: self._skip}[
            self.spec.plugin]
        self.refusal = self._refusal()

    def _refusal(self) -> str | None:
        s, v = self.spec, self.v
        if s.pre_ln_output:
            return f"{s.plugin} v{s.version} (MTron) is not wired to its kernels"
        if s.plugin == QKV_TO_CONTEXT and s.layout == "interleaved":
            return f"{s.plugin} v{s.version} (INT8 interleaved) is not wired to its kernels"
        if s.plugin == QKV_TO_CONTEXT and s.packed(v) and v["hidden_size"] // v["num_heads"] != 64:
            return "var-seqlen attention with head size below 64 (the plugin's zero padding) is not wired"
        return None

    def __call__(self, arrays: list) -> dict:
        if self.refusal:
            raise BertrtError(f"plugin {self.name}: {self.refusal} in the kernels backend")
        outs = self._run(arrays)
        return {name: self._declared(o, name) for o, name in zip(outs, self.outputs) if name}

    # -------------------------------------------------------------- helpers

    @property
    def stream(self):
        return self.torch.cuda.current_stream().cuda_stream

    def scale(self, tensor: str) -> float:
        if tensor not in self.amax:
            raise BertrtError(f"plugin {self.name} runs in INT8 but no amax is given for its tensor '{tensor}' "
                              "(pass the calibration table)")
        return scale_from_amax(self.amax[tensor])

    def weight(self, field: str, dtype):
        """A field's weights on the GPU in the type the plugin keeps them in (cached)."""
        key = f"{field}:{dtype}"
        if key not in self._dev:
            self._dev[key] = self.torch.as_tensor(np.ascontiguousarray(self.v[field], np.float32).ravel()).to(
                device="cuda", dtype=dtype)
        return self._dev[key]

    def to_type(self, t, type_id: int, tensor: str):
        torch = self.torch
        if type_id == TYPE_INT8:
            if t.dtype == torch.int8:
                return t.contiguous()
            s = self.scale(tensor)
            return torch.clamp(torch.round(t.float() / s), -127, 127).to(torch.int8).contiguous()
        return t.to(torch.float16 if type_id == TYPE_FP16 else torch.float32).contiguous()

    def from_type(self, t, tensor: str):
        """A plugin output back to a float32 graph tensor (the values its type holds)."""
        torch = self.torch
        if t.dtype == torch.int8:
            return t.float() * self.scale(tensor)
        return t.float() if t.dtype == torch.float16 else t

    def _declared(self, t, name: str):
        want = self.out_dtypes.get(name)
        torch = self.torch
        if t.dtype in (torch.int32,):
            return t
        if want == "int8" and t.dtype == torch.int8:
            return t
        if want == "float16" and t.dtype == torch.float16:
            return t
        return self.from_type(t, name)

    def empty(self, shape, dtype):
        return self.torch.empty(tuple(int(d) for d in shape), dtype=dtype, device="cuda")

    @staticmethod
    def ptr(t):
        return None if t is None else t.data_ptr()

    # -------------------------------------------------------------- EmbLayerNorm

    def _emb(self, a):
        torch, v = self.torch, self.v
        E = int(np.asarray(v["bert_embeddings_layernorm_beta"]).size)
        fp16 = bool(v["output_fp16"])
        tdtype = torch.float16 if fp16 else torch.float32
        word = self.weight("bert_embeddings_word_embeddings", tdtype)
        tok = self.weight("bert_embeddings_token_type_embeddings", tdtype)
        pos = self.weight("bert_embeddings_position_embeddings", tdtype)
        beta = self.weight("bert_embeddings_layernorm_beta", torch.float32)
        gamma = self.weight("bert_embeddings_layernorm_gamma", torch.float32)
        ids, seg = a[0].to(torch.int32).contiguous(), a[1].to(torch.int32).contiguous()
        word_size, tok_size = word.numel() // E, tok.numel() // E
        if not self.spec.packed(v):
            S, B = ids.shape
            out = self.empty((S, B, E, 1, 1), tdtype)
            self.lib.call("bertrt_emb_ln", int(fp16), E, B, S, ids.data_ptr(), seg.data_ptr(), beta.data_ptr(),
                          gamma.data_ptr(), word.data_ptr(), pos.data_ptr(), tok.data_ptr(), word_size, tok_size,
                          out.data_ptr(), self.stream)
            mask = a[2].to(torch.int32).contiguous()
            mha = int(v.get("mha_type_id", 0) or 0)
            full = int(v.get("full_mask", 0) or 0)
            packed = self.lib.bertrt_mask_packed_size(self.sm, mha, S)
            if full and packed == 1:
                raise BertrtError(f"plugin {self.name}: full_mask=1 at S={S}, for which there is no packed layout")
            m = self.empty((B, packed), torch.int32)
            self.lib.call("bertrt_emb_mask", self.sm, mha, full, B, S, mask.data_ptr(), m.data_ptr(), self.stream)
            return [out, m]
        cu = a[2].to(torch.int32).contiguous()
        B, T = cu.numel() - 1, ids.numel()
        max_s = int(a[3].shape[0])
        S = 128 if max_s <= 128 else 192 if max_s <= 192 else 256 if max_s <= 256 else 384
        out = self.empty((T, E, 1, 1), tdtype)
        self.lib.call("bertrt_emb_ln_hface", int(fp16), E, B, S, ids.data_ptr(), seg.data_ptr(), cu.data_ptr(),
                      beta.data_ptr(), gamma.data_ptr(), word.data_ptr(), pos.data_ptr(), tok.data_ptr(), word_size,
                      tok_size, out.data_ptr(), self.stream)
        return [out, torch.zeros((), dtype=torch.int32, device="cuda")]

    # -------------------------------------------------------------- QKVToContext

    def runner(self, kind: int, type_id: int, N: int, dq: float, scale_max: int = 1) -> int:
        key = (kind, type_id)
        if key not in self._runners:
            h = self.lib.bertrt_mha_create(kind, type_id, N, self.sm, dq, scale_max)
            if not h:
                raise BertrtError(f"plugin {self.name}: {self.lib.bertrt_last_error().decode()}")
            self._runners[key] = h
        return self._runners[key]

    def _qkv(self, a):
        torch, v = self.torch, self.v
        t, N, E = int(v["type_id"]), int(v["num_heads"]), int(v["hidden_size"])
        H = E // N
        dq = float(v.get("dq_probs") or DEFAULT_DQ_PROBS)
        s_qkv = self.scale(self.inputs[0]) if t == TYPE_INT8 else 1.0
        s_ctx = self.scale(self.outputs[0]) if t == TYPE_INT8 else 1.0
        x = self.to_type(a[0], t, self.inputs[0])
        odtype = x.dtype
        if self.spec.packed(v):
            cu = a[2].to(torch.int32).contiguous()
            B, T, max_s = cu.numel() - 1, x.shape[0], int(a[3].shape[0])
            S = varseqlen_bucket(t, max_s)
            r = self.runner(FUSED_INT8_V2 if t == TYPE_INT8 else FUSED_FP16_V2, t, N, dq,
                            int(v.get("use_int8_scale_max", 1)))
            if not self.lib.bertrt_mha_is_valid(r, 64, S):
                raise BertrtError(f"plugin {self.name}: no fused var-seqlen kernel for S={S} on sm_{self.sm}")
            self.lib.call("bertrt_mha_setup", r, S, B, 64)
            ws = self.empty((max(self.lib.bertrt_mha_workspace(r), 16),), torch.uint8)
            out = self.empty((T, E, 1, 1), odtype)
            dummy = a[1] if a[1] is not None and a[1].numel() else ws
            ms = a[3].contiguous()
            self.lib.call("bertrt_mha_run_varseqlen", r, t, T, E, B, max_s, s_qkv, s_ctx, x.data_ptr(),
                          dummy.data_ptr(), cu.data_ptr(), ms.data_ptr(), out.data_ptr(), ws.data_ptr(), self.stream)
            return [out]
        S, B = x.shape[0], x.shape[1]
        has_mask = bool(v["has_mask"])
        mask = a[1].to(torch.int32).contiguous() if has_mask else None
        r = None
        if self.spec.layout_field is None and has_mask and t in (TYPE_FP16, TYPE_INT8):
            # QKVToContextPluginDynamic: the fused runner when it has a kernel for (H, S), else unfused.
            fused = self.runner(FUSED_INT8 if t == TYPE_INT8 else FUSED_FP16, t, N, dq)
            if self.lib.bertrt_mha_is_valid(fused, H, S):
                r = fused
        if r is None:
            if t == TYPE_INT8:
                raise BertrtError(f"plugin {self.name}: INT8 at head size {H}, S={S} has no fused kernel and the "
                                  "unfused runner has no INT8 (the plugin throws)")
            r = self.runner(UNFUSED, t, N, dq)
        self.lib.call("bertrt_mha_setup", r, S, B, H)
        ws = self.empty((max(self.lib.bertrt_mha_workspace(r), 16),), torch.uint8)
        out = self.empty((S, B, E, 1, 1), odtype)
        self.lib.call("bertrt_mha_run_fixed", r, t, S, B, E, s_qkv, s_ctx, x.data_ptr(), self.ptr(mask),
                      out.data_ptr(), ws.data_ptr(), self.stream)
        return [out]

    # -------------------------------------------------------------- SkipLayerNorm

    def _skip(self, a):
        torch, v = self.torch, self.v
        E = int(np.asarray(v["beta"]).size)
        if self.spec.layout == "interleaved":
            s_in, s_skip, s_out = (self.scale(n) for n in (self.inputs[0], self.inputs[1], self.outputs[0]))
            x = to_chw32(self.to_type(a[0], TYPE_INT8, self.inputs[0]))
            sk = to_chw32(self.to_type(a[1], TYPE_INT8, self.inputs[1]))
            T = a[0].shape[2]
            out = torch.empty_like(x)
            self.lib.call("bertrt_skip_ln_il", E, T, x.data_ptr(), sk.data_ptr(),
                          self.weight("beta", torch.float16).data_ptr(), self.weight("gamma", torch.float16).data_ptr(),
                          out.data_ptr(), s_in, s_skip, 1.0 / s_out, self.stream)
            return [from_chw32(out, E, T)]
        t = int(v["type_id"])
        wdtype = torch.float32 if t == 0 else torch.float16
        x = self.to_type(a[0], t, self.inputs[0])
        sk = self.to_type(a[1], t, self.inputs[1])
        if x.shape != sk.shape:
            raise BertrtError(f"plugin {self.name}: input {list(x.shape)} and skip {list(sk.shape)} differ")
        scales = ((self.scale(self.inputs[0]), self.scale(self.inputs[1]), 1.0 / self.scale(self.outputs[0]))
                  if t == TYPE_INT8 else (1.0, 1.0, 1.0))
        bias = self.weight("bias", wdtype) if v.get("bias") is not None else None
        out = torch.empty_like(x)
        self.lib.call("bertrt_skip_ln", t, E, x.numel(), x.data_ptr(), sk.data_ptr(),
                      self.weight("beta", wdtype).data_ptr(), self.weight("gamma", wdtype).data_ptr(),
                      out.data_ptr(), self.ptr(bias), *scales, self.stream)
        return [out]

    def close(self):
        for h in self._runners.values():
            self.lib.bertrt_mha_destroy(h)
        self._runners.clear()
