"""The one place artifacts are made: FP32 graph, FP16 / INT8 graphs, TensorRT engines, and their manifests.

    from lrformer_deploy.build import BuildRequest, build
    result = build(BuildRequest(checkpoint="t.pth", precisions=("fp16",), output_dir="engines"))
    result["fp16"].onnx, result["fp16"].manifest_path, result["fp16"].engine

`lrformer-export`, `lrformer-bench`, the demo model's cached export and the Triton export all call `build`.

Order of work, and why:
1. `validate` (build/request.py) checks every argument, input path, output location and optional
   dependency before any model is loaded (a mistake costs a user less than a second, not an export).
2. Each artifact is made in a hidden staging folder inside the output folder (same filesystem, so the
   final rename is atomic), verified there (ONNX Runtime check, accuracy check), and only then moved
   into place by `manifest.publish`: files first, the manifest last as the commit point. A failed or
   interrupted re-export therefore leaves the previous graph and manifest untouched, and a failed
   accuracy check leaves no orphan graph.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from lrformer_deploy.build.request import BuildRequest, check_graph_readable, check_memory, output_dir, validate
from lrformer_deploy.contract import CPU_ONLY_PRECISIONS, REDUCED_PRECISIONS, check_export_size, graph_size
from lrformer_deploy.errors import UserError


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
    """A hidden folder beside the artifacts, removed whatever happens (failure, Ctrl-C, SIGTERM).

    SIGKILL or a power loss cannot run that cleanup, so each staging folder holds an flock-held owner file
    (locks.owned_temporary_folder), and every new one first removes the folders whose owner is gone."""
    from lrformer_deploy.locks import owned_temporary_folder, remove_abandoned_folders

    remove_abandoned_folders(out_dir, prefix=".", suffix=".partial")
    with owned_temporary_folder(out_dir, prefix=f".{stem}.", suffix=".partial") as tmp:
        yield tmp


def _note(req: BuildRequest, result: BuildResult, text: str) -> None:
    result.notes.append(text)
    if not req.quiet:
        print(f"note: {text}", file=sys.stderr)


def _manifest_if_consistent(onnx_path: Path) -> dict | None:
    """The manifest beside `onnx_path` when it vouches for exactly this file, else None."""
    from lrformer_deploy import manifest as mf

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

    from lrformer_deploy.model.checkpoint import load_checkpoint
    from lrformer_deploy.manifest import sha256_file
    from lrformer_deploy.model.lrformer import build_model, get_config

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
    from lrformer_deploy.data.datasets import dataset_for_num_classes, get_dataset

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
    from lrformer_deploy import manifest as mf
    from lrformer_deploy.build.export import default_name, export_onnx

    out_dir = output_dir(req)
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

    # TensorRT resizes the last dims, so its graphs keep the NCHW mask tail; CPU graphs get the top-K tail,
    # which costs ONNX Runtime and OpenVINO a few percent of the model instead of half of it
    # (build/mask_tail.py, samples/bench_mask_tail.py).
    kwargs = {"mask_tail": "nchw" if req.target == "tensorrt" else "topk", **req.export_options}
    t0 = time.perf_counter()
    with steps.step("FP32 export + check"), _staging(out_dir, name) as stage:
        res = export_onnx(model, stage, name, size=size, batch=req.batch, opset=req.opset, head=head,
                          dataset=dataset, variant=variant, checkpoint_sha256=ckpt_sha, quiet=req.quiet, **kwargs)
        manifest = res.manifest
        manifest["target"] = req.target
        # --variant without --ckpt: seeded random weights, good for structure and speed only. Say so where
        # every later reader (lrformer-info, the runtime, a reduced graph's manifest) sees it.
        manifest["model"]["random_weights"] = req.checkpoint is None
        if manifest["opset"] != req.opset:
            _note(req, result, f"the exporter wrote opset {manifest['opset']} (asked for {req.opset}); "
                               "the manifest records what the graph holds")
        manifest["artifacts"]["onnx"] = mf.artifact_record(res.onnx_path, stage)
        mf.publish([(res.onnx_path, onnx_path)], manifest, mf.manifest_path_for(onnx_path))
    return Artifact("fp32", onnx_path, mf.manifest_path_for(onnx_path), manifest,
                    seconds=time.perf_counter() - t0)


def _reusable_before_loading(req: BuildRequest, out_dir: Path) -> Artifact | None:
    """With a fixed name and size, an earlier export is recognised from its manifest alone (no model load)."""
    from lrformer_deploy import manifest as mf
    from lrformer_deploy.manifest import sha256_file

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
    # A float graph is never reused for a uint8 request, nor the reverse (same name, other I/O).
    input_dtype = req.export_options.get("input_dtype", "float32")
    mask_dtype = req.export_options.get("mask_dtype", "int32")
    return (m.get("model", {}).get("checkpoint_sha256") == ckpt_sha
            and m.get("model", {}).get("variant") == variant
            and m.get("model", {}).get("num_classes") == num_classes
            and m.get("input", {}).get("shape") == (
                [req.batch, size[0], size[1], 3] if input_dtype == "uint8" else [req.batch, 3, size[0], size[1]])
            and m.get("input", {}).get("dtype", "float32") == input_dtype
            and m.get("output", {}).get("dtype", "int32") == (mask_dtype if head == "mask" else
                                                              m.get("output", {}).get("dtype"))
            and m.get("output", {}).get("kind") == head
            and m.get("opset") == req.opset
            and m.get("target", "tensorrt") == req.target)


def _existing(req: BuildRequest) -> Artifact:
    """An FP32 graph the caller already has (e.g. lrformer-bench --model X.onnx)."""
    from lrformer_deploy import manifest as mf

    path = Path(req.graph)
    check_graph_readable(path)
    man = mf.manifest_path_for(path)
    m = mf.load_manifest(man) if man.is_file() else None
    return Artifact("fp32", path, man if m is not None else None, m, reused=True)


def graph_opset(onnx_path: Path) -> int | None:
    """The default-domain opset an ONNX file imports (its weights are not read)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def precision_manifest(fp32_manifest: dict, onnx_name: str, staged_onnx: Path, precision: str,
                       details: dict, out_dir: Path) -> dict:
    from lrformer_deploy import manifest as mf

    m = json.loads(json.dumps(fp32_manifest))
    m["name"] = Path(onnx_name).stem
    m["precision"] = precision
    m["artifacts"] = {"onnx": mf.artifact_record(staged_onnx, staged_onnx.parent),
                      "fp32_reference": fp32_manifest["artifacts"]["onnx"]}
    cache = details.get("conversion", {}).get("calibration", {}).get("cache_file")
    if cache and (out_dir / cache).is_file():
        m["artifacts"]["calibration_cache"] = mf.artifact_record(out_dir / cache, out_dir)
    m["precision_details"] = details
    m["opset"] = graph_opset(staged_onnx)  # INT8 raises it (19 for FP16 Q/DQ scales): say what the graph holds
    m.pop("verification", None)
    m.pop("engine", None)
    m["created"] = mf.now_iso()
    return m


