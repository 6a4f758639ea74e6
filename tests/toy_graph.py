"""A tiny LRFormer-shaped ONNX graph built with onnx.helper, for tests of the precision passes.

It has what the real export has, at toy size: Conv stem, LayerNormalization (opset 17), attention
(MatMul, Softmax, layer scale), a 1x1 classifier, bilinear Resize to the input size, ArgMax -> int32
"mask". Two deliberate traps let the FP16 pass prove it measures: a tensor scaled past the FP16 range
("overflow" branch) and a layer-scale vector below FP16's normal range (tiny weights).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def build_toy_segmenter(
    path: str | Path,
    size: tuple[int, int] = (64, 64),
    num_classes: int = 6,
    dim: int = 32,
    head: str = "mask",
    seed: int = 0,
) -> Path:
    """Write the toy graph to `path` and return it. Input "image" [1,3,H,W]; output "mask" or "logits"."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    h, w = size
    h8, w8 = h // 8, w // 8
    tokens = h8 * w8

    def conv_w(cout, cin, k):
        return (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)

    def lin_w(cin, cout):
        return (rng.standard_normal((cin, cout)) / np.sqrt(cin)).astype(np.float32)

    inits = {
        "stem1.w": conv_w(16, 3, 3), "stem1.b": (rng.standard_normal(16) * 0.1).astype(np.float32),
        "stem2.w": conv_w(dim // 2, 16, 3), "stem2.b": np.zeros(dim // 2, np.float32),
        "stem3.w": conv_w(dim, dim // 2, 3), "stem3.b": np.zeros(dim, np.float32),
        "tok_shape": np.array([1, dim, tokens], np.int64),
        "ln.g": np.ones(dim, np.float32), "ln.b": np.zeros(dim, np.float32),
        "wq": lin_w(dim, dim), "wk": lin_w(dim, dim), "wv": lin_w(dim, dim), "wo": lin_w(dim, dim),
        "bo": (rng.standard_normal(dim) * 0.02).astype(np.float32),
        "att_scale": np.array(dim ** -0.5, np.float32),
        # Layer scale as freshly initialised transformers have it: below FP16's smallest normal (6.1e-5).
        "ls": np.full(dim, 1e-6, np.float32) * (1 + rng.random(dim).astype(np.float32)),
        "big": np.array(1e6, np.float32), "small": np.array(1e-6, np.float32),
        "map_shape": np.array([1, dim, h8, w8], np.int64),
        "cls.w": conv_w(num_classes, dim, 1), "cls.b": (rng.standard_normal(num_classes) * 0.1).astype(np.float32),
        "resize_scales": np.array([1.0, 1.0, 8.0, 8.0], np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["image", "stem1.w", "stem1.b"], ["s1"], name="stem1", kernel_shape=[3, 3],
                         strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["s1"], ["s1r"], name="stem1_relu"),
        helper.make_node("Conv", ["s1r", "stem2.w", "stem2.b"], ["s2"], name="stem2", kernel_shape=[3, 3],
                         strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["s2"], ["s2r"], name="stem2_relu"),
        helper.make_node("Conv", ["s2r", "stem3.w", "stem3.b"], ["s3"], name="stem3", kernel_shape=[3, 3],
                         strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["s3", "tok_shape"], ["t0"], name="to_tokens"),
        helper.make_node("Transpose", ["t0"], ["x"], name="tokens_last", perm=[0, 2, 1]),
        helper.make_node("LayerNormalization", ["x", "ln.g", "ln.b"], ["xn"], name="norm1", axis=-1, epsilon=1e-6),
        helper.make_node("MatMul", ["xn", "wq"], ["q"], name="q"),
        helper.make_node("MatMul", ["xn", "wk"], ["k"], name="k"),
        helper.make_node("MatMul", ["xn", "wv"], ["v"], name="v"),
        helper.make_node("Transpose", ["k"], ["kt"], name="k_t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["qk"], name="qk"),
        helper.make_node("Mul", ["qk", "att_scale"], ["qks"], name="qk_scale"),
        helper.make_node("Softmax", ["qks"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["pv"], name="pv"),
        helper.make_node("MatMul", ["pv", "wo"], ["o0"], name="proj"),
        helper.make_node("Add", ["o0", "bo"], ["o"], name="proj_bias"),
        helper.make_node("Mul", ["o", "ls"], ["ol"], name="layer_scale"),
        helper.make_node("Add", ["x", "ol"], ["x1"], name="residual"),
        # Overflow trap: an intermediate far beyond FP16's 65504, scaled back right after.
        helper.make_node("Mul", ["x1", "big"], ["huge"], name="overflow_up"),
        helper.make_node("Mul", ["huge", "small"], ["x2"], name="overflow_down"),
        helper.make_node("Transpose", ["x2"], ["x2t"], name="tokens_first", perm=[0, 2, 1]),
        helper.make_node("Reshape", ["x2t", "map_shape"], ["fmap"], name="to_map"),
        helper.make_node("Conv", ["fmap", "cls.w", "cls.b"], ["logits"], name="conv_seg", kernel_shape=[1, 1]),
    ]
    if head == "mask":
        nodes += [
            helper.make_node("Resize", ["logits", "", "resize_scales"], ["up"], name="upsample", mode="linear",
                             coordinate_transformation_mode="half_pixel"),
            helper.make_node("ArgMax", ["up"], ["am"], name="argmax", axis=1, keepdims=0),
            helper.make_node("Cast", ["am"], ["mask"], name="to_int32", to=TensorProto.INT32),
        ]
        out = helper.make_tensor_value_info("mask", TensorProto.INT32, [1, h, w])
    else:
        del inits["resize_scales"]
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, num_classes, h8, w8])
    graph = helper.make_graph(
        nodes, "toy_lrformer",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, h, w])], [out],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="lrformer-deploy-toy")
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
