"""The mask head's cheap tail: bilinear upsampling + ArgMax scored over a few candidate classes per cell.

The exported mask head ends in Resize(stride-8 logits -> input size) -> ArgMax over the classes. For 150
classes at 512x512 that materialises 39 M interpolated scores only to keep one id per pixel; on a CPU it
cost more than half of LRFormer-T's whole forward pass (samples/bench_mask_tail.py).

Every output pixel's scores are a convex combination of the four stride-8 nodes around it, so a class can
only win in a cell if its largest corner value reaches the best smallest corner value there, which in a
segmentation map leaves one class inside regions and two or three on boundaries. The "topk" tail keeps
the K classes with the largest corner maximum per cell (MaxPool 2x2 + TopK at stride 8), gathers their
four corner scores, interpolates only those K planes to the input size (separably: x, then y, with the
same half-pixel, edge-clamped weights as Resize) and takes the ArgMax over K. Static shapes, standard
ONNX ops (Pad, MaxPool, TopK, GatherElements, Gather, ArgMax), so ONNX Runtime, OpenVINO and TensorRT all
run it.

It equals the Resize -> ArgMax tail except (a) where more than K classes could win in one cell, which
needs K+1 classes within the logit range of one cell, and (b) exact ties / last-bit rounding between two
classes (the two tails add the same products in a different order). Both are measured, not assumed:
tests/test_mask_tail.py and samples/bench_mask_tail.py report agreement on real frames.
"""
from __future__ import annotations

import numpy as np

# Pixels equal to the full Resize -> ArgMax tail, 150 classes at 512x512 (samples/bench_mask_tail.py, and
# LRFormer-T with random weights on car-detection.mp4 frames): smooth 150-class logits K=3 0.99906,
# K=4 0.99981, K=5 0.99998; LRFormer-T K=3 0.99993, K=4 0.99998. Cost on 2 EPYC threads, ONNX Runtime:
# K=3 9.5 ms, K=4 13.6 ms, against ~85 ms for the NHWC Resize tail and ~170 ms for the logits head.
DEFAULT_K = 4