def _bf16(req: BuildRequest, fp32: Artifact, steps: _Steps) -> Artifact:
    """NAME-bf16.json: a manifest naming the FP32 graph with precision bf16 (no second graph), after the same
    held-back accuracy check as FP16/INT8, run the way OpenVINO will run it."""
    from lrformer_deploy import manifest as mf
    from lrformer_deploy.contract import IMAGENET_MEAN, IMAGENET_STD
    from lrformer_deploy.precision.pipeline import make_precision_graph

    if fp32.manifest is None:
        raise UserError(f"{fp32.onnx.name} has no manifest: a bf16 artifact is a manifest naming the FP32 graph, "
                        "so export the graph with lrformer-export first")
    inp = fp32.manifest.get("input", {})
    manifest_path = fp32.onnx.with_name(f"{fp32.onnx.stem}-bf16.json")
    t0 = time.perf_counter()
    with steps.step("BF16 accuracy check (OpenVINO)"):
        details = make_precision_graph(fp32.onnx, "bf16", calib=req.calib, calib_count=req.calib_count,
                                       check_count=req.check_count, mean=inp.get("mean", IMAGENET_MEAN),
                                       std=inp.get("std", IMAGENET_STD), min_agreement=req.min_agreement,
                                       target="cpu", quiet=req.quiet)
        m = precision_manifest(fp32.manifest, f"{fp32.onnx.stem}-bf16.onnx", fp32.onnx, "bf16", details,
                               fp32.onnx.parent)
        m["target"] = "cpu"
        mf.publish([], m, manifest_path)
    return Artifact("bf16", fp32.onnx, manifest_path, m, seconds=time.perf_counter() - t0, details=details)


