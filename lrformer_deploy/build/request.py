"""What to build, and every check that needs no model: `BuildRequest` and `validate`.

`validate` checks every argument, input path, output location and optional dependency before any model is
loaded, so a mistake costs a user less than a second, not the 15 s of an export. One validation table for
every tool: lrformer-export, lrformer-bench and the demo model's first-use export all pass through it.
"""
from __future__ import annotations

import importlib.util
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lrformer_deploy.contract import (CALIB_METHODS, CPU_ONLY_PRECISIONS, ENGINE_MODES, HEADS, MAX_OPSET, MIN_OPSET,
                                      REDUCED_PRECISIONS, TARGETS, check_export_size)
from lrformer_deploy import cpus
from lrformer_deploy.errors import UserError
from lrformer_deploy.runtime.backends import openvino_missing, tensorrt_missing


@dataclass
class BuildRequest:
    """What to make. Exactly one source: `checkpoint` (optionally with a forced `variant`/`num_classes`),
    `variant` alone (random weights, seeded: structure and speed only), or `graph` (an existing FP32 ONNX
    graph, with or without its manifest, from which reduced graphs and engines are derived)."""

    checkpoint: str | os.PathLike | None = None
    variant: str | None = None
    graph: str | os.PathLike | None = None
    num_classes: int | None = None
    dataset: str | None = None
    preset: dict | None = None  # an export preset (export/*.json): dataset, size per variant, head
    size: tuple[int, int] | None = None  # (H, W); default: preset, else 512x512 (640x640 for L/XL)
    batch: int = 1
    head: str | None = None  # mask (default) or logits
    opset: int = 17
    precisions: tuple[str, ...] = ()  # reduced graphs to make besides FP32: "fp16", "int8", "bf16" (cpu only)
    calib: str | os.PathLike | None = None  # folder of images or a video
    calib_count: int = 32
    calib_method: str = "entropy"
    check_count: int = 8  # frames held back from calibration for the accuracy check
    min_agreement: float | None = None  # None: the precision's default (reported only for random weights)
    synthetic_calibration: bool = False  # INT8 without calib: calibrate on synthetic scenes (benchmarks)
    target: str = "tensorrt"  # what the graphs are shaped for: "tensorrt" (GPU) or "cpu" (ONNX Runtime)
    engine: str = "auto"  # auto: build when TensorRT + a GPU are here; require: fail otherwise; off
    workspace_gib: float = 4.0
    engine_options: dict = field(default_factory=dict)  # more build_engine keywords (batch_range, ...)
    export_options: dict = field(default_factory=dict)  # more export_onnx keywords (e.g. a dynamic batch)
    output_dir: str | os.PathLike = "engines"  # for `graph`: the graph's own folder when left at default
    name: str | None = None  # artifact stem (default lrformer-<variant>-<dataset>-<H>x<W>)
    quiet: bool = False
    reuse: bool = False  # keep artifacts whose manifest shows they were made from the same inputs


def not_a_checkpoint(path: str | os.PathLike) -> str | None:
    """What `path` is when it is plainly another kind of model file than a checkpoint, else None.

    Read from the name and the first bytes, before torch sees the file: torch.load's own refusal of an ONNX
    graph is a paragraph about weights_only that suggests unpickling it anyway."""
    from lrformer_deploy.runtime.spec import ENGINE_SUFFIXES, ONNX_SUFFIXES

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return "an exported ONNX graph"
    if suffix in ENGINE_SUFFIXES:
        return "a TensorRT engine"
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    if suffix == ".json" or head.lstrip()[:1] == b"{":
        return "a JSON file (an export manifest?)"
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return None  # torch's zip format, or a legacy pickle
    if b"pytorch" in head[:32] or b"onnx" in head[:32].lower():
        return "an exported ONNX graph"  # an ONNX file under another name: producer "pytorch" in its header
    return None


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def activation_floor(size: tuple[int, int], batch: int, head: str | None, num_classes: int | None) -> int:
    """A LOWER bound on the bytes one forward pass holds at once: the float input (3 channels), the first
    stem convolution (at least 16 channels at stride 2, i.e. 4 floats per input pixel) and, for a mask
    head, the logits upsampled to the input size. Export holds more (PyTorch and ONNX Runtime both run)."""
    per_pixel = 3 + 4 + (num_classes or 0) * (head != "logits")
    return 4 * batch * size[0] * size[1] * per_pixel


def check_memory(size: tuple[int, int], batch: int, head: str | None, num_classes: int | None) -> None:
    need, have = activation_floor(size, batch, head, num_classes), physical_memory()
    if have is not None and need > have:
        raise UserError(f"size {size[0]}x{size[1]} (batch {batch}) needs at least {need / 2**30:,.1f} GiB for "
                        f"its input and first activations alone; this machine has {have / 2**30:,.1f} GiB")


