"""What the benchmark measures, and the one place it asks the build side for artifacts.

`resolve_source` maps --model / --variant onto a `Source` (the FP32 graph, its manifest, the PyTorch
module that does the same work); `export_fp32`, `reduced_graph` and `engine_for` make what is missing.
All three go through `_build`, the benchmark's only call of `lrformer_deploy.build.build`, and each
names the target it shapes graphs for: ONNX Runtime rows run graphs made for "cpu", TensorRT rows
engines made from graphs for "tensorrt".
"""
from __future__ import annotations

import contextlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lrformer_deploy.build import Artifact, BuildRequest, build
from lrformer_deploy.build.request import check_graph_readable
from lrformer_deploy.contract import IMAGENET_MEAN, IMAGENET_STD, graph_input
from lrformer_deploy.errors import UserError


def make_input(size: tuple[int, int], batch: int, mean: Sequence[float], std: Sequence[float],
               seed: int = 0) -> np.ndarray:
    """N x 3 x H x W float32: synthetic BGR scenes through the runtime's preprocessing (stretch, RGB)."""
    from lrformer_deploy.runtime.preprocess import Preprocessor
    from lrformer_deploy.data.synthetic import generate_scene

    prep = Preprocessor(tuple(size), tuple(mean), tuple(std), "RGB", "stretch")
    frames = [prep(generate_scene(seed + i, (max(size[0], 32), max(size[1], 32)))[0])[0] for i in range(batch)]
    return np.ascontiguousarray(np.stack(frames).astype(np.float32))


@dataclass
class Source:
    """What --model / --variant resolved to: the FP32 graph (if any), its manifest, a torch module maker."""

    label: str
    size: tuple[int, int]
    batch: int
    head: str  # "mask" or "logits"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    work_dir: Path
    onnx_path: Path | None = None
    engine_path: Path | None = None
    engine_record: dict | None = None
    variant: str | None = None
    num_classes: int | None = None
    checkpoint: Path | None = None
    torch_note: str = ""
    missing_graph: Path | None = None  # the manifest names this graph, but it is not there
    _torch_model: Any = None

    def no_graph(self) -> str:
        """Why there is no ONNX graph to run, for a one-line error."""
        if self.missing_graph is not None:
            return f"{self.label} names the graph {self.missing_graph}, which is missing (re-export it)"
        return f"{self.label}: no ONNX graph to run"

    def torch_module(self):
        """The eager nn.Module doing the graph's work (MaskHead for a mask graph); None if unknown."""
        if self._torch_model is None:
            model = self._base_model()
            if model is None:
                return None
            from lrformer_deploy.model.lrformer import MaskHead

            model.set_static(False)  # eager = adaptive pooling, as a PyTorch user runs it
            self._torch_model = MaskHead(model).eval() if self.head == "mask" else model.eval()
        return self._torch_model

    def _base_model(self):
        import torch

        from lrformer_deploy.model.lrformer import build_model

        if self.checkpoint is not None:
            from lrformer_deploy.model.checkpoint import load_checkpoint

            return load_checkpoint(self.checkpoint, verbose=False)
        if self.variant is None or self.num_classes is None:
            return None
        torch.manual_seed(0)  # the same random weights as the graph exported from --variant
        return build_model(self.variant, self.num_classes)


def _build(req: BuildRequest, precision: str) -> Artifact:
    """The benchmark's one build() call; stdout stays the report's (calibration libraries print there)."""
    with contextlib.redirect_stdout(sys.stderr):
        return build(req)[precision]


def export_fp32(variant: str, num_classes: int, size: tuple[int, int], batch: int, head: str,
                work_dir: Path, checkpoint: Path | None = None) -> Path:
    """The FP32 graph of random weights of `variant` (or of a checkpoint) in work_dir, shaped for ONNX
    Runtime on the CPU (reused while its manifest shows the same inputs)."""
    if importlib.util.find_spec("torch") is None:
        raise UserError("exporting a model for the benchmark needs PyTorch, which is not installed here; "
                        "pass an exported --model .onnx instead")
    from lrformer_deploy.model.lrformer import get_config

    if checkpoint is None:
        try:
            variant = get_config(variant).name
        except KeyError as exc:
            raise UserError(str(exc.args[0])) from None
    stem = f"bench-{checkpoint.stem}" if checkpoint is not None else f"bench-{variant.lower()}-random-c{num_classes}"
    name = f"{stem}-{head}-{size[0]}x{size[1]}-b{batch}"
    req = BuildRequest(checkpoint=checkpoint, variant=None if checkpoint is not None else variant,
                       num_classes=None if checkpoint is not None else num_classes, size=size, batch=batch,
                       head=head, output_dir=work_dir, name=name, engine="off", quiet=True, reuse=True,
                       target="cpu")
    if not (work_dir / f"{name}.onnx").is_file():
        print(f"exporting {name}.onnx (one-time, into {work_dir})...", file=sys.stderr)
    return _build(req, "fp32").onnx


