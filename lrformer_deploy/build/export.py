"""Model -> static ONNX graph, checked against PyTorch with ONNX Runtime, plus its manifest.

Every LRSA grid is a Python integer computed from the export resolution, pooling is AveragePool or
constant pooling matrices, so the graph holds no data-dependent indexing (no Gather/ScatterND/Where/
Loop/If, no Shape arithmetic). That is what lets TensorRT build it without plugins or surprises.

Why ~500 lines in one module: the export, the graph edits it makes (dynamic-batch reads, the NCHW/NHWC
mask tail, the uint8 input rewrite) and the check against PyTorch each read the graph the others wrote;
the top-K tail and the uint8 preprocessing live in mask_tail.py and uint8.py.
"""
from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lrformer_deploy import manifest as mf
from lrformer_deploy.atomic import temporary_sibling
from lrformer_deploy.data.datasets import DatasetPreset
from lrformer_deploy.contract import (HEADS, IMAGENET_MEAN, IMAGENET_STD, MASK_TAILS, MAX_OPSET, MIN_OPSET,
                                      check_export_size, default_palette)
from lrformer_deploy.errors import UserError
from lrformer_deploy.build.mask_tail import replace_with_topk_tail, tail_kind, topk_tail_points
from lrformer_deploy.model.grids import head_grids, stage_grids
from lrformer_deploy.model.lrformer import LRFormerSegmentor, MaskHead, logits_to_mask

# Ops whose presence would mean something data-dependent slipped into the graph.
FORBIDDEN_OPS = frozenset({"Gather", "GatherND", "GatherElements", "ScatterND", "ScatterElements",
                           "Where", "Loop", "If", "Shape", "NonZero", "Range"})


class VerificationFailed(UserError):
    """ONNX Runtime and PyTorch disagree on the exported graph: the artifact must not be used."""


@dataclass
class ExportResult:
    onnx_path: Path
    manifest_path: Path
    manifest: dict
    op_counts: dict = field(default_factory=dict)
    export_seconds: float = 0.0


def default_name(variant: str, dataset: str | None, size: tuple[int, int], batch: int = 1) -> str:
    name = f"lrformer-{variant.lower()}-{dataset or 'custom'}-{size[0]}x{size[1]}"
    return name + (f"-b{batch}" if batch != 1 else "")


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter narrates every step and warns about optional packages (torchvision); a user of
    lrformer-export wants one line per artifact, so that chatter is swallowed unless it fails."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def op_counts(model_proto) -> dict[str, int]:
    return dict(collections.Counter(n.op_type for n in model_proto.graph.node).most_common())


def check_static_graph(model_proto, dynamic_batch: bool = False) -> None:
    """Raise if the graph has data-dependent ops or a non-static input/output shape.

    With dynamic_batch, dim 0 of the input/output is symbolic and Shape may appear only as
    `batch_size_reads` leaves it: reading dim 0 alone, concatenated with constants, into a Resize's sizes.
    """
    # The top-K mask tail (build/mask_tail.py) gathers with constant indices and static shapes by design.
    ops = {n.op_type for n in model_proto.graph.node if not n.name.startswith("masktail_")}
    bad = sorted(ops & FORBIDDEN_OPS - ({"Shape"} if dynamic_batch else set()))
    if bad:
        raise RuntimeError(f"exported graph is not static: it contains {', '.join(bad)}")
    if dynamic_batch:
        _check_batch_size_reads(model_proto)
    for v in list(model_proto.graph.input) + list(model_proto.graph.output):
        dims = v.type.tensor_type.shape.dim
        symbolic = [i for i, d in enumerate(dims) if not d.HasField("dim_value")]
        if symbolic and symbolic != ([0] if dynamic_batch else []):
            raise RuntimeError(f"graph {v.name} has a symbolic dimension" + (" besides the batch" if dynamic_batch else ""))
        if dynamic_batch and not symbolic:
            raise RuntimeError(f"graph {v.name} has a static batch in a dynamic-batch export")