def _reduced(req: BuildRequest, result: BuildResult, fp32: Artifact, precision: str, steps: _Steps) -> Artifact:
    from lrformer_deploy import manifest as mf

    if precision == "bf16":
        return _bf16(req, fp32, steps)
    from lrformer_deploy.contract import IMAGENET_MEAN, IMAGENET_STD
    from lrformer_deploy.precision.pipeline import make_precision_graph, output_path

    final = output_path(fp32.onnx, precision)
    out_dir = final.parent
    inp = (fp32.manifest or {}).get("input", {})
    mean, std = inp.get("mean", IMAGENET_MEAN), inp.get("std", IMAGENET_STD)
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
        data = details.get("data", {})
        if data.get("check_held_back") is False:
            _note(req, result, f"{precision.upper()} accuracy check: {data.get('source')} has no frames left to hold "
                               f"back from the {data.get('calibration_frames')} calibration frames, so the check "
                               "ran on calibration frames (check_held_back: false; give a longer source or a "
                               "smaller --calib-count for an independent check)")
        note = (details.get("cpu_backends") or {}).get("note")
        if note:
            _note(req, result, note)
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

    return graph_size(onnx.load(str(art.onnx), load_external_data=False), art.onnx.name)


def write_synthetic_calibration(folder: Path, count: int, size: tuple[int, int], seed: int = 5000) -> Path:
    """A folder of synthetic PNG scenes for INT8 calibration when a benchmark gives no --calib."""
    import cv2

    from lrformer_deploy import atomic
    from lrformer_deploy.data.synthetic import generate_scene

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"scene-{i:03d}.png"
        if not path.is_file():
            with atomic.atomic_output(path) as tmp:
                cv2.imwrite(str(tmp), generate_scene(seed + i, (max(size[0], 32), max(size[1], 32)))[0])
    return folder


def engine_batch_range(req: BuildRequest, art: Artifact) -> tuple[int, int, int] | None:
    """The optimization profile of a dynamic-batch graph: the caller's, else the manifest's batch range
    (what the runtime chunks by and what Triton's max_batch_size says), so every door into build() gets
    the same engine as lrformer-export."""
    if req.engine_options.get("batch_range"):
        return tuple(int(v) for v in req.engine_options["batch_range"])
    rng = ((art.manifest or {}).get("input") or {}).get("batch_range")
    if rng:
        lo, hi = int(rng[0]), int(rng[-1])
        return (lo, hi, hi)
    return None


def _stale_engine(req: BuildRequest, art: Artifact, why: str) -> None:
    """A NAME.engine from an earlier build beside a manifest that no longer records it: kept (nothing
    written is lost) but named, and the runtime refuses to load it (runtime/spec.py)."""
    old = art.onnx.with_suffix(".engine")
    recorded = ((art.manifest or {}).get("artifacts") or {}).get("engine")
    if old.is_file() and not recorded and not req.quiet:
        print(f"note: {old.name} is from an earlier build and does not match {art.onnx.name} ({why}); it is "
              "kept, but no longer used: delete it or build the engine again", file=sys.stderr)