def reduced_graph(src: Source, precision: str, calib: str | None, calib_count: int, target: str,
                  engine: str = "off") -> tuple[Artifact, str]:
    """The FP16/INT8 graph beside the FP32 one for `target`, made or reused; with engine "auto" also its
    TensorRT engine. Returns (the build's Artifact, a note for the row)."""
    assert src.onnx_path is not None
    # The benchmark measures speed: a low agreement (random weights) is reported, not refused; without
    # --calib, INT8 calibrates on synthetic scenes.
    req = BuildRequest(graph=src.onnx_path, precisions=(precision,), calib=calib, calib_count=calib_count,
                       check_count=2, min_agreement=0.0, synthetic_calibration=True, engine=engine, quiet=True,
                       reuse=True, output_dir=src.onnx_path.parent, target=target)
    print(f"{precision.upper()} graph for {target} ({calib_count} calibration frames)...", file=sys.stderr)
    art = _build(req, precision)
    details = art.details or (art.manifest or {}).get("precision_details") or {}
    acc = details.get("accuracy") or {}
    agree = acc.get("mask_agreement", acc.get("agreement"))
    frames = acc.get("frames")
    # Not the table's agree(torch) column: another reference (the FP32 graph) on other frames (held out
    # from calibration). Both are labelled so the row and this note do not seem to contradict each other.
    check = (f"; build check vs the FP32 graph on {frames or 'the'} held-out frame{'s' if frames != 1 else ''}: "
             f"mask agreement {agree:.4f}") if isinstance(agree, float) else ""
    if art.reused:
        return art, f"graph reused from an earlier run{check}"
    return art, f"calibrated on {'synthetic scenes' if calib is None else '--calib'}{check}"


def engine_for(src: Source, precision: str, calib: str | None, calib_count: int) -> Artifact:
    """A strongly typed TensorRT engine from the FP32 graph, or from its FP16/INT8 graph made for TensorRT."""
    assert src.onnx_path is not None
    if precision != "fp32":
        return reduced_graph(src, precision, calib, calib_count, target="tensorrt", engine="auto")[0]
    print(f"building a TensorRT engine from {src.onnx_path.name}...", file=sys.stderr)
    return _build(BuildRequest(graph=src.onnx_path, engine="auto", quiet=True, output_dir=src.onnx_path.parent,
                               target="tensorrt"), "fp32")


def resolve_source(model: str | None, variant: str | None, num_classes: int, size: tuple[int, int] | None,
                   batch: int | None, head: str, work_dir: Path) -> Source:
    from lrformer_deploy import manifest as mf
    from lrformer_deploy.runtime.spec import resolve_model, spec_from_manifest

    if model is None and variant is None:
        raise UserError("give --model PATH (.onnx, .json, .engine or .pth) or --variant NAME with --size")
    if model is not None and variant is not None:
        raise UserError("give either --model or --variant, not both")
    if variant is not None or Path(model).suffix.lower() in (".pth", ".pt", ".ckpt"):
        ckpt = None
        if model is not None:
            ckpt = resolve_model(model).path
        size = size or (512, 512)
        batch = batch or 1
        onnx_path = export_fp32(variant or "", num_classes, size, batch, head, work_dir, checkpoint=ckpt)
        spec = spec_from_manifest(mf.load_manifest(onnx_path.with_suffix(".json")), onnx_path.with_suffix(".json"))
        m = spec.manifest["model"]
        label = f"LRFormer-{m['variant']} ({'random weights' if ckpt is None else ckpt.name})"
        return Source(label=label, size=size, batch=batch, head=spec.output_kind, mean=spec.mean, std=spec.std,
                      work_dir=work_dir, onnx_path=onnx_path, variant=m["variant"], num_classes=int(m["num_classes"]),
                      checkpoint=ckpt)

    resolved = resolve_model(model)
    spec = resolved.spec
    if spec is None:  # an .onnx/.engine without manifest: read the graph's I/O
        if resolved.kind == "engine":
            raise UserError(f"{resolved.path.name} has no manifest beside it; the benchmark needs its input shape")
        import onnx

        check_graph_readable(resolved.path)
        proto = onnx.load(str(resolved.path), load_external_data=False)
        _, dims = graph_input(proto)
        out_dims = proto.graph.output[0].type.tensor_type.shape.dim
        if len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in dims):
            raise UserError(f"{resolved.path.name}: the input must be static N x 3 x H x W, got {dims}")
        g_size, g_batch, g_head = (dims[2], dims[3]), dims[0], "logits" if len(out_dims) == 4 else "mask"
        mean, std, onnx_path, engine_path, record, m = IMAGENET_MEAN, IMAGENET_STD, resolved.path, None, None, {}
    else:
        if spec.input_dtype != "float32":
            raise UserError(f"{resolved.path.name} takes uint8 frames (lrformer-export --input uint8); lrformer-bench "
                            "measures float-input graphs: compare the two with samples/bench_uint8_input.py")
        g_size, g_batch, g_head = spec.input_size, spec.batch, spec.output_kind
        mean, std, onnx_path, engine_path, record = spec.mean, spec.std, spec.onnx_path, spec.engine_path, spec.engine_record
        m = spec.manifest.get("model", {})
    if size is not None and tuple(size) != tuple(g_size):
        raise UserError(f"{resolved.path.name} is a static {g_size[0]}x{g_size[1]} model; drop --size or export "
                        f"at {size[0]}x{size[1]}")
    if batch is not None and batch != g_batch:
        raise UserError(f"{resolved.path.name} has a static batch of {g_batch}; re-export with --batch {batch}")
    missing = None
    if onnx_path is not None and not onnx_path.is_file():
        missing, onnx_path = onnx_path, None  # only an engine can still be measured; never a stand-in
    elif onnx_path is not None:
        check_graph_readable(onnx_path)
    src = Source(label=resolved.path.name, size=tuple(g_size), batch=int(g_batch), head=g_head, mean=tuple(mean),
                 std=tuple(std), work_dir=work_dir, onnx_path=onnx_path,
                 engine_path=engine_path, engine_record=record,
                 variant=m.get("variant"), num_classes=m.get("num_classes"), missing_graph=missing)
    if src.variant is not None:
        src.torch_note = "random weights, same architecture (speed does not depend on the weights)"
    return src
