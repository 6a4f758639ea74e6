"""What the runtime needs to know about a model, read from its manifest (or guessed from the graph).

A `ModelSpec` is the runtime's view of one deployable model: the artifact files, the input tensor
(name, static shape, colour order, mean/std) and the output tensor (a class-id mask at the input size,
or stride-8 logits), plus class names and palette for drawing. It is built from the manifest JSON that
the exporter writes beside every graph; the JSON is read here with the standard library so that the
runtime depends on nothing but numpy, cv2 and onnxruntime.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lrformer_deploy.cache import cached_sha256
from lrformer_deploy.contract import IMAGENET_MEAN, IMAGENET_STD, default_palette
from lrformer_deploy.errors import UserError
from lrformer_deploy.manifest import FORMAT, load_manifest

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_name: str
    input_shape: tuple[int, int, int, int]  # N, 3, H, W (static; logical, whatever the graph's layout)
    output_name: str
    output_kind: str  # "mask" (class ids at input size) or "logits" (N x C x H/s x W/s)
    num_classes: int
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]  # RGB
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    color_order: str = "RGB"
    onnx_path: Path | None = None
    engine_path: Path | None = None
    checkpoint_path: Path | None = None
    engine_record: dict[str, Any] | None = None
    dynamic_batch: bool = False  # graph batch dim is symbolic: input_shape[0] is its maximum
    manifest_path: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    input_dtype: str = "float32"  # "uint8": the graph takes raw frames and normalises them itself
    input_layout: str = "NCHW"  # "NHWC" for a uint8-input graph

    @property
    def model_input_shape(self) -> tuple[int, ...]:
        """The input's shape as the graph declares it (N, H, W, 3 for NHWC)."""
        n, c, h, w = self.input_shape
        return (n, h, w, c) if self.input_layout == "NHWC" else self.input_shape

    @property
    def batch(self) -> int:
        return self.input_shape[0]

    @property
    def input_size(self) -> tuple[int, int]:
        return self.input_shape[2], self.input_shape[3]


