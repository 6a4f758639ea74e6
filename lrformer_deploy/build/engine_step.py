"""The engine step: build a strongly typed TensorRT engine from one graph, verify it against ONNX Runtime's
FP32 graph on held-back frames, and publish it (with its record in the graph's manifest) only if it passes.

Written to the TensorRT 10/11 API and not run on a GPU here: the tests drive it with recording fakes for
order and records only (tests/test_engine_publish.py).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

from lrformer_deploy.build.request import BuildRequest
from lrformer_deploy.build.steps import Artifact, Steps, staging
from lrformer_deploy.errors import UserError


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


def stale_engine(req: BuildRequest, art: Artifact, why: str) -> None:
    """A NAME.engine from an earlier build beside a manifest that no longer records it: kept (nothing
    written is lost) but named, and the runtime refuses to load it (runtime/spec.py)."""
    old = art.onnx.with_suffix(".engine")
    recorded = ((art.manifest or {}).get("artifacts") or {}).get("engine")
    if old.is_file() and not recorded and not req.quiet:
        print(f"note: {old.name} is from an earlier build and does not match {art.onnx.name} ({why}); it is "
              "kept, but no longer used: delete it or build the engine again", file=sys.stderr)


def engine_step(req: BuildRequest, art: Artifact, steps: Steps, fp32: Artifact | None = None) -> None:
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
    with steps.step(f"TensorRT engine ({art.precision})"), staging(folder, engine_final.stem) as stage:
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
            stale_engine(req, art, "engine step skipped")
            return
        record["file"] = engine_final.name
        try:
            record["verification"] = verify_engine(req, art, fp32 or art, staged, record)
        except EngineUnavailable as exc:  # built, but cannot be run here: never published unverified
            if req.engine == "require":
                raise UserError(f"the engine was built but cannot be verified: {exc.reason}") from None
            art.engine_skipped = f"built but not verified, so not published: {exc.reason}"
            stale_engine(req, art, "new engine not verified")
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


def threshold(req: BuildRequest, art: Artifact, fp32: Artifact) -> float | None:
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
    from lrformer_deploy.precision.pipeline import graph_file_size, held_back_frames
    from lrformer_deploy.runtime.backends.ort import OnnxRuntimeRunner

    inp = (fp32.manifest or art.manifest or {}).get("input", {})
    mean, std = inp.get("mean", IMAGENET_MEAN), inp.get("std", IMAGENET_STD)
    frames, data = held_back_frames(req.calib, req.calib_count, req.check_count, graph_file_size(fp32.onnx), mean, std)
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
    required = threshold(req, art, fp32)
    report.update({"reference": fp32.onnx.name, "engine": record.get("file"), "frames": int(len(frames)),
                   "data": data, "backend": "tensorrt vs onnxruntime CPUExecutionProvider (FP32 graph)",
                   "min_agreement": required,
                   "passed": required is None or report["mask_agreement"] >= required})
    if not report["passed"]:
        raise EngineVerificationFailed(
            f"{record.get('file')}: mask agreement with the FP32 graph on ONNX Runtime is "
            f"{report['mask_agreement']:.4f}, below the required {required:.4f}; the engine was not published "
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