def _consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _check_batch_size_reads(model_proto) -> None:
    g = model_proto.graph
    consumers = _consumers(g)
    inits = {t.name for t in g.initializer}
    for n in g.node:
        if n.op_type != "Shape":
            continue
        attrs = {a.name: a.i for a in n.attribute}
        if attrs.get("start", 0) != 0 or attrs.get("end") != 1:
            raise RuntimeError(f"{n.name} reads more than the batch dim of {n.input[0]}")
        for concat in consumers.get(n.output[0], []):
            others = [i for i in concat.input if i != n.output[0]]
            users = consumers.get(concat.output[0], [])
            if (concat.op_type != "Concat" or any(i not in inits for i in others)
                    or not users or any(u.op_type != "Resize" or u.input[3] != concat.output[0] for u in users)):
                raise RuntimeError(f"the batch size read by {n.name} is used for more than a Resize's sizes")


def batch_size_reads(model_proto) -> int:
    """Make every Shape read the batch dim alone: `Shape[0:2] -> Concat(hw)` becomes `Shape[0:1] -> Concat(c, hw)`.

    The exporter sizes each bilinear Resize of a dynamic-batch graph from its input's (N, C); C is static,
    so only N needs the Shape op. Returns the number of rewritten nodes; unknown patterns are left for
    check_static_graph to reject.
    """
    from onnx import numpy_helper

    g = model_proto.graph
    shapes = {v.name: v.type.tensor_type.shape.dim for v in list(g.value_info) + list(g.input) + list(g.output)}
    inits = {t.name: t for t in g.initializer}
    consumers = _consumers(g)
    done = 0
    for n in g.node:
        attrs = {a.name: a for a in n.attribute}
        if n.op_type != "Shape" or attrs.get("start") is None or attrs["start"].i != 0 or attrs.get("end") is None \
                or attrs["end"].i != 2:
            continue
        dims = shapes.get(n.input[0])
        users = consumers.get(n.output[0], [])
        if dims is None or len(dims) < 2 or not dims[1].HasField("dim_value") or len(users) != 1:
            continue
        concat = users[0]
        if concat.op_type != "Concat" or len(concat.input) != 2 or concat.input[0] != n.output[0] \
                or concat.input[1] not in inits:
            continue
        hw = numpy_helper.to_array(inits[concat.input[1]])
        tail = numpy_helper.from_array(np.concatenate([[dims[1].dim_value], hw]).astype(np.int64),
                                       f"{concat.input[1]}_c{dims[1].dim_value}")
        if tail.name not in inits:
            g.initializer.append(tail)
            inits[tail.name] = tail
        concat.input[1] = tail.name
        attrs["end"].i = 1
        done += 1
    used = {i for node in g.node for i in node.input}
    for name in [t for t in inits if t not in used]:
        g.initializer.remove(inits[name])
    return done