def _shape(values: Any, where: Path, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise UserError(f"{where}: {what} must be a list of integers, got {values!r}") from None


def spec_from_manifest(manifest: dict[str, Any], manifest_path: Path) -> ModelSpec:
    """Build a ModelSpec from a manifest dict; artifact paths are relative to the manifest's folder."""
    folder = manifest_path.parent
    try:
        model, inp, out = manifest["model"], manifest["input"], manifest["output"]
        shape = list(inp["shape"])
        dynamic_batch = bool(shape) and isinstance(shape[0], str)
        if dynamic_batch:
            shape[0] = (inp.get("batch_range") or [1, 1])[-1]
        input_shape = _shape(shape, manifest_path, "input.shape")
        layout = str(inp.get("layout", "NCHW")).upper()
        input_dtype = str(inp.get("dtype", "float32")).lower()
        if (layout, input_dtype) not in (("NCHW", "float32"), ("NHWC", "uint8")):
            raise UserError(f"{manifest_path}: input must be float32 NCHW or uint8 NHWC, got {input_dtype} {layout}")
        if layout == "NHWC" and len(input_shape) == 4:
            input_shape = (input_shape[0], input_shape[3], input_shape[1], input_shape[2])
        if len(input_shape) != 4 or input_shape[1] != 3:
            raise UserError(f"{manifest_path}: input.shape must be [N, 3, H, W] (or [N, H, W, 3] for uint8 NHWC), "
                            f"got {list(inp['shape'])}")
        kind = out.get("kind", "mask")
        if kind not in ("mask", "logits"):
            raise UserError(f"{manifest_path}: output.kind must be \"mask\" or \"logits\", got {kind!r}")
        num_classes = int(model["num_classes"])
        names = tuple(str(n) for n in model.get("class_names") or ())
        palette = tuple(tuple(int(c) for c in rgb) for rgb in model.get("palette") or ())
        artifacts = manifest.get("artifacts") or {}
        onnx_rec = artifacts.get("onnx") or {}
        engine_rec = artifacts.get("engine") or None
        color_order = str(inp.get("color_order", "RGB")).upper()
        if color_order not in ("RGB", "BGR"):
            raise UserError(f"{manifest_path}: input.color_order must be RGB or BGR, got {color_order!r}")
        spec = ModelSpec(
            name=str(manifest.get("name") or manifest_path.stem),
            input_name=str(inp.get("name", "image")),
            input_shape=input_shape,  # type: ignore[arg-type]
            output_name=str(out.get("name", kind)),
            output_kind=kind,
            num_classes=num_classes,
            class_names=names if len(names) == num_classes else tuple(f"class {i}" for i in range(num_classes)),
            palette=palette if len(palette) >= num_classes else default_palette(num_classes),
            mean=tuple(float(v) for v in inp.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
            std=tuple(float(v) for v in inp.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
            color_order=color_order,
            onnx_path=(folder / onnx_rec["file"]) if onnx_rec.get("file") else None,
            engine_path=(folder / engine_rec["file"]) if engine_rec and engine_rec.get("file") else None,
            engine_record=engine_rec,
            dynamic_batch=dynamic_batch,
            manifest_path=manifest_path,
            manifest=manifest,
            input_dtype=input_dtype,
            input_layout=layout,
        )
    except UserError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{manifest_path}: manifest is missing or has a malformed field ({exc})") from None
    if len(spec.mean) != 3 or len(spec.std) != 3 or any(s == 0 for s in spec.std):
        raise UserError(f"{manifest_path}: input.mean and input.std need 3 values each, std non-zero")
    return spec


def spec_from_io(
    model_path: Path,
    input_name: str,
    input_shape: tuple[Any, ...],
    output_name: str,
    output_shape: tuple[Any, ...],
) -> ModelSpec:
    """Guess a spec from a graph's I/O when no manifest sits beside it (ImageNet mean/std, RGB)."""
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in input_shape)
    if len(shape) != 4 or shape[1] != 3 or shape[2] is None or shape[3] is None:
        raise UserError(f"{model_path}: expected an input of shape [N, 3, H, W] with static H and W, "
                        f"got {list(input_shape)}")
    kind = "logits" if len(output_shape) == 4 else "mask"
    num_classes = output_shape[1] if kind == "logits" and isinstance(output_shape[1], int) else 256
    print(f"warning: no manifest found for {model_path.name}; assuming RGB input with ImageNet mean/std "
          f"and {'generic' if kind == 'mask' else num_classes} class colours", file=sys.stderr)
    return ModelSpec(
        name=model_path.stem,
        input_name=input_name,
        input_shape=(shape[0] or 1, 3, shape[2], shape[3]),
        output_name=output_name,
        output_kind=kind,
        num_classes=num_classes,
        class_names=tuple(f"class {i}" for i in range(num_classes)),
        palette=default_palette(num_classes),
    )


def find_manifest(model_path: Path) -> Path | None:
    """The manifest of an .onnx or .engine file: same stem .json, else any manifest naming the file."""
    same_stem = model_path.with_suffix(".json")
    if same_stem.is_file():
        return same_stem
    try:
        candidates = sorted(model_path.parent.glob("*.json"))
    except OSError:
        return None
    for candidate in candidates:
        try:
            data = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            continue
        for record in (data.get("artifacts") or {}).values():
            if isinstance(record, dict) and record.get("file") == model_path.name:
                return candidate
    return None


@dataclass(frozen=True)
class ResolvedModel:
    """The files behind a --model argument. `spec` is None until a backend can read the graph's I/O."""

    path: Path
    kind: str  # "onnx", "engine", "manifest" or "checkpoint"
    spec: ModelSpec | None


def resolve_model(model: str | Path) -> ResolvedModel:
    """Map a model path (.onnx, .engine, manifest .json or checkpoint) onto its files and manifest."""
    path = Path(model).expanduser()
    if not path.exists():
        raise UserError(f"model file not found: {path}")
    if path.is_dir():
        raise UserError(f"--model must be a file (.onnx, .engine, .json or .pth), got the folder {path}")
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise UserError(f"model file is empty: {path}")
    if suffix == ".json":
        spec = spec_from_manifest(load_manifest(path), path)
        if spec.onnx_path is None and spec.engine_path is None:
            raise UserError(f"{path}: the manifest names no onnx or engine artifact")
        # Which artifact runs (engine or graph) is the backend's choice, made by the Segmenter.
        return ResolvedModel(path=path, kind="manifest", spec=spec)
    if suffix in ONNX_SUFFIXES or suffix in ENGINE_SUFFIXES:
        kind = "onnx" if suffix in ONNX_SUFFIXES else "engine"
        manifest_path = find_manifest(path)
        spec = None
        if manifest_path is not None:
            spec = spec_from_manifest(load_manifest(manifest_path), manifest_path)
            if kind == "engine" and spec.engine_record is None:
                # An engine beside a manifest that records none is left over from an earlier export (a
                # re-export without the engine step): its classes and graph may no longer match.
                raise UserError(f"{path.name} is not recorded in its manifest {manifest_path.name} (it is left over "
                                "from an earlier export): build the engine again (lrformer-export ... --engine) "
                                "or run the .onnx")
            # The file the user named wins over the manifest's record (e.g. a renamed copy).
            spec = replace(spec, onnx_path=path) if kind == "onnx" else replace(spec, engine_path=path)
        return ResolvedModel(path=path, kind=kind, spec=spec)
    if suffix in CHECKPOINT_SUFFIXES:
        return ResolvedModel(path=path, kind="checkpoint", spec=None)
    raise UserError(f"unsupported model file {path.name}: expected .onnx, .engine, a manifest .json or a .pth checkpoint")


# ------------------------------------------------------------------------------- artifact integrity
def verify_artifact(path: Path, spec: ModelSpec | None, kind: str) -> None:
    """Refuse to load `path` when its manifest records another sha256 for it (kind "onnx" or "engine").

    A file replaced after its manifest was written (an interrupted re-export, a partial copy, a hand edit)
    would otherwise run silently with the wrong weights or graph. No manifest, or a record without a
    sha256, means nothing to check against.
    """
    if spec is None or spec.manifest_path is None:
        return
    record = ((spec.manifest or {}).get("artifacts") or {}).get(kind) or {}
    want = record.get("sha256") if isinstance(record, dict) else None
    if not want:
        return
    got = cached_sha256(path)
    if got != str(want).lower():
        raise UserError(f"{path} does not match its manifest {spec.manifest_path} (sha256 {got[:12]}... there, "
                        f"{str(want)[:12]}... recorded): the file changed after export or an export was interrupted; "
                        "export it again")
