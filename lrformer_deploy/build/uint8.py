"""uint8 frames in, uint8 class ids out: the graph does the cast, normalisation and layout.

`lrformer-export --input uint8` rewrites the exported float graph so it takes the frame as a client holds
it (uint8, N x H x W x 3, in the manifest's colour order) and does Cast -> Mul(1/std) -> Add(-mean/std)
-> Transpose(NCHW) itself: 4x fewer bytes cross PCIe (or the Triton/GStreamer wire) than a float32
NCHW tensor, and no normalisation on the host. The constants and the order of operations are the
runtime Preprocessor's (x * float32(1/std) + float32(-mean/std)), so the graph sees bit-identical floats
for the same resized frame. `--mask-dtype uint8` makes the mask head's final Cast write uint8 class ids
(at most 256 classes): 4x fewer bytes back than int32.

Both are rewrites of the ONNX graph (onnx.helper), after the float graph has been verified against
PyTorch; the exporter then checks that the rewritten graph's masks equal the float graph's.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from lrformer_deploy.errors import UserError

INPUT_DTYPES = ("float32", "uint8")
MASK_DTYPES = ("int32", "uint8")
NORMALISED = "image_normalized"


def normalisation_constants(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) exactly as runtime/preprocess.py Preprocessor computes them (float32)."""
    scale = np.asarray([1.0 / s for s in std], dtype=np.float32)
    offset = np.asarray([-m / s for m, s in zip(mean, std)], dtype=np.float32)
    return scale, offset


def uint8_input(proto, mean: Sequence[float], std: Sequence[float]):
    """Rewrite `proto` (in place) so its one input takes uint8 NHWC frames; returns proto."""
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    if len(graph.input) != 1:
        raise UserError(f"a uint8 input needs a graph with one input, this one has {len(graph.input)}")
    old = graph.input[0]
    name = old.name
    dims = old.type.tensor_type.shape.dim
    if old.type.tensor_type.elem_type != TensorProto.FLOAT or len(dims) != 4 or dims[1].dim_value != 3:
        raise UserError(f"input {name} is not a float N x 3 x H x W tensor; cannot make it uint8")
    for node in graph.node:
        for i, inp in enumerate(node.input):
            if inp == name:
                node.input[i] = NORMALISED
    for out in graph.output:
        if out.name == name:
            raise UserError(f"input {name} is also an output; cannot make it uint8")
    batch = dims[0].dim_param or dims[0].dim_value
    new = helper.make_tensor_value_info(name, TensorProto.UINT8, [batch, dims[2].dim_value, dims[3].dim_value, 3])
    scale, offset = normalisation_constants(mean, std)
    graph.initializer.extend([numpy_helper.from_array(scale, f"{name}_scale"),
                              numpy_helper.from_array(offset, f"{name}_offset")])
    nodes = [
        helper.make_node("Cast", [name], [f"{name}_float"], to=TensorProto.FLOAT, name=f"{name}_cast"),
        helper.make_node("Mul", [f"{name}_float", f"{name}_scale"], [f"{name}_scaled"], name=f"{name}_mul"),
        helper.make_node("Add", [f"{name}_scaled", f"{name}_offset"], [f"{name}_nhwc"], name=f"{name}_add"),
        helper.make_node("Transpose", [f"{name}_nhwc"], [NORMALISED], perm=[0, 3, 1, 2], name=f"{name}_to_nchw"),
    ]
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + rest)
    del graph.input[:]
    graph.input.append(new)
    return proto


def uint8_mask(proto, num_classes: int):
    """Rewrite the mask head's output to uint8 class ids (in place); returns proto."""
    from onnx import TensorProto, helper

    if num_classes > 256:
        raise UserError(f"a uint8 mask holds at most 256 classes; the model has {num_classes}")
    graph = proto.graph
    out = next((o for o in graph.output if o.name == "mask"), None)
    if out is None:
        raise UserError("--mask-dtype uint8 needs the mask head (--head mask)")
    producer = next((n for n in graph.node if "mask" in n.output), None)
    if producer is not None and producer.op_type == "Cast":
        for attr in producer.attribute:
            if attr.name == "to":
                attr.i = TensorProto.UINT8
    else:  # an ArgMax (int64) feeding the output directly: cast it
        for node in graph.node:
            node.output[:] = ["mask_ids" if o == "mask" else o for o in node.output]
        graph.node.append(helper.make_node("Cast", ["mask_ids"], ["mask"], to=TensorProto.UINT8, name="mask_uint8"))
    out.type.tensor_type.elem_type = TensorProto.UINT8
    return proto


def manifest_io(manifest: dict, input_dtype: str, mask_dtype: str) -> None:
    """Record the rewritten I/O in the manifest (in place)."""
    inp = manifest["input"]
    if input_dtype == "uint8":
        n, c, h, w = inp["shape"]
        inp.update(shape=[n, h, w, c], layout="NHWC", dtype="uint8",
                   scale=f"{inp.get('color_order', 'RGB')} pixels 0..255 as uint8; the graph casts, normalises "
                         "((x - mean) / std) and transposes to NCHW itself")
    if mask_dtype == "uint8":
        manifest["output"]["dtype"] = "uint8"


def frames_as_uint8(frames: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised N x 3 x H x W float frames back to the uint8 N x H x W x 3 frames they came from.

    Exact for frames the Preprocessor made from uint8 pixels (its error is far below the 0.5 rounding)."""
    mean = np.asarray(mean, np.float64)[None, None, None, :]
    std = np.asarray(std, np.float64)[None, None, None, :]
    nhwc = np.asarray(frames, np.float64).transpose(0, 2, 3, 1) * std + mean
    return np.clip(np.rint(nhwc), 0, 255).astype(np.uint8)