def verification_input(size: tuple[int, int], batch: int, dataset: DatasetPreset, seed: int = 0) -> np.ndarray:
    """A deterministic smooth colour image per batch item, through the runtime's own preprocessing."""
    import cv2

    from lrformer_deploy.runtime.preprocess import preprocess_image

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(batch):
        small = rng.integers(0, 256, size=(size[0] // 16, size[1] // 16, 3), dtype=np.uint8)
        bgr = cv2.resize(small, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
        x, _ = preprocess_image(bgr, size, dataset.mean, dataset.std, "RGB", "stretch")
        frames.append(x)
    return np.concatenate(frames, axis=0).astype(np.float32)


def _mask_tail(model_proto):
    """(Resize, ArgMax) nodes of the mask head, or (None, None)."""
    producers = {o: n for n in model_proto.graph.node for o in n.output}
    argmax = next((n for n in model_proto.graph.node if n.op_type == "ArgMax"), None)
    node = argmax
    while node is not None and node.op_type != "Resize":
        node = producers.get(node.input[0])
    return node, argmax


def mask_tail_layout(model_proto) -> str | None:
    """"nchw", "nhwc" (from its ArgMax axis) or "topk" for a mask graph, None for a graph without the tail."""
    if tail_kind(model_proto) == "topk":
        return "topk"
    resize, argmax = _mask_tail(model_proto)
    if resize is None or argmax is None:
        return None
    axis = next((a.i for a in argmax.attribute if a.name == "axis"), 0)
    return "nhwc" if axis in (3, -1) else "nchw"


def _pre_argmax_tensor(model_proto) -> str | None:
    """Name of the stride-8 NCHW logits inside a mask graph (what the final Resize upsamples)."""
    topk = topk_tail_points(model_proto)
    if topk is not None:
        return topk[0]
    resize, _ = _mask_tail(model_proto)
    if resize is None:
        return None
    producers = {o: n for n in model_proto.graph.node for o in n.output}
    src = producers.get(resize.input[0])
    return src.input[0] if src is not None and src.op_type == "Transpose" else resize.input[0]


def channels_last_mask_tail(model_proto) -> bool:
    """Rewrite `Resize(NCHW) -> ArgMax(axis=1)` as `Transpose -> Resize(NHWC) -> ArgMax(axis=3)`.

    Same numbers (each output pixel interpolates the same four cells per class), but ArgMax then reduces
    over contiguous memory, which ONNX Runtime on CPUs runs several times faster (figures:
    samples/bench_mask_tail.py). Only for CPU graphs: TensorRT resizes the last dims, so on NHWC it would
    interpolate across the class channels too. PyTorch cannot express a channels-last Resize, hence the
    graph edit. Returns True if done.
    """
    from onnx import helper, numpy_helper

    resize, argmax = _mask_tail(model_proto)
    if resize is None or argmax is None or argmax.input[0] != resize.output[0]:
        return False
    axis = next((a.i for a in argmax.attribute if a.name == "axis"), 0)
    sizes_name = resize.input[3] if len(resize.input) > 3 else ""
    inits = {t.name: t for t in model_proto.graph.initializer}
    if axis != 1 or sizes_name not in inits:
        return False
    n, c, h, w = (int(v) for v in numpy_helper.to_array(inits[sizes_name]))
    g = model_proto.graph
    nhwc_sizes = numpy_helper.from_array(np.array([n, h, w, c], dtype=np.int64), f"{sizes_name}_nhwc")
    g.initializer.append(nhwc_sizes)
    transposed = f"{resize.input[0]}_nhwc"
    transpose = helper.make_node("Transpose", [resize.input[0]], [transposed], perm=[0, 2, 3, 1],
                                 name="logits_to_nhwc")
    resize.input[0] = transposed
    resize.input[3] = nhwc_sizes.name
    for a in argmax.attribute:
        if a.name == "axis":
            a.i = 3
    idx = list(g.node).index(resize)
    g.node.insert(idx, transpose)
    if not any(sizes_name in node.input for node in g.node):
        g.initializer.remove(inits[sizes_name])
    # The exporter annotated the Resize output as NCHW; a stale shape would only confuse consumers.
    for vi in [v for v in g.value_info if v.name == resize.output[0]]:
        g.value_info.remove(vi)
    return True


def verify_with_onnxruntime(onnx_path: Path, torch_model: LRFormerSegmentor, x: np.ndarray,
                            head: str) -> dict:
    """Run the graph in ONNX Runtime and the PyTorch model (eager, adaptive pooling) on the same input.

    Logits are compared even for a mask graph: the stride-8 logits inside it are exposed as an extra
    output of an in-memory copy, so the check measures the numerics and not only the argmax.
    """
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(onnx_path))
    out_name = proto.graph.output[0].name
    fetch = [out_name]
    if head == "mask":
        inner = _pre_argmax_tensor(proto)
        if inner is None:
            raise RuntimeError("mask graph has no Resize -> ArgMax tail")
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(inner))
        fetch.append(inner)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = sess.run(fetch, {proto.graph.input[0].name: x})
    ort_logits = outs[-1]

    with torch.no_grad():
        ref_logits = torch_model(torch.from_numpy(x))
    ref_mask = logits_to_mask(ref_logits, tuple(x.shape[-2:])).numpy() if head == "mask" else None
    ref_logits = ref_logits.numpy()
    if ort_logits.shape != ref_logits.shape:
        raise RuntimeError(f"ONNX logits shape {ort_logits.shape} != PyTorch {ref_logits.shape}")
    diff = float(np.abs(ort_logits - ref_logits).max())
    report = {"backend": "onnxruntime-cpu", "reference": "pytorch-eager-fp32", "input": "seeded smooth image",
              "logits_max_abs_diff": diff, "logits_max_abs": float(np.abs(ref_logits).max())}
    if head == "mask":
        report["mask_agreement"] = float((outs[0] == ref_mask).mean())
    return report


def export_onnx(model: LRFormerSegmentor, out_dir: str | os.PathLike, name: str | None = None, *,
                size: tuple[int, int] = (512, 512), batch: int = 1, opset: int = 17, head: str = "mask",
                max_batch: int | None = None,
                dataset: DatasetPreset | None = None, variant: str | None = None,
                verify: bool = True, tolerance: float = 1e-4, checkpoint_sha256: str | None = None,
                quiet: bool = False, mask_tail: str = "nhwc", input_dtype: str = "float32",
                mask_dtype: str = "int32") -> ExportResult:
    """Export `model` at a fixed size and batch; write NAME.onnx and NAME.json into out_dir.

    mask_tail ("nchw" | "nhwc", mask head only; see MASK_TAILS): "nchw" for graphs meant for a
    TensorRT engine, "nhwc" for ONNX Runtime on CPUs. The manifest's output.mask_tail records it. A
    dynamic-batch graph keeps the NCHW tail (its Resize sizes are no longer constants to transpose).
    max_batch: export a dynamic batch dim (1..max_batch) instead of `batch`; size and grids stay static.
    input_dtype "uint8": the graph takes uint8 N x H x W x 3 frames in the manifest's colour order and
    normalises them itself; mask_dtype "uint8": the mask head returns uint8 class ids (build/uint8.py).
    Both rewrite the float graph after its check against PyTorch, and the rewritten graph's masks must
    equal the float graph's on the check image.
    """
    from lrformer_deploy.build.uint8 import INPUT_DTYPES, MASK_DTYPES
    import onnx

    check_export_size(size, batch)
    if max_batch is not None:
        if max_batch < 2:
            raise UserError(f"a dynamic batch needs a maximum of at least 2, got {max_batch}")
        batch = max_batch  # traced, verified and recorded at the maximum
    if head not in HEADS:
        raise UserError(f"--head must be one of {', '.join(HEADS)}, not {head!r}")
    if mask_tail not in MASK_TAILS:
        raise UserError(f"mask tail must be one of {', '.join(MASK_TAILS)}, not {mask_tail!r}")
    if input_dtype not in INPUT_DTYPES:
        raise UserError(f"--input must be one of {', '.join(INPUT_DTYPES)}, not {input_dtype!r}")
    if mask_dtype not in MASK_DTYPES:
        raise UserError(f"--mask-dtype must be one of {', '.join(MASK_DTYPES)}, not {mask_dtype!r}")
    if mask_dtype == "uint8" and (head != "mask" or model.num_classes > 256):
        raise UserError("--mask-dtype uint8 needs the mask head and at most 256 classes "
                        f"(head {head}, {model.num_classes} classes)")
    if opset < MIN_OPSET:
        raise UserError(f"opset {opset} is too old: LayerNormalization needs opset >= {MIN_OPSET}")
    if opset > MAX_OPSET:
        raise UserError(f"opset {opset} is not supported: the exporter writes opsets up to {MAX_OPSET}")
    variant = variant or model.cfg.name
    name = name or default_name(variant, dataset.name if dataset else None, size,
                                batch if max_batch is None else f"dyn{max_batch}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{name}.onnx"
    manifest_path = mf.manifest_path_for(onnx_path)

    model = model.eval()
    model.set_static(True)
    wrapped = MaskHead(model) if head == "mask" else model
    x = torch.zeros(batch, 3, *size)
    dynamic = None
    if max_batch is not None:
        # The example batch must not be 1: torch.export specialises size-1 dims.
        dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=max_batch)}}
    t0 = time.perf_counter()
    # The new graph lives under a temporary name until it is verified; only then do graph and manifest
    # replace an earlier export (manifest last), so a failed or interrupted re-export keeps the old pair.
    tmp = temporary_sibling(onnx_path)
    try:
        try:
            with _quiet_exporter():
                program = torch.onnx.export(wrapped, (x,), dynamo=True, opset_version=opset,
                                            input_names=["image"], output_names=[head], verbose=False,
                                            dynamic_shapes=dynamic)
            program.save(str(tmp), external_data=False)
        finally:
            model.set_static(False)
        proto = onnx.load(str(tmp))
        changed = max_batch is not None and batch_size_reads(proto) > 0
        if head == "mask" and mask_tail == "nhwc" and max_batch is None:
            if not channels_last_mask_tail(proto):
                raise RuntimeError("the mask head has no Resize -> ArgMax(axis 1) tail to make channels-last")
            changed = True
        elif head == "mask" and mask_tail == "topk" and max_batch is None:
            if not replace_with_topk_tail(proto):
                raise RuntimeError("the mask head has no static Resize -> ArgMax -> Cast tail to replace")
            changed = True
        if changed:
            onnx.save(proto, str(tmp))
        check_static_graph(proto, dynamic_batch=max_batch is not None)
        onnx.checker.check_model(proto)
        seconds = time.perf_counter() - t0

        if dataset is not None and dataset.num_classes != model.num_classes:
            dataset = None
        real_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
        manifest = build_manifest(name, tmp, model, variant, dataset, size, batch, real_opset, head, proto)
        manifest["artifacts"]["onnx"]["file"] = onnx_path.name
        if head == "mask":
            manifest["output"]["mask_tail"] = mask_tail_layout(proto)
        if max_batch is not None:
            # The runtime reads batch_range; a Triton config takes max_batch_size from it.
            manifest["input"]["shape"][0] = manifest["output"]["shape"][0] = "batch"
            manifest["input"]["batch_range"] = [1, max_batch]
        manifest["export"] = {"seconds": round(seconds, 2), "nodes": len(proto.graph.node),
                              "op_counts": op_counts(proto)}
        if checkpoint_sha256:
            manifest["model"]["checkpoint_sha256"] = checkpoint_sha256
        if verify:
            preset = dataset or _fallback_preset(model.num_classes)
            report = verify_with_onnxruntime(tmp, model, verification_input(size, batch, preset), head)
            limit = tolerance * max(1.0, report["logits_max_abs"])
            report["tolerance"] = limit
            report["passed"] = report["logits_max_abs_diff"] <= limit
            manifest["verification"] = report
            if not quiet:
                extra = f", mask agreement {report['mask_agreement']:.6f}" if "mask_agreement" in report else ""
                print(f"check: ONNX Runtime vs PyTorch max abs diff {report['logits_max_abs_diff']:.3g} "
                      f"(tolerance {limit:.3g}){extra}")
            if not report["passed"]:
                where = f" (kept: the earlier {onnx_path.name})" if onnx_path.exists() else ""
                raise VerificationFailed(f"ONNX Runtime output differs from PyTorch by "
                                         f"{report['logits_max_abs_diff']:.3g} (> {limit:.3g}); the new graph "
                                         f"is not trustworthy and was not written{where}")
        if input_dtype != "float32" or mask_dtype != "int32":
            preset = dataset or _fallback_preset(model.num_classes)
            check = rewrite_io(tmp, proto, input_dtype, mask_dtype, preset, model.num_classes,
                               verification_input(size, batch, preset))
            from lrformer_deploy.build.uint8 import manifest_io

            manifest_io(manifest, input_dtype, mask_dtype)
            manifest["artifacts"]["onnx"] = dict(mf.artifact_record(tmp, tmp.parent), file=onnx_path.name)
            manifest.setdefault("verification", {})["io_rewrite"] = check
            if not check["identical"]:
                raise VerificationFailed(f"the {input_dtype}-input / {mask_dtype}-mask graph's masks differ from the "
                                         f"float graph's on {check['differing_pixels']} pixels; not written")
        mf.publish([(tmp, onnx_path)], manifest, manifest_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return ExportResult(onnx_path, manifest_path, manifest, manifest["export"]["op_counts"], seconds)


def rewrite_io(path: Path, proto, input_dtype: str, mask_dtype: str, preset: DatasetPreset, num_classes: int,
               x: np.ndarray) -> dict:
    """Rewrite the verified float graph at `path` for uint8 I/O; compare its output with the float graph's
    under ONNX Runtime on `x` (the float check input, turned back into its uint8 frames)."""
    import onnx
    import onnxruntime as ort

    from lrformer_deploy.build.uint8 import frames_as_uint8, uint8_input, uint8_mask

    so = ort.SessionOptions()
    so.log_severity_level = 3
    float_sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    new = onnx.load(str(path))
    if input_dtype == "uint8":
        uint8_input(new, preset.mean, preset.std)
    if mask_dtype == "uint8":
        uint8_mask(new, num_classes)
    onnx.checker.check_model(new)
    onnx.save(new, str(path))
    frames = frames_as_uint8(x, preset.mean, preset.std) if input_dtype == "uint8" else x
    # The float graph sees the uint8 frames through the Preprocessor's own arithmetic.
    from lrformer_deploy.build.uint8 import normalisation_constants

    scale, offset = normalisation_constants(preset.mean, preset.std)
    x_float = (frames.astype(np.float32) * scale + offset).transpose(0, 3, 1, 2).copy() if input_dtype == "uint8" else x
    ref = float_sess.run(None, {float_sess.get_inputs()[0].name: x_float})[0]
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: frames})[0]
    if got.dtype.kind == "f":
        differing = int(np.sum(np.abs(got - ref) > 0))
    else:
        differing = int(np.sum(got.astype(np.int64) != ref.astype(np.int64)))
    return {"input_dtype": input_dtype, "mask_dtype": mask_dtype, "compared_with": "the float graph, ONNX Runtime CPU",
            "frames": int(len(frames)), "differing_pixels": differing, "identical": differing == 0}


