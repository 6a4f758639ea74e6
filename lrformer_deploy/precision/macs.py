"""What a reduced graph really runs in: Conv/MatMul/Gemm multiply-accumulates per precision.

Read from the written graph itself (after shape inference), not from the decisions that produced it:
a product whose inputs come out of DequantizeLinear runs in INT8, otherwise in the element type of
its inputs (float16 -> FP16, float -> FP32).
"""
from __future__ import annotations

import collections
from typing import Iterable

import numpy as np

PRODUCT_OPS = ("Conv", "MatMul", "Gemm", "ConvTranspose")


def _shapes(model) -> tuple[dict[str, list[int]], dict[str, int]]:
    shapes, types = {}, {}
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 0 for d in t.shape.dim]
        types[vi.name] = t.elem_type
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
        types[init.name] = init.data_type
    return shapes, types


def node_macs(node, shapes) -> int:
    """Multiply-accumulates of one Conv/MatMul/Gemm from static shapes (0 when a shape is unknown)."""
    out = shapes.get(node.output[0]) or []
    if not out or any(d <= 0 for d in out):
        return 0
    n_out = int(np.prod(out))
    if node.op_type in ("Conv", "ConvTranspose"):
        w = shapes.get(node.input[1]) or []
        if len(w) < 3 or any(d <= 0 for d in w):
            return 0
        if node.op_type == "ConvTranspose":
            x = shapes.get(node.input[0]) or []
            return int(np.prod(x)) * int(np.prod(w[1:])) if x else 0
        return n_out * int(np.prod(w[1:]))  # w: Cout x Cin/groups x k...
    a = shapes.get(node.input[0]) or []
    if not a or a[-1] <= 0:
        return 0
    k = a[-1]
    if node.op_type == "Gemm" and any(x.name == "transA" and x.i for x in node.attribute):
        k = a[0]
    return n_out * k


def precision_census(model, kept_fp32: Iterable[dict] = (), note: str | None = None) -> dict:
    """{"macs_share": {int8, fp16, fp32}, "gmacs": ..., "fp32_ops": [{op, count, reason}]} for `model`
    (an onnx.ModelProto with inferred shapes). kept_fp32: the FP16 decision record, whose reasons are
    grouped per op type and reason; `note` explains a target that keeps everything in FP32."""
    from onnx import TensorProto

    shapes, types = _shapes(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    macs = collections.Counter()
    for node in model.graph.node:
        if node.op_type not in PRODUCT_OPS:
            continue
        n = node_macs(node, shapes)
        src = [producer.get(i) for i in node.input[:2]]
        if any(p is not None and p.op_type == "DequantizeLinear" for p in src):
            kind = "int8"
        elif types.get(node.input[0]) == TensorProto.FLOAT16:
            kind = "fp16"
        else:
            kind = "fp32"
        macs[kind] += n
    total = sum(macs.values())
    groups = collections.Counter((k["op"], k["reason"]) for k in kept_fp32)
    fp32_ops = [{"op": op, "count": c, "reason": r} for (op, r), c in sorted(groups.items(), key=lambda x: -x[1])]
    if note:
        fp32_ops.insert(0, {"op": "*", "count": None, "reason": note})
    return {
        "gmacs": round(total / 1e9, 3),
        "macs_share": {k: round(macs[k] / total, 4) if total else 0.0 for k in ("int8", "fp16", "fp32")},
        "fp32_ops": fp32_ops,
    }


def census_line(census: dict) -> str:
    s = census["macs_share"]
    n_fp32 = sum(o["count"] or 0 for o in census["fp32_ops"])
    return (f"Conv/MatMul MACs ({census['gmacs']} G): int8 {100 * s['int8']:.1f}%, fp16 {100 * s['fp16']:.1f}%, "
            f"fp32 {100 * s['fp32']:.1f}%; {n_fp32} float ops kept FP32")