def check_output_dir(path: str | os.PathLike, what: str = "--output-dir") -> Path:
    """Create the folder if needed and prove it is writable; every failure is one UserError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"{what} {path} is not writable (cannot create a file there: "
                        f"{exc.strerror or exc.__class__.__name__})") from None
    return path


def check_name(name: str | None) -> None:
    if name is None:
        return
    if not name or name in (".", "..") or any(sep in name for sep in ("/", "\\", os.sep)) or name.startswith("."):
        raise UserError(f"--name {name!r} must be a plain file stem (no folders, not hidden); "
                        "choose the folder with --output-dir")


def check_calibration_source(calib: str | os.PathLike) -> None:
    """Missing, a text file, an empty folder or an unreadable video: refused before any work."""
    from lrformer_deploy.precision.calibration import list_calibration_files

    kind, files = list_calibration_files(calib)
    if kind == "video":
        import cv2

        cap = cv2.VideoCapture(str(files[0]))
        try:
            ok = cap.isOpened() and cap.read()[0]
        finally:
            cap.release()
        if not ok:
            raise UserError(f"calibration video {calib} cannot be decoded (no frame could be read)")


def validate(req: BuildRequest) -> None:
    """Every check that needs no model: arguments, inputs, output location, optional dependencies."""
    if req.graph is None and importlib.util.find_spec("torch") is None:
        # cli_entry turns this into the one line naming the extra to install
        raise ModuleNotFoundError("No module named 'torch'", name="torch")
    sources = [s for s in (req.checkpoint, req.graph) if s is not None]
    if len(sources) > 1:
        raise UserError("give a checkpoint or an existing graph, not both")
    if req.graph is not None and req.variant is not None:
        raise UserError("a variant cannot be forced on an existing graph")
    if not sources and not req.variant:
        raise UserError("give --ckpt (a checkpoint) or --variant (random weights for structure/speed)")
    for path, what in ((req.checkpoint, "checkpoint"), (req.graph, "ONNX graph")):
        if path is not None and not Path(path).is_file():
            raise UserError(f"{what} not found: {path}")
    if req.checkpoint is not None:
        other = not_a_checkpoint(req.checkpoint)
        if other:
            raise UserError(f"--ckpt {req.checkpoint} is {other}, not a checkpoint: --ckpt wants a PyTorch "
                            ".pth (a state_dict)")
    if req.num_classes is not None and req.num_classes < 1:
        raise UserError(f"--num-classes must be at least 1, got {req.num_classes}")
    if req.batch < 1:
        raise UserError(f"--batch must be at least 1, got {req.batch}")
    if req.size is not None:
        check_export_size(req.size, req.batch)
        check_memory(req.size, req.batch, req.head, req.num_classes)
    if req.head is not None and req.head not in HEADS:
        raise UserError(f"--head must be one of {', '.join(HEADS)}, got {req.head!r}")
    if not MIN_OPSET <= req.opset <= MAX_OPSET:
        raise UserError(f"--opset {req.opset} is not supported: use {MIN_OPSET} to {MAX_OPSET} "
                        f"(LayerNormalization needs {MIN_OPSET}; {MAX_OPSET} is the newest the exporter writes)")
    bad = [p for p in req.precisions if p not in REDUCED_PRECISIONS]
    if bad:
        raise UserError(f"precision must be among {', '.join(REDUCED_PRECISIONS)}, got {', '.join(bad)}")
    if req.calib_count < 1:
        raise UserError(f"--calib-count must be at least 1, got {req.calib_count}")
    if req.check_count < 1:
        raise UserError(f"check frames must be at least 1, got {req.check_count}")
    if req.calib_method not in CALIB_METHODS:
        raise UserError(f"--calib-method must be one of {', '.join(CALIB_METHODS)}, got {req.calib_method!r}")
    if req.min_agreement is not None and not 0.0 <= req.min_agreement <= 1.0:
        raise UserError(f"--min-agreement is a fraction of pixels between 0 and 1, got {req.min_agreement}")
    if "int8" in req.precisions and req.calib is None and not req.synthetic_calibration:
        raise UserError("--int8 needs --calib (a folder of images or a video file)")
    if req.calib is not None:
        check_calibration_source(req.calib)
    if req.target not in TARGETS:
        raise UserError(f"--target must be one of {', '.join(TARGETS)}, got {req.target!r}")
    for precision in (p for p in req.precisions if p in CPU_ONLY_PRECISIONS):
        check_cpu_precision(precision, req.target)
    if req.engine not in ENGINE_MODES:
        raise UserError(f"engine mode must be one of {', '.join(ENGINE_MODES)}, got {req.engine!r}")
    if not (math.isfinite(req.workspace_gib) and req.workspace_gib > 0):
        raise UserError(f"--workspace must be a positive number of GiB, got {req.workspace_gib}")
    if req.export_options.get("input_dtype", "float32") != "float32" and req.precisions:
        raise UserError("--input uint8 is made for the FP32 graph only for now: the FP16/INT8 passes calibrate "
                        "and check on float frames (export the reduced graphs with float input)")
    if req.export_options.get("mask_dtype", "int32") != "int32" and req.precisions:
        raise UserError("--mask-dtype uint8 is made for the FP32 graph only for now (not with --fp16/--int8)")
    if req.engine == "require":
        reason = tensorrt_missing()
        if reason:
            raise UserError(f"--engine was demanded but cannot be built: {reason}")
    check_name(req.name)
    check_output_dir(output_dir(req))


def check_cpu_precision(precision: str, target: str) -> None:
    """bf16: target cpu, a CPU with bf16 instructions (cpus.bf16_missing) and OpenVINO to run and check it."""
    if target != "cpu":
        raise UserError(f"--{precision} is a CPU precision: add --target cpu")
    reason = cpus.bf16_missing()
    if reason:
        raise UserError(f"--{precision} refused: {reason}; it would run slower than FP32 here")
    reason = openvino_missing()
    if reason:
        raise UserError(f"--{precision} runs on OpenVINO: {reason}")


def output_dir(req: BuildRequest) -> Path:
    """Where the artifacts go: --output-dir, or an existing graph's own folder when left at the default."""
    if req.graph is not None and Path(req.output_dir) == Path("engines"):
        return Path(req.graph).parent
    return Path(req.output_dir)



def check_graph_readable(path: Path) -> None:
    """A corrupt or truncated .onnx is one UserError, not a protobuf traceback."""
    try:
        import onnx

        onnx.load(str(path), load_external_data=False)
    except ImportError:
        return
    except Exception as exc:  # protobuf DecodeError, truncated file, ...
        raise UserError(f"{path} is not a readable ONNX graph ({exc.__class__.__name__})") from None
