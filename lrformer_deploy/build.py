"""The one place artifacts are made: FP32 graph, FP16 / INT8 graphs, TensorRT engines, and their manifests.

    from lrformer_deploy.build import BuildRequest, build
    result = build(BuildRequest(checkpoint="t.pth", precisions=("fp16",), output_dir="engines"))
    result["fp16"].onnx, result["fp16"].manifest_path, result["fp16"].engine

`lrformer-export`, `lrformer-bench`, the demo model's cached export and the Triton export all call `build`.

Order of work, and why:
1. `validate` checks every argument, input path, output location and optional dependency before any
   model is loaded (a mistake costs a user less than a second, not the 15 s of an export).
2. Each artifact is made in a hidden staging folder inside the output folder (same filesystem, so the
   final rename is atomic), verified there (ONNX Runtime check, accuracy check), and only then moved
   into place by `manifest.publish`: files first, the manifest last as the commit point. A failed or
   interrupted re-export therefore leaves the previous graph and manifest untouched, and a failed
   accuracy check leaves no orphan graph.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .errors import UserError

TARGETS = ("tensorrt", "cpu")
ENGINE_MODES = ("auto", "require", "off")
HEADS = ("mask", "logits")
PRECISIONS = ("fp16", "int8")
CALIB_METHODS = ("entropy", "percentile", "minmax")
MIN_OPSET = 17  # LayerNormalization is one op from opset 17
# Highest opset the exporter (torch 2.13's dynamo exporter) and ONNX Runtime were seen to produce and run;
# above it the exporter silently falls back to opset 18, which a manifest must never misreport.
MAX_OPSET = 23


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
    precisions: tuple[str, ...] = ()  # reduced graphs to make besides FP32: "fp16", "int8"
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


@dataclass
class Artifact:
    """One graph and what was made from it."""

    precision: str
    onnx: Path
    manifest_path: Path | None
    manifest: dict | None
    seconds: float = 0.0
    reused: bool = False
    engine: Path | None = None
    engine_record: dict | None = None
    engine_skipped: str | None = None  # why no engine was built (TensorRT or a GPU missing)
    details: dict | None = None  # precision_details of a reduced graph made by this build


@dataclass
class BuildResult:
    artifacts: dict[str, Artifact] = field(default_factory=dict)  # "fp32", "fp16", "int8"
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, precision: str) -> Artifact:
        return self.artifacts[precision]


# ---------------------------------------------------------------------------------------------- checks
def check_export_size(size: tuple[int, int], batch: int = 1) -> None:
    h, w = size
    if h <= 0 or w <= 0:
        raise UserError(f"size {h}x{w} must be positive")
    if h % 32 or w % 32:
        raise UserError(f"size {h}x{w} must be a multiple of 32 on both sides (the encoder downsamples by 32)")
    if batch <= 0:
        raise UserError(f"batch {batch} must be at least 1")


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
    from .precision.calibration import list_calibration_files

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


def tensorrt_missing() -> str | None:
    """Why no TensorRT engine can be built here (a cheap check: no import, no GPU query), else None."""
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install 'lrformer-deploy[tensorrt]' on a machine with an NVIDIA GPU)"
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU found (nvidia-smi is not installed)"
    return None


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
    bad = [p for p in req.precisions if p not in PRECISIONS]
    if bad:
        raise UserError(f"precision must be among {', '.join(PRECISIONS)}, got {', '.join(bad)}")
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
    if req.engine not in ENGINE_MODES:
        raise UserError(f"engine mode must be one of {', '.join(ENGINE_MODES)}, got {req.engine!r}")
    if not (math.isfinite(req.workspace_gib) and req.workspace_gib > 0):
        raise UserError(f"--workspace must be a positive number of GiB, got {req.workspace_gib}")
    if req.engine == "require":
        reason = tensorrt_missing()
        if reason:
            raise UserError(f"--engine was demanded but cannot be built: {reason}")
    check_name(req.name)
    check_output_dir(_output_dir(req))


def _output_dir(req: BuildRequest) -> Path:
    if req.graph is not None and Path(req.output_dir) == Path("engines"):
        return Path(req.graph).parent
    return Path(req.output_dir)


# ---------------------------------------------------------------------------------------------- helpers
class _Steps:
    """A tqdm bar over the build's steps (export, check, FP16, INT8, engine); silent when quiet or when
    stderr is not a terminal."""

    def __init__(self, total: int, quiet: bool):
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm comes with the `export` extra; a graph-only build runs without a bar
            quiet = True

            def tqdm(**_kw):
                return types.SimpleNamespace(set_postfix_str=lambda *_: None, update=lambda *_: None,
                                             close=lambda: None)
        self.bar = tqdm(total=total, desc="build", unit="step", leave=False,
                        disable=quiet or not sys.stderr.isatty(), file=sys.stderr)

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[None]:
        self.bar.set_postfix_str(text)
        yield
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


@contextlib.contextmanager
def _staging(out_dir: Path, stem: str) -> Iterator[Path]:
    """A hidden folder beside the artifacts, removed whatever happens (failure, Ctrl-C, SIGTERM)."""
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{stem}.", suffix=".partial") as tmp:
        yield Path(tmp)


def _note(req: BuildRequest, result: BuildResult, text: str) -> None:
    result.notes.append(text)
    if not req.quiet:
        print(f"note: {text}", file=sys.stderr)


def _manifest_if_consistent(onnx_path: Path) -> dict | None:
    """The manifest beside `onnx_path` when it vouches for exactly this file, else None."""
    from . import manifest as mf

    man = mf.manifest_path_for(onnx_path)
    if not (onnx_path.is_file() and man.is_file()):
        return None
    try:
        m = mf.load_manifest(man)
        if m["artifacts"]["onnx"]["sha256"] == mf.sha256_file(onnx_path):
            return m
    except (UserError, KeyError, TypeError):
        pass
    return None


def _load_model(req: BuildRequest, result: BuildResult):
    import torch

    from .checkpoint import load_checkpoint
    from .manifest import sha256_file
    from .model import build_model, get_config

    if req.checkpoint is not None:
        model = load_checkpoint(req.checkpoint, variant=req.variant, num_classes=req.num_classes, verbose=not req.quiet)
        return model, sha256_file(req.checkpoint)
    try:
        get_config(req.variant)
    except KeyError as exc:
        raise UserError(str(exc.args[0])) from None
    _note(req, result, f"no --ckpt, exporting LRFormer-{req.variant} with RANDOM weights (seed 0)")
    torch.manual_seed(0)  # the same weights every time: a benchmark's PyTorch row rebuilds them
    return build_model(req.variant, req.num_classes or 150), None


def _resolve_dataset(name: str | None, num_classes: int):
    from .datasets import dataset_for_num_classes, get_dataset

    if name is None:
        return dataset_for_num_classes(num_classes)
    try:
        preset = get_dataset(name)
    except KeyError as exc:
        raise UserError(str(exc.args[0])) from None
    if preset.num_classes != num_classes:
        raise UserError(f"dataset {preset.name} has {preset.num_classes} classes but the model has {num_classes}")
    return preset


# ---------------------------------------------------------------------------------------------- steps
def _fp32(req: BuildRequest, result: BuildResult, steps: _Steps) -> Artifact:
    from . import manifest as mf
    from .export_onnx import default_name, export_onnx

    out_dir = _output_dir(req)
    early = _reusable_before_loading(req, out_dir)
    if early is not None:
        with steps.step("reused FP32 graph"):
            return early
    model, ckpt_sha = _load_model(req, result)
    variant = model.cfg.name
    preset = req.preset or {}
    dataset = _resolve_dataset(req.dataset or preset.get("dataset"), model.num_classes)
    size = req.size or tuple(preset.get("size", {}).get(variant, ())) or None
    if size is None:
        side = 640 if variant in ("L", "XL") else (dataset.short_side if dataset else 512)
        size = (side, side)
    size = (int(size[0]), int(size[1]))
    head = req.head or preset.get("head", "mask")
    check_export_size(size, req.batch)
    check_memory(size, req.batch, head, model.num_classes)
    name = req.name or default_name(variant, dataset.name if dataset else None, size,
                                    f"dyn{req.export_options['max_batch']}" if req.export_options.get("max_batch")
                                    else req.batch)
    onnx_path = out_dir / f"{name}.onnx"

    if req.reuse:
        m = _manifest_if_consistent(onnx_path)
        if m is not None and _same_fp32(m, req, size, head, model.num_classes, ckpt_sha, variant):
            with steps.step("reused FP32 graph"):
                return Artifact("fp32", onnx_path, mf.manifest_path_for(onnx_path), m, reused=True)

    # TensorRT resizes the last dims, so its graphs keep the NCHW mask tail; ONNX Runtime on a CPU runs the
    # NHWC tail faster (samples/bench_mask_tail.py).
    kwargs = {"mask_tail": "nchw" if req.target == "tensorrt" else "nhwc", **req.export_options}
    t0 = time.perf_counter()
    with steps.step("FP32 export + check"), _staging(out_dir, name) as stage:
        res = export_onnx(model, stage, name, size=size, batch=req.batch, opset=req.opset, head=head,
                          dataset=dataset, variant=variant, checkpoint_sha256=ckpt_sha, quiet=req.quiet, **kwargs)
        manifest = res.manifest
        manifest["target"] = req.target
        if manifest["opset"] != req.opset:
            _note(req, result, f"the exporter wrote opset {manifest['opset']} (asked for {req.opset}); "
                               "the manifest records what the graph holds")
        manifest["artifacts"]["onnx"] = mf.artifact_record(res.onnx_path, stage)
        mf.publish([(res.onnx_path, onnx_path)], manifest, mf.manifest_path_for(onnx_path))
    return Artifact("fp32", onnx_path, mf.manifest_path_for(onnx_path), manifest,
                    seconds=time.perf_counter() - t0)


def _reusable_before_loading(req: BuildRequest, out_dir: Path) -> Artifact | None:
    """With a fixed name and size, an earlier export is recognised from its manifest alone (no model load)."""
    from . import manifest as mf
    from .manifest import sha256_file

    if not (req.reuse and req.name and req.size):
        return None
    onnx_path = out_dir / f"{req.name}.onnx"
    m = _manifest_if_consistent(onnx_path)
    if m is None:
        return None
    model = m.get("model", {})
    if req.checkpoint is not None:
        same_weights = model.get("checkpoint_sha256") == sha256_file(req.checkpoint)
        num_classes = req.num_classes or model.get("num_classes")
        variant = req.variant or model.get("variant")
    else:  # random weights are seeded: same variant and classes = same weights
        same_weights = model.get("checkpoint_sha256") is None
        num_classes, variant = req.num_classes or 150, req.variant
    head = req.head or (req.preset or {}).get("head", "mask")
    if not (same_weights and str(variant).lower() == str(model.get("variant")).lower()
            and _same_fp32(m, req, req.size, head, num_classes, model.get("checkpoint_sha256"), model.get("variant"))):
        return None
    return Artifact("fp32", onnx_path, mf.manifest_path_for(onnx_path), m, reused=True)


def _same_fp32(m: dict, req: BuildRequest, size, head: str, num_classes: int, ckpt_sha: str | None,
               variant: str) -> bool:
    return (m.get("model", {}).get("checkpoint_sha256") == ckpt_sha
            and m.get("model", {}).get("variant") == variant
            and m.get("model", {}).get("num_classes") == num_classes
            and m.get("input", {}).get("shape") == [req.batch, 3, size[0], size[1]]
            and m.get("output", {}).get("kind") == head
            and m.get("opset") == req.opset
            and m.get("target", "tensorrt") == req.target)


def _existing(req: BuildRequest) -> Artifact:
    """An FP32 graph the caller already has (e.g. lrformer-bench --model X.onnx)."""
    from . import manifest as mf

    path = Path(req.graph)
    check_graph_readable(path)
    man = mf.manifest_path_for(path)
    m = mf.load_manifest(man) if man.is_file() else None
    return Artifact("fp32", path, man if m is not None else None, m, reused=True)


def check_graph_readable(path: Path) -> None:
    """A corrupt or truncated .onnx is one UserError, not a protobuf traceback."""
    try:
        import onnx

        onnx.load(str(path), load_external_data=False)
    except ImportError:
        return
    except Exception as exc:  # protobuf DecodeError, truncated file, ...
        raise UserError(f"{path} is not a readable ONNX graph ({exc.__class__.__name__})") from None


def precision_manifest(fp32_manifest: dict, onnx_name: str, staged_onnx: Path, precision: str,
                       details: dict, out_dir: Path) -> dict:
    from . import manifest as mf

    m = json.loads(json.dumps(fp32_manifest))
    m["name"] = Path(onnx_name).stem
    m["precision"] = precision
    m["artifacts"] = {"onnx": mf.artifact_record(staged_onnx, staged_onnx.parent),
                      "fp32_reference": fp32_manifest["artifacts"]["onnx"]}
    cache = details.get("conversion", {}).get("calibration", {}).get("cache_file")
    if cache and (out_dir / cache).is_file():
        m["artifacts"]["calibration_cache"] = mf.artifact_record(out_dir / cache, out_dir)
    m["precision_details"] = details
    m.pop("verification", None)
    m.pop("engine", None)
    m["created"] = mf.now_iso()
    return m


def _reduced(req: BuildRequest, result: BuildResult, fp32: Artifact, precision: str, steps: _Steps) -> Artifact:
    from . import manifest as mf
    from .precision.calibration import DEFAULT_MEAN, DEFAULT_STD
    from .precision.pipeline import make_precision_graph, output_path

    final = output_path(fp32.onnx, precision)
    out_dir = final.parent
    inp = (fp32.manifest or {}).get("input", {})
    mean, std = inp.get("mean", DEFAULT_MEAN), inp.get("std", DEFAULT_STD)
    if req.reuse and req.calib is None and fp32.manifest is not None:
        # Only graphs calibrated on synthetic scenes are reused: a --calib folder may have changed.
        m = _manifest_if_consistent(final)
        if (m is not None and m.get("artifacts", {}).get("fp32_reference", {}).get("sha256")
                == fp32.manifest["artifacts"]["onnx"]["sha256"] and m.get("target", "tensorrt") == req.target):
            with steps.step(f"reused {precision.upper()} graph"):
                return Artifact(precision, final, mf.manifest_path_for(final), m, reused=True)

    min_agreement = req.min_agreement
    if min_agreement is None and fp32.manifest is not None and not fp32.manifest["model"].get("checkpoint_sha256"):
        if "random weights" not in " ".join(result.notes):
            _note(req, result, "random weights: reduced-precision agreement is reported, not enforced")
        min_agreement = 0.0
    t0 = time.perf_counter()
    with steps.step(f"{precision.upper()} graph + accuracy check"), _staging(out_dir, final.stem) as stage:
        calib = req.calib
        if calib is None and precision == "int8":  # synthetic_calibration (checked by validate)
            calib = write_synthetic_calibration(out_dir / "calib-synthetic", req.calib_count, _graph_size(fp32))
        staged = stage / final.name  # the final name: the calibration cache and records are named from it
        details = make_precision_graph(fp32.onnx, precision, calib=calib, calib_count=req.calib_count,
                                       calib_method=req.calib_method, check_count=req.check_count,
                                       out_onnx=staged, cache_dir=out_dir, mean=mean, std=std,
                                       min_agreement=min_agreement, target=req.target, quiet=req.quiet)
        details["onnx"] = final.name
        details.setdefault("target", req.target)
        m = None
        if fp32.manifest is not None:
            m = precision_manifest(fp32.manifest, final.name, staged, precision, details, out_dir)
            m["target"] = req.target
            mf.publish([(staged, final)], m, mf.manifest_path_for(final))
        else:  # a bare graph without manifest: nothing to describe it with, the graph alone is committed
            mf.publish([(staged, final)])
    return Artifact(precision, final, mf.manifest_path_for(final) if m else None, m,
                    seconds=time.perf_counter() - t0, details=details)


def _graph_size(art: Artifact) -> tuple[int, int]:
    import onnx

    proto = onnx.load(str(art.onnx), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    dims = [d.dim_value for d in next(i for i in proto.graph.input if i.name not in inits).type.tensor_type.shape.dim]
    return dims[2], dims[3]


def write_synthetic_calibration(folder: Path, count: int, size: tuple[int, int], seed: int = 5000) -> Path:
    """A folder of synthetic PNG scenes for INT8 calibration when a benchmark gives no --calib."""
    import cv2

    from . import atomic
    from .synthetic import generate_scene

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"scene-{i:03d}.png"
        if not path.is_file():
            with atomic.atomic_output(path) as tmp:
                cv2.imwrite(str(tmp), generate_scene(seed + i, (max(size[0], 32), max(size[1], 32)))[0])
    return folder


def _engine(req: BuildRequest, art: Artifact, steps: _Steps) -> None:
    """Build the strongly typed engine for one graph and record it in that graph's manifest."""
    from . import manifest as mf
    from .engine_build import EngineUnavailable, build_engine

    engine_final = art.onnx.with_suffix(".engine")
    folder = art.onnx.parent
    with steps.step(f"TensorRT engine ({art.precision})"), _staging(folder, engine_final.stem) as stage:
        staged = stage / engine_final.name
        # engine_build keys its timing cache by TensorRT version and compute capability; earlier caches are
        # copied into the stage so the build reuses the matching one, and written back only on success.
        for cache in folder.glob(f"{engine_final.stem}.trt*.timing-cache"):
            shutil.copyfile(cache, stage / cache.name)
        try:
            record = build_engine(art.onnx, staged, workspace_gib=req.workspace_gib, **req.engine_options)
        except EngineUnavailable as exc:
            if req.engine == "require":
                raise UserError(f"--engine was demanded but cannot be built: {exc.reason}") from None
            art.engine_skipped = exc.reason
            return
        record["file"] = engine_final.name
        files = [(staged, engine_final)]
        if record.get("timing_cache") and (stage / record["timing_cache"]).is_file():
            files.append((stage / record["timing_cache"], folder / record["timing_cache"]))
        if art.manifest is not None:
            art.manifest["artifacts"]["engine"] = record
            mf.publish(files, art.manifest, art.manifest_path)
        else:
            mf.publish(files)
    art.engine, art.engine_record = engine_final, record


# ---------------------------------------------------------------------------------------------- entry point
def build(req: BuildRequest) -> BuildResult:
    """Validate `req`, then make every artifact it asks for; see the module docstring for the guarantees.

    Engines: one per reduced graph made (else for the FP32 graph), unless `engine="off"`; with "auto" a
    missing TensorRT/GPU only records `engine_skipped`, with "require" it is a UserError.
    """
    validate(req)
    t0 = time.perf_counter()
    result = BuildResult()
    precisions = [p for p in PRECISIONS if p in req.precisions]
    n_engines = 0 if req.engine == "off" else max(1, len(precisions))
    steps = _Steps(1 + len(precisions) + n_engines, req.quiet)
    try:
        fp32 = _existing(req) if req.graph is not None else _fp32(req, result, steps)
        if req.graph is not None:
            steps.bar.update(1)
        result.artifacts["fp32"] = fp32
        for precision in precisions:
            result.artifacts[precision] = _reduced(req, result, fp32, precision, steps)
        if req.engine != "off":
            for art in [result.artifacts[p] for p in precisions] or [fp32]:
                _engine(req, art, steps)
    finally:
        steps.close()
    result.seconds = time.perf_counter() - t0
    return result