def _engine(req: BuildRequest, art: Artifact, steps: _Steps, fp32: Artifact | None = None) -> None:
    """Build the strongly typed engine for one graph, verify it against ONNX Runtime's FP32 graph, and only
    then publish it with its record in that graph's manifest."""
    from lrformer_deploy import manifest as mf
    from lrformer_deploy.build.engine import EngineUnavailable, build_engine, layer_report_name

    engine_final = art.onnx.with_suffix(".engine")
    folder = art.onnx.parent
    options = dict(req.engine_options)
    batch_range = engine_batch_range(req, art)
    if batch_range is not None:
        options["batch_range"] = batch_range
    with steps.step(f"TensorRT engine ({art.precision})"), _staging(folder, engine_final.stem) as stage:
        staged = stage / engine_final.name
        # The builder keys its timing cache by TensorRT version and GPU; earlier caches are copied into
        # the stage so the build reuses the matching one, and written back only on success.
        for cache in folder.glob(f"{engine_final.stem}.trt*.timing-cache"):
            shutil.copyfile(cache, stage / cache.name)
        try:
            record = build_engine(art.onnx, staged, workspace_gib=req.workspace_gib, **options)
        except EngineUnavailable as exc:
            if req.engine == "require":
                raise UserError(f"--engine was demanded but cannot be built: {exc.reason}") from None
            art.engine_skipped = exc.reason
            _stale_engine(req, art, "engine step skipped")
            return
        record["file"] = engine_final.name
        try:
            record["verification"] = verify_engine(req, art, fp32 or art, staged, record)
        except EngineUnavailable as exc:  # built, but cannot be run here: never published unverified
            if req.engine == "require":
                raise UserError(f"the engine was built but cannot be verified: {exc.reason}") from None
            art.engine_skipped = f"built but not verified, so not published: {exc.reason}"
            _stale_engine(req, art, "new engine not verified")
            return
        files = [(staged, engine_final)]
        cache_name = (record.get("build_options") or {}).get("timing_cache")
        if cache_name and (stage / cache_name).is_file():
            files.append((stage / cache_name, folder / cache_name))
        report = layer_report_name(staged)
        if report.is_file():
            files.append((report, layer_report_name(engine_final)))
        if art.manifest is not None:
            art.manifest["artifacts"]["engine"] = record
            mf.publish(files, art.manifest, art.manifest_path)
        else:
            mf.publish(files)
    art.engine, art.engine_record = engine_final, record


class EngineVerificationFailed(UserError):
    """The engine's masks disagree with ONNX Runtime's FP32 graph beyond the precision's threshold."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def engine_runner(engine: Path, record: dict, device_id: int):
    """The runner verification uses: the runtime's own TensorRT runner (so what is verified is what runs)."""
    from lrformer_deploy.runtime.backends.trt import TensorRTRunner

    return TensorRTRunner(engine, record, device_id=device_id)


def _threshold(req: BuildRequest, art: Artifact, fp32: Artifact) -> float | None:
    from lrformer_deploy.precision.accuracy import DEFAULT_MIN_AGREEMENT

    if req.min_agreement is not None:
        return req.min_agreement
    model = (fp32.manifest or art.manifest or {}).get("model") or {}
    if (fp32.manifest or art.manifest) is not None and not model.get("checkpoint_sha256"):
        return 0.0  # random weights: near-ties everywhere, agreement is reported, not enforced
    # FP32 and FP16 engines are held to the FP16 graph's threshold, INT8 engines to the INT8 one.
    return DEFAULT_MIN_AGREEMENT["int8" if art.precision == "int8" else "fp16"]


def verify_engine(req: BuildRequest, art: Artifact, fp32: Artifact, engine: Path, record: dict) -> dict:
    """Run the staged engine on held-back frames next to ONNX Runtime's FP32 graph; the report, or
    EngineVerificationFailed below the threshold. EngineUnavailable when the engine cannot run here."""
    from lrformer_deploy.build.engine import EngineUnavailable
    from lrformer_deploy.contract import IMAGENET_MEAN, IMAGENET_STD
    from lrformer_deploy.precision.pipeline import held_back_frames
    from lrformer_deploy.runtime.backends.ort import OnnxRuntimeRunner

    inp = (fp32.manifest or art.manifest or {}).get("input", {})
    mean, std = inp.get("mean", IMAGENET_MEAN), inp.get("std", IMAGENET_STD)
    frames, data = held_back_frames(req.calib, req.calib_count, req.check_count, _graph_size(fp32), mean, std)
    if inp.get("dtype") == "uint8":  # a uint8-input graph: the same frames as the client sends them
        from lrformer_deploy.build.uint8 import frames_as_uint8

        frames = frames_as_uint8(frames, mean, std)
    reference = OnnxRuntimeRunner(fp32.onnx, device="cpu").activate()
    try:
        runner = engine_runner(engine, record, int(req.engine_options.get("device_id", 0))).activate()
    except UserError as exc:
        reference.deactivate()
        raise EngineUnavailable(str(exc)) from None
    try:
        (in_name, in_shape), = reference.io_info()[0][:1]
        static_batch = in_shape[0] if isinstance(in_shape[0], int) and in_shape[0] > 0 else None
        chunk = static_batch or int((record.get("build_options") or {}).get("optimization_profile", [1])[-1])
        ref_out, eng_out = [], []
        for start in range(0, len(frames), chunk):
            batch = frames[start:start + chunk]
            n = len(batch)
            if static_batch and n < static_batch:  # a static engine takes exactly its batch
                batch = np.concatenate([batch, np.repeat(batch[-1:], static_batch - n, axis=0)])
            ref_out.append({k: v[:n] for k, v in reference.infer({in_name: batch}).items()})
            eng_out.append({k: np.asarray(v)[:n] for k, v in runner.infer({in_name: batch}).items()})
    finally:
        runner.deactivate()
        reference.deactivate()
    report = compare_outputs(ref_out, eng_out)
    threshold = _threshold(req, art, fp32)
    report.update({"reference": fp32.onnx.name, "engine": record.get("file"), "frames": int(len(frames)),
                   "data": data, "backend": "tensorrt vs onnxruntime CPUExecutionProvider (FP32 graph)",
                   "min_agreement": threshold,
                   "passed": threshold is None or report["mask_agreement"] >= threshold})
    if not report["passed"]:
        raise EngineVerificationFailed(
            f"{record.get('file')}: mask agreement with the FP32 graph on ONNX Runtime is "
            f"{report['mask_agreement']:.4f}, below the required {threshold:.4f}; the engine was not published "
            "(the previous files are untouched)", report)
    return report