def _taps(out_len: int, in_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize's half-pixel (align_corners=False) source position per output index, clamped to the grid:
    (the lower node index, the weight of the upper node)."""
    pos = (np.arange(out_len, dtype=np.float64) + 0.5) * (in_len / out_len) - 0.5
    pos = np.clip(pos, 0.0, in_len - 1)
    lo = np.floor(pos).astype(np.int64)
    lo = np.minimum(lo, in_len - 1)
    return lo, (pos - lo).astype(np.float32)


def topk_tail_nodes(logits: str, mask: str, shape: tuple[int, int, int, int], out_size: tuple[int, int],
                    k: int = DEFAULT_K, prefix: str = "masktail", float_type: int = 1):
    """(nodes, initializers) computing int32 `mask` [N, H, W] from NCHW `logits` [N, C, h, w]."""
    from onnx import TensorProto, helper, numpy_helper

    n, c, h, w = shape
    H, W = out_size
    k = max(1, min(int(k), c))
    y0, fy = _taps(H, h)
    x0, fx = _taps(W, w)
    np_float = np.float16 if float_type == TensorProto.FLOAT16 else np.float32

    def name(s: str) -> str:
        return f"{prefix}_{s}"

    inits = [
        numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64), name("pads")),
        numpy_helper.from_array(y0, name("y0")),
        numpy_helper.from_array(x0, name("x0")),
        numpy_helper.from_array(fy.astype(np_float).reshape(H, 1), name("fy")),
        numpy_helper.from_array(fx.astype(np_float), name("fx")),
        numpy_helper.from_array(np.array([k], np.int64), name("k")),
    ]
    inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), name("hw_axes")))
    for row, col in ((0, 1), (1, 0), (1, 1)):
        inits += [numpy_helper.from_array(np.array([row, col], np.int64), name(f"start{row}{col}")),
                  numpy_helper.from_array(np.array([row + h, col + w], np.int64), name(f"stop{row}{col}"))]

    P = name
    nodes = [
        # the node below/right of the last one is itself (Resize clamps at the border)
        helper.make_node("Pad", [logits, P("pads")], [P("padded")], mode="edge", name=P("pad")),
        # largest of the four corners per class and cell, and the K classes that can win there
        helper.make_node("MaxPool", [P("padded")], [P("corner_max")], kernel_shape=[2, 2], strides=[1, 1],
                         name=P("corner_max")),
        helper.make_node("TopK", [P("corner_max"), P("k")], [P("cand_val"), P("cand")], axis=1, largest=1,
                         sorted=0, name=P("topk")),
    ]
    # corner planes: rows y / y+1, columns x / x+1 of every cell (the first is the logits themselves)
    for row in ("0", "1"):
        for col in ("0", "1"):
            corner = logits if row == col == "0" else P(f"corner{row}{col}")
            if corner != logits:
                nodes.append(helper.make_node("Slice", [P("padded"), P(f"start{row}{col}"), P(f"stop{row}{col}"),
                                                        P("hw_axes")], [corner], name=corner))
            nodes.append(helper.make_node("GatherElements", [corner, P("cand")], [P(f"v{row}{col}")],
                                          axis=1, name=P(f"v{row}{col}")))
            # to every output column: the scores of its cell's left/right corner
            nodes.append(helper.make_node("Gather", [P(f"v{row}{col}"), P("x0")], [P(f"vx{row}{col}")], axis=3,
                                          name=P(f"vx{row}{col}")))
        # interpolate along x: left + (right - left) * fx
        nodes += [helper.make_node("Sub", [P(f"vx{row}1"), P(f"vx{row}0")], [P(f"dx{row}")], name=P(f"dx{row}")),
                  helper.make_node("Mul", [P(f"dx{row}"), P("fx")], [P(f"wx{row}")], name=P(f"wx{row}")),
                  helper.make_node("Add", [P(f"vx{row}0"), P(f"wx{row}")], [P(f"ix{row}")], name=P(f"ix{row}")),
                  helper.make_node("Gather", [P(f"ix{row}"), P("y0")], [P(f"iy{row}")], axis=2, name=P(f"iy{row}"))]
    nodes += [
        helper.make_node("Sub", [P("iy1"), P("iy0")], [P("dy")], name=P("dy")),
        helper.make_node("Mul", [P("dy"), P("fy")], [P("wy")], name=P("wy")),
        helper.make_node("Add", [P("iy0"), P("wy")], [P("scores")], name=P("scores")),
        helper.make_node("ArgMax", [P("scores")], [P("best")], axis=1, keepdims=1, name=P("argmax")),
        # the winning candidate's class id, looked up in the cell's candidate list
        helper.make_node("Gather", [P("cand"), P("x0")], [P("cand_x")], axis=3, name=P("cand_x")),
        helper.make_node("Gather", [P("cand_x"), P("y0")], [P("cand_xy")], axis=2, name=P("cand_xy")),
        helper.make_node("GatherElements", [P("cand_xy"), P("best")], [P("ids")], axis=1, name=P("ids")),
        helper.make_node("Squeeze", [P("ids"), P("axis1")], [P("ids_nhw")], name=P("squeeze")),
        helper.make_node("Cast", [P("ids_nhw")], [mask], to=TensorProto.INT32, name=P("cast")),
    ]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), P("axis1")))
    return nodes, inits


def replace_with_topk_tail(model_proto, k: int = DEFAULT_K) -> bool:
    """Swap a mask graph's `[Transpose] -> Resize -> ArgMax -> Cast -> mask` tail for the top-K tail.

    Returns False (graph untouched) when there is no such tail or its shapes are not static.
    """
    from onnx import shape_inference

    g = model_proto.graph
    outputs = [o.name for o in g.output]
    if "mask" not in outputs:
        return False
    producers = {o: nd for nd in g.node for o in nd.output}
    cast = producers.get("mask")
    argmax = producers.get(cast.input[0]) if cast is not None and cast.op_type == "Cast" else None
    resize = producers.get(argmax.input[0]) if argmax is not None and argmax.op_type == "ArgMax" else None
    if resize is None or resize.op_type != "Resize":
        return False
    tail = [cast, argmax, resize]
    logits = resize.input[0]
    pre = producers.get(logits)
    if pre is not None and pre.op_type == "Transpose":  # the channels-last form: start from the NCHW logits
        tail.append(pre)
        logits = pre.input[0]
    inferred = shape_inference.infer_shapes(model_proto, strict_mode=False)
    shapes = {vi.name: vi.type.tensor_type for vi in list(inferred.graph.value_info) + list(inferred.graph.input)
              + list(inferred.graph.output)}
    out = shapes.get("mask")
    src = shapes.get(logits)
    if src is None or out is None:
        return False
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in src.shape.dim]
    out_dims = [d.dim_value if d.HasField("dim_value") else 0 for d in out.shape.dim]
    if len(dims) != 4 or len(out_dims) != 3 or not all(dims) or not all(out_dims):
        return False
    users = {i for nd in g.node if nd not in tail for i in nd.input}
    if any(t in users for nd in tail for t in nd.output if t != "mask"):
        return False  # something else reads the tail's tensors: leave the graph as it is
    nodes, inits = topk_tail_nodes(logits, "mask", tuple(dims), (out_dims[1], out_dims[2]), k=k,
                                   float_type=src.elem_type)
    dead_inputs = {i for nd in tail for i in nd.input}
    position = min(list(g.node).index(nd) for nd in tail)
    for nd in tail:
        g.node.remove(nd)
    for offset, nd in enumerate(nodes):
        g.node.insert(position + offset, nd)
    g.initializer.extend(inits)
    still_used = {i for nd in g.node for i in nd.input}
    for init in [t for t in g.initializer if t.name in dead_inputs and t.name not in still_used]:
        g.initializer.remove(init)
    stale = {t for nd in tail for t in nd.output}
    for vi in [v for v in g.value_info if v.name in stale]:
        g.value_info.remove(vi)
    return True


def tail_kind(model_proto) -> str | None:
    """"topk" when the graph ends in this module's tail, else None."""
    return "topk" if any(nd.name == "masktail_topk" for nd in model_proto.graph.node) else None


def topk_tail_points(model_proto) -> tuple[str, str] | None:
    """(stride-8 NCHW logits, the K candidates' interpolated scores [N, K, H, W]) of a top-K tail, else None."""
    pad = next((nd for nd in model_proto.graph.node if nd.name == "masktail_pad"), None)
    return (pad.input[0], "masktail_scores") if pad is not None else None
