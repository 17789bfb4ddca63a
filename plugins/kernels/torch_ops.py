"""The standard ONNX nodes of a fused graph (the GEMMs, GELU, reshapes, Q/DQ, the QA head) on PyTorch CUDA, in
the types the graph declares: float32 stays float32 (TF32 off), so the numbers differ from ONNX Runtime's only
by the order of float32 sums. An op outside this table is refused naming the node.

An INT8 GEMM (a MatMul reading two DequantizeLinear outputs of int8 data: the activation per tensor, the weight
per tensor or per output column, zero points 0, float32 scales) runs on the integers, as TensorRT's INT8 GEMM does
(int32 sums) and as ONNX Runtime's MatMulIntegerToFloat does on the CPU: the exact integer product, then
float32(sum) * float32(scale_a * scale_b). Dequantizing first and summing in float32 would round each sum
differently from the CPU reference, and the next quantization turns those last bits into whole steps."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from bertrt.errors import BertrtError


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def torch_dtype(elem_type: int):
    import torch

    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
            np.dtype(np.int8): torch.int8, np.dtype(np.uint8): torch.uint8, np.dtype(np.int32): torch.int32,
            np.dtype(np.int64): torch.int64, np.dtype(np.bool_): torch.bool,
            np.dtype(np.float64): torch.float64}[np.dtype(np_dtype)]


def _ints(t) -> list[int]:
    return [int(x) for x in t.flatten().tolist()]


def _axes(node, ins, a, index=1):
    if len(ins) > index and ins[index] is not None:
        return _ints(ins[index])
    return list(a.get("axes", [])) or None


def _reshape(x, shape, allowzero=0):
    dims = [x.shape[i] if d == 0 and not allowzero else d for i, d in enumerate(shape)]
    return x.reshape(dims)


def _qparams(x, scale, zp, axis):
    if scale.numel() > 1:
        shape = [1] * x.dim()
        shape[axis % x.dim()] = -1
        scale = scale.reshape(shape)
        zp = zp.reshape(shape) if zp is not None else None
    return scale, zp


def _quantize(x, scale, zp=None, axis=1):
    import torch

    scale, zp = _qparams(x, scale, zp, axis)
    out_dtype = zp.dtype if zp is not None else torch.uint8
    lo, hi = (-128, 127) if out_dtype == torch.int8 else (0, 255)
    q = torch.round(x.float() / scale.float())
    if zp is not None:
        q = q + zp.float()
    return torch.clamp(q, lo, hi).to(out_dtype)


def _dequantize(x, scale, zp=None, axis=1):
    scale, zp = _qparams(x, scale, zp, axis)
    xf = x.float()
    if zp is not None:
        xf = xf - zp.float()
    return xf * scale.float()


def _reduce(fn):
    def run(node, ins, a):
        axes = _axes(node, ins, a)
        keep = bool(a.get("keepdims", 1))
        x = ins[0]
        if axes is None:
            if a.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.dim()))
        return [fn(x, axes, keep).to(x.dtype)]
    return run


def _split(node, ins, a):
    axis = a.get("axis", 0)
    if len(ins) > 1 and ins[1] is not None:
        sizes = _ints(ins[1])
    elif "split" in a:
        sizes = list(a["split"])
    else:
        n = a.get("num_outputs", len(node.output))
        total = ins[0].shape[axis]
        step = -(-total // n)
        sizes = [min(step, total - i * step) for i in range(n)]
    return list(ins[0].split(sizes, dim=axis))


def _slice(node, ins, a):
    x = ins[0]
    starts, ends = _ints(ins[1]), _ints(ins[2])
    axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
    steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    idx = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st != 1:
            raise BertrtError(f"node {node.name}: Slice with step {st} is not supported by the kernels backend")
        n = x.shape[ax]
        s = max(0, min(n, s + n if s < 0 else s))
        e = max(0, min(n, e + n if e < 0 else e))
        idx[ax % x.dim()] = slice(s, e)
    return [x[tuple(idx)]]


def _constant(t):
    import torch

    arr = numpy_helper.to_array(t)
    out = torch.as_tensor(np.array(arr))
    return out if arr.dtype == np.int64 or not torch.cuda.is_available() else out.cuda()


def _ops():
    import torch
    import torch.nn.functional as F

    def unsqueeze(node, ins, a):
        x = ins[0]
        for ax in sorted(ax % (x.dim() + len(_axes(node, ins, a))) for ax in _axes(node, ins, a)):
            x = x.unsqueeze(ax)
        return [x]

    def squeeze(node, ins, a):
        axes = _axes(node, ins, a)
        x = ins[0]
        if axes is None:
            return [x.squeeze()]
        for ax in sorted((ax % x.dim() for ax in axes), reverse=True):
            x = x.squeeze(ax)
        return [x]

    return {
        "Identity": lambda n, i, a: [i[0]],
        "Reshape": lambda n, i, a: [_reshape(i[0], _ints(i[1]), a.get("allowzero", 0))],
        "Flatten": lambda n, i, a: [i[0].reshape(int(np.prod(i[0].shape[:a.get("axis", 1)])), -1)],
        "Transpose": lambda n, i, a: [i[0].permute(*(a.get("perm") or range(i[0].dim() - 1, -1, -1)))],
        "MatMul": lambda n, i, a: [torch.matmul(i[0], i[1])],
        "Gemm": lambda n, i, a: [a.get("alpha", 1.0) * torch.matmul(i[0].T if a.get("transA") else i[0],
                                                                     i[1].T if a.get("transB") else i[1])
                                 + (a.get("beta", 1.0) * i[2] if len(i) > 2 and i[2] is not None else 0)],
        "Add": lambda n, i, a: [i[0] + i[1]],
        "Sub": lambda n, i, a: [i[0] - i[1]],
        "Mul": lambda n, i, a: [i[0] * i[1]],
        "Div": lambda n, i, a: [torch.div(i[0], i[1], rounding_mode="trunc") if not i[0].is_floating_point()
                                else i[0] / i[1]],
        "Pow": lambda n, i, a: [torch.pow(i[0], i[1])],
        "Sqrt": lambda n, i, a: [torch.sqrt(i[0])],
        "Erf": lambda n, i, a: [torch.erf(i[0])],
        "Tanh": lambda n, i, a: [torch.tanh(i[0])],
        "Relu": lambda n, i, a: [torch.relu(i[0])],
        "Gelu": lambda n, i, a: [F.gelu(i[0], approximate=a.get("approximate", b"none").decode()
                                        if isinstance(a.get("approximate"), bytes) else a.get("approximate", "none"))],
        "Softmax": lambda n, i, a: [torch.softmax(i[0], dim=a.get("axis", -1))],
        "LayerNormalization": lambda n, i, a: [F.layer_norm(
            i[0], i[0].shape[a.get("axis", -1) % i[0].dim():], i[1], i[2] if len(i) > 2 else None,
            a.get("epsilon", 1e-5))],
        "Cast": lambda n, i, a: [i[0].to(torch_dtype(a["to"]))],
        "ReduceSum": _reduce(lambda x, ax, k: x.sum(dim=ax, keepdim=k)),
        "ReduceMean": _reduce(lambda x, ax, k: x.float().mean(dim=ax, keepdim=k)),
        "ReduceMax": _reduce(lambda x, ax, k: x.amax(dim=ax, keepdim=k)),
        "QuantizeLinear": lambda n, i, a: [_quantize(i[0], i[1], i[2] if len(i) > 2 else None, a.get("axis", 1))],
        "DequantizeLinear": lambda n, i, a: [_dequantize(i[0], i[1], i[2] if len(i) > 2 else None,
                                                         a.get("axis", 1))],
        "Squeeze": squeeze,
        "Unsqueeze": unsqueeze,
        "Split": _split,
        "Slice": _slice,
        "Concat": lambda n, i, a: [torch.cat([t for t in i if t is not None], dim=a["axis"])],
        "Gather": lambda n, i, a: [torch.index_select(i[0], a.get("axis", 0), i[1].reshape(-1).long().to(
            i[0].device)).reshape(
            i[0].shape[:a.get("axis", 0) % i[0].dim()] + i[1].shape + i[0].shape[a.get("axis", 0) % i[0].dim() + 1:])],
        "Shape": lambda n, i, a: [torch.tensor(list(i[0].shape)[a.get("start", 0):a.get("end", None)],
                                               dtype=torch.int64)],
        "Where": lambda n, i, a: [torch.where(i[0], i[1], i[2])],
        "Equal": lambda n, i, a: [i[0] == i[1]],
        "Not": lambda n, i, a: [~i[0]],
        "Expand": lambda n, i, a: [i[0] * torch.ones(_ints(i[1]), dtype=i[0].dtype, device=i[0].device)],
        "Constant": lambda n, i, a: [_constant(a["value"])],
    }


INT_MATMUL = "bertrt.IntegerMatMul"  # a MatMul of two DequantizeLinear outputs, fused as described above


def _int_matmul(node, ins, a):
    import torch

    qa, sa, qb, sb = ins  # qb: the int8 weight [K, N]
    x = qa.reshape(-1, qa.shape[-1])
    if x.is_cuda and x.shape[0] > 16 and x.shape[1] % 8 == 0 and qb.shape[1] % 8 == 0:
        acc = torch._int_mm(x, qb)  # cuBLASLt int8 x int8 -> int32, TensorRT's own sum
    else:  # exact too: float64 holds any int8 GEMM's sum (|sum| < 2**53)
        acc = torch.matmul(x.to(torch.float64), qb.to(torch.float64))
    return [(acc.to(torch.float32) * (sa * sb)).reshape(*qa.shape[:-1], qb.shape[1])]


def integer_matmuls(nodes, constants, keep=()) -> list:
    """``nodes`` with each INT8 GEMM (see the module text) as one INT_MATMUL node reading the two quantized
    tensors and their scales; its DequantizeLinear nodes go when nothing else reads them (``keep``: tensors read
    after these nodes)."""
    import torch

    made = {o: n for n in nodes for o in n.output}
    readers = {}
    for n in nodes:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1

    def int8_zero_point(t) -> bool:
        return t is not None and t.dtype == torch.int8 and not bool(t.any())

    def int8_data(dq) -> bool:  # int8 data: its zero point, the constant itself, or the QuantizeLinear that made it
        if dq.input[0] in constants:
            return constants[dq.input[0]].dtype == torch.int8 and (
                len(dq.input) < 3 or not dq.input[2] or int8_zero_point(constants.get(dq.input[2])))
        if len(dq.input) > 2 and dq.input[2]:
            return int8_zero_point(constants.get(dq.input[2]))
        q = made.get(dq.input[0])
        return (q is not None and q.op_type == "QuantizeLinear" and len(q.input) > 2
                and int8_zero_point(constants.get(q.input[2])))

    def dq_of(name, weight):
        dq = made.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.domain not in ("", "ai.onnx") or not int8_data(dq):
            return None
        scale = constants.get(dq.input[1])
        if scale is None or scale.dtype != torch.float32:
            return None
        if not weight:
            return dq if scale.numel() == 1 else None
        w = constants.get(dq.input[0])
        if w is None or w.dim() != 2:
            return None
        per_column = _attrs(dq).get("axis", 1) % 2 == 1 and scale.numel() == w.shape[1]
        return dq if scale.numel() == 1 or per_column else None  # per input row (axis 0) is no GEMM's scale

    out, gone = [], set()
    for n in nodes:
        if n.op_type == "MatMul" and n.domain in ("", "ai.onnx"):
            da, db = dq_of(n.input[0], False), dq_of(n.input[1], True)
            if da is not None and db is not None:
                sb = db.input[1] + "/flat"
                constants.setdefault(sb, constants[db.input[1]].reshape(-1))
                out.append(onnx.helper.make_node(INT_MATMUL, [da.input[0], da.input[1], db.input[0], sb],
                                                 list(n.output), name=n.name))
                for dq, tensor in ((da, n.input[0]), (db, n.input[1])):
                    if readers[tensor] == 1 and tensor not in keep:
                        gone.add(id(dq))
                continue
        out.append(n)
    return [n for n in out if id(n) not in gone]


class TorchSegment:
    """A run of standard nodes as PyTorch CUDA calls (the ops table above)."""

    def __init__(self, nodes, constants, keep=(), half_gemms: bool = False):
        import torch

        self.constants = dict(constants)  # name -> torch tensor on the GPU (initializers)
        self.table = _ops()
        self.table[INT_MATMUL] = _int_matmul
        nodes = self.nodes = integer_matmuls(nodes, self.constants, keep)
        if half_gemms:
            mm = self.table["MatMul"]
            self.table["MatMul"] = lambda n, i, a: [mm(n, [t.half() for t in i], a)[0].float()]
            for n in nodes:  # the weights once in FP16, not at every call
                if n.op_type == "MatMul":
                    for name in n.input:
                        t = self.constants.get(name)
                        if t is not None and t.is_floating_point():
                            self.constants[name] = t.half()
        # Tensors made and used only inside the segment go once their last reader has run.
        keep = set(keep)
        last = {}
        for k, n in enumerate(nodes):
            for name in n.input:
                last[name] = k
        made = {o for n in nodes for o in n.output}
        self.drop = [[] for _ in nodes]
        for name, k in last.items():
            if name in made and name not in keep:
                self.drop[k].append(name)
        self._torch = torch
        bad = sorted({n.op_type for n in nodes if n.op_type not in self.table or n.domain not in ("", "ai.onnx")})
        if bad:
            raise BertrtError(f"the kernels backend has no PyTorch version of op {bad[0]} "
                              f"(node {next(n.name for n in nodes if n.op_type == bad[0])})")
        self.attrs = [_attrs(n) for n in nodes]

    def run(self, env: dict) -> None:
        for node, a, drop in zip(self.nodes, self.attrs, self.drop):
            ins = [None if not name else env[name] if name in env else self.constants[name] for name in node.input]
            outs = self.table[node.op_type](node, ins, a)
            for name, t in zip(node.output, outs):
                if name:
                    env[name] = t
            for name in drop:
                env.pop(name, None)