def compare_outputs(ref: list[dict], test: list[dict]) -> dict:
    """Mask agreement (and the logits' relative error when the model outputs logits) over all chunks."""
    name = "mask" if "mask" in ref[0] else next(iter(ref[0]))
    agree, per_frame = [], []
    diff_sq = ref_sq = 0.0
    for r, t in zip(ref, test):
        a, b = np.asarray(t[name]), np.asarray(r[name])
        if a.shape != b.shape:
            raise UserError(f"the engine's {name} has shape {a.shape}, ONNX Runtime's {b.shape}")
        if name == "mask":
            same = a.astype(np.int64) == b.astype(np.int64)
        else:
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            diff_sq += float(np.sum((a64 - b64) ** 2))
            ref_sq += float(np.sum(b64 * b64))
            same = a64.argmax(axis=1) == b64.argmax(axis=1)
        per_frame.extend(float(same[i].mean()) for i in range(len(same)))
        agree.append(same)
    rel = None if name == "mask" else float(f"{(diff_sq / ref_sq) ** 0.5 if ref_sq > 0 else 0.0:.4g}")
    return {"compared": name, "mask_agreement": round(float(np.mean(per_frame)), 6),
            "mask_agreement_min_frame": round(float(min(per_frame)), 6),
            "logits_rel_error": rel,
            "logits_note": None if rel is not None else
            "mask head: the logits are inside the engine; the masks are compared"}


# ---------------------------------------------------------------------------------------------- entry point
def build(req: BuildRequest) -> BuildResult:
    """Validate `req`, then make every artifact it asks for; see the module docstring for the guarantees.

    Engines: one per reduced graph made (else for the FP32 graph), unless `engine="off"`; with "auto" a
    missing TensorRT/GPU only records `engine_skipped`, with "require" it is a UserError.
    """
    validate(req)
    t0 = time.perf_counter()
    result = BuildResult()
    if req.graph is None:
        # Also when everything is reused and no staging folder is made: a killed export's leftovers go now.
        from lrformer_deploy.locks import remove_abandoned_folders

        remove_abandoned_folders(output_dir(req), prefix=".", suffix=".partial")
    precisions = [p for p in REDUCED_PRECISIONS if p in req.precisions]
    graphs = [p for p in precisions if p not in CPU_ONLY_PRECISIONS]  # bf16 has no graph of its own to build
    n_engines = 0 if req.engine == "off" else max(1, len(graphs))
    steps = _Steps(1 + len(precisions) + n_engines, req.quiet)
    try:
        fp32 = _existing(req) if req.graph is not None else _fp32(req, result, steps)
        if req.graph is not None:
            steps.bar.update(1)
        result.artifacts["fp32"] = fp32
        for precision in precisions:
            result.artifacts[precision] = _reduced(req, result, fp32, precision, steps)
        for art in [result.artifacts[p] for p in graphs] or [fp32]:
            if req.engine != "off":
                _engine(req, art, steps, fp32)
            else:
                _stale_engine(req, art, "built with the engine step off")
    finally:
        steps.close()
    result.seconds = time.perf_counter() - t0
    return result
