"""The vocabulary the build side and the runtime share, declared once (standard library only).

What a graph may be asked for (heads, targets, precisions, opsets, sizes), what the runtime may run it
with (backends), how pixels become the input tensor (ImageNet mean/std on the 0..255 scale, RGB), the
colours of a model that ships none, and where an ONNX graph's image input is. The exporter writes these
into every manifest; the runtime reads them back; neither imports the other to learn them.
"""
from __future__ import annotations

from typing import Any

from lrformer_deploy.errors import UserError

HEADS = ("mask", "logits")  # class ids at the input size, or stride-8 scores
TARGETS = ("tensorrt", "cpu")  # what a graph is shaped for: a TensorRT engine, or ONNX Runtime on a CPU
# Derived from the FP32 graph: fp16 and int8 are graphs of their own; bf16 is the FP32 graph run by OpenVINO
# with bf16 inference precision on a CPU with AVX512-BF16 or AMX (its manifest names the FP32 graph).
REDUCED_PRECISIONS = ("fp16", "int8", "bf16")
CPU_ONLY_PRECISIONS = ("bf16",)  # only with --target cpu
PRECISIONS = ("fp32", *REDUCED_PRECISIONS)
BACKENDS = ("auto", "tensorrt", "onnxruntime", "openvino", "torch")  # what runs a graph; "auto" picks the fastest here
CALIB_METHODS = ("entropy", "percentile", "minmax")
# Frames a container's stated length may exceed the frames decoded by without the input counting as
# truncated: FFmpeg estimates some containers' counts from duration x fps, which can be one over.
TRUNCATION_SLACK = 1
# Pixels one image may have before it is decoded (read from its header): a PNG of a few MB can declare
# 20000x20000 pixels (1.2 GB decoded, more for the mask and overlay). A server caps what one request may
# cost; local files get a higher cap (camera photos reach 50 MP) that still stops such bombs. 0 = no cap.
MAX_PIXELS_SERVE = 4096 * 4096
MAX_PIXELS_FILES = 100_000_000
# How long a live stream (rtsp/http without a length) may be gone before a run ends with what it has:
# long enough for a camera or server restart. Files are never reconnected.
DEFAULT_RECONNECT_S = 30.0
ENGINE_MODES = ("auto", "require", "off")  # auto: build where TensorRT + a GPU are; require: fail otherwise
# TensorRT engine portability: none (this GPU model), ampere+ (any Ampere or newer), same-cc (same compute capability)
HARDWARE_COMPATIBILITY = ("none", "ampere+", "same-cc")
# Form of the mask head's upsample -> ArgMax tail: "nchw" for TensorRT (its IResizeLayer resizes the last
# dims); "nhwc", the same Resize channels-last, which ONNX Runtime on CPUs reduces several times faster;
# "topk" (CPU graphs), bilinear scores for only the few classes that can win per stride-8 cell
# (build/mask_tail.py), 10-40x cheaper than either on ONNX Runtime and OpenVINO.
MASK_TAILS = ("nchw", "nhwc", "topk")

MIN_OPSET = 17  # LayerNormalization is one op from opset 17
# Highest opset the exporter (torch 2.13's dynamo exporter) and ONNX Runtime were seen to produce and run;
# above it the exporter silently falls back to opset 18, which a manifest must never misreport.
MAX_OPSET = 23
SIZE_MULTIPLE = 32  # the encoder downsamples by 32

# ImageNet statistics on the 0..255 scale, RGB order: what every LRFormer config normalises with.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def check_export_size(size: tuple[int, int], batch: int = 1) -> None:
    """A static export size: positive, a multiple of 32 on both sides, batch >= 1."""
    h, w = size
    if h <= 0 or w <= 0:
        raise UserError(f"size {h}x{w} must be positive")
    if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
        raise UserError(f"size {h}x{w} must be a multiple of {SIZE_MULTIPLE} on both sides "
                        f"(the encoder downsamples by {SIZE_MULTIPLE})")
    if batch <= 0:
        raise UserError(f"batch {batch} must be at least 1")


def default_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct, deterministic colours for models that ship without a palette (RGB)."""
    colours = []
    for i in range(n):
        # Bit-interleaving (as in the PASCAL VOC colour map) keeps neighbouring ids visually apart.
        r = g = b = 0
        cid = i
        for bit in range(8):
            r |= ((cid >> 0) & 1) << (7 - bit)
            g |= ((cid >> 1) & 1) << (7 - bit)
            b |= ((cid >> 2) & 1) << (7 - bit)
            cid >>= 3
        colours.append((r, g, b))
    return tuple(colours)


def graph_input(model_proto: Any) -> tuple[str, list[int | str | None]]:
    """(name, dims) of the image input of an ONNX ModelProto: the first graph input that is not an
    initializer (older exporters list weights as inputs too). A dim is an int, a symbolic name, or None."""
    inits = {t.name for t in model_proto.graph.initializer}
    inp = next((i for i in model_proto.graph.input if i.name not in inits), None)
    if inp is None:
        raise UserError("the ONNX graph has no input besides its weights")
    dims: list[int | str | None] = []
    for d in inp.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or None)
    return inp.name, dims


def graph_size(model_proto: Any, where: str = "the graph") -> tuple[int, int]:
    """Static (H, W) of a graph's image input: N x 3 x H x W, or N x H x W x 3 for a uint8-input graph
    (lrformer-export --input uint8); one UserError when they are not static."""
    name, dims = graph_input(model_proto)
    inp = next(i for i in model_proto.graph.input if i.name == name)
    nhwc = inp.type.tensor_type.elem_type == 2  # onnx.TensorProto.UINT8: frames as clients hold them
    hw = dims[1:3] if nhwc else dims[2:]
    if len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in hw):
        raise UserError(f"{where}: the input has no static H, W (got {dims})")
    return hw[0], hw[1]