def _fallback_preset(num_classes: int) -> DatasetPreset:
    return DatasetPreset("custom", num_classes, tuple(f"class {i}" for i in range(num_classes)),
                         default_palette(num_classes), IMAGENET_MEAN, IMAGENET_STD)


def build_manifest(name: str, onnx_path: Path, model: LRFormerSegmentor, variant: str,
                   dataset: DatasetPreset | None, size: tuple[int, int], batch: int, opset: int,
                   head: str, proto) -> dict:
    preset = dataset or _fallback_preset(model.num_classes)
    h, w = size
    if head == "mask":
        output = {"name": "mask", "kind": "mask", "shape": [batch, h, w], "dtype": "int32", "stride": 1,
                  "meaning": "class id per input pixel: stride-8 logits upsampled bilinearly "
                             "(align_corners=False) to the input size, then argmax over classes"}
    else:
        output = {"name": "logits", "kind": "logits", "shape": [batch, model.num_classes, h // 8, w // 8],
                  "dtype": "float32", "stride": 8,
                  "meaning": "decoder scores per class at stride 8 (before softmax); upsample bilinearly "
                             "to the image size, then argmax"}
    return {
        "format": mf.FORMAT,
        "schema_version": mf.SCHEMA_VERSION,
        "name": name,
        "model": {"variant": variant, "num_classes": model.num_classes,
                  "dataset": dataset.name if dataset else None,
                  "class_names": list(preset.class_names), "palette": [list(c) for c in preset.palette]},
        "input": {"name": "image", "shape": [batch, 3, h, w], "layout": "NCHW", "dtype": "float32",
                  "color_order": "RGB", "mean": list(preset.mean), "std": list(preset.std),
                  "scale": "RGB pixels on the 0..255 scale, then (x - mean) / std",
                  "resize": "stretch to the input size (the runtime also offers keep-ratio padding)"},
        "output": output,
        "precision": "fp32",
        "opset": opset,
        "artifacts": {"onnx": mf.artifact_record(onnx_path, onnx_path.parent)},
        "grids": {"backbone": stage_grids(h, w, model.cfg.query_target),
                  "head": head_grids(h, w, model.cfg.head_query_target)},
        "tools": mf.tool_versions(),
        "created": mf.now_iso(),
    }
