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

import json
import time
from pathlib import Path

from lrformer_deploy.build.engine_step import engine_step, stale_engine
from lrformer_deploy.build.request import BuildRequest, check_graph_readable, check_memory, output_dir, validate
from lrformer_deploy.build.steps import Artifact, BuildResult, Steps, note, staging
from lrformer_deploy.contract import CPU_ONLY_PRECISIONS, REDUCED_PRECISIONS, check_export_size
from lrformer_deploy.errors import UserError


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
    note(req, result, f"no --ckpt, exporting LRFormer-{req.variant} with RANDOM weights (seed 0)")
    torch.manual_seed(0)  # the same weights every time: a benchmark's PyTorch row rebuilds them
    return build_model(req.variant, _random_weights_classes(req)), None


def _bf16_runs_here() -> bool:
    from lrformer_deploy import cpus
    from lrformer_deploy.runtime.backends import openvino_missing

    return cpus.bf16_missing() is None and openvino_missing() is None


def _random_weights_classes(req: BuildRequest) -> int:
    """Classes of a random-weights model: --num-classes, else the named dataset's, else ADE20K's 150."""
    from lrformer_deploy.data.datasets import get_dataset

    if req.num_classes:
        return req.num_classes
    name = req.dataset or (req.preset or {}).get("dataset")
    if name:
        try:
            return get_dataset(name).num_classes
        except KeyError:
            pass  # _resolve_dataset reports the unknown name in one line
    return 150


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
def _fp32(req: BuildRequest, result: BuildResult, steps: Steps) -> Artifact:
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
    with steps.step("FP32 export + check"), staging(out_dir, name) as stage:
        res = export_onnx(model, stage, name, size=size, batch=req.batch, opset=req.opset, head=head,
                          dataset=dataset, variant=variant, checkpoint_sha256=ckpt_sha, quiet=req.quiet, **kwargs)
        manifest = res.manifest
        manifest["target"] = req.target
        # --variant without --ckpt: seeded random weights, good for structure and speed only. Say so where
        # every later reader (lrformer-info, the runtime, a reduced graph's manifest) sees it.
        manifest["model"]["random_weights"] = req.checkpoint is None
        if manifest["opset"] != req.opset:
            note(req, result, f"the exporter wrote opset {manifest['opset']} (asked for {req.opset}); "
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
        num_classes, variant = _random_weights_classes(req), req.variant
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


def _min_agreement(req: BuildRequest, result: BuildResult, fp32: Artifact) -> float | None:
    """--min-agreement as given; with random weights (no checkpoint) 0.0: reported, not enforced (said once)."""
    if req.min_agreement is None and fp32.manifest is not None and not fp32.manifest["model"].get("checkpoint_sha256"):
        if "random weights" not in " ".join(result.notes):
            note(req, result, "random weights: reduced-precision agreement is reported, not enforced")
        return 0.0
    return req.min_agreement


def _bf16(req: BuildRequest, result: BuildResult, fp32: Artifact, steps: Steps, int8: Artifact | None = None
          ) -> Artifact:
    """NAME-bf16.json: a manifest naming the FP32 graph with precision bf16 (no second graph), after the same
    held-back accuracy check as FP16/INT8, run the way OpenVINO will run it. With `int8` (--int8 --bf16):
    NAME-int8-bf16.json, naming the INT8 graph, whose float ops OpenVINO then computes in bf16 (checked
    against INT8's threshold, as that is the graph's precision)."""
    from lrformer_deploy import manifest as mf
    from lrformer_deploy.contract import IMAGENET_MEAN, IMAGENET_STD
    from lrformer_deploy.precision.pipeline import make_precision_graph

    if fp32.manifest is None:
        raise UserError(f"{fp32.onnx.name} has no manifest: a bf16 artifact is a manifest naming the FP32 graph, "
                        "so export the graph with lrformer-export first")
    inp = fp32.manifest.get("input", {})
    graph = int8.onnx if int8 is not None else fp32.onnx
    stem = f"{fp32.onnx.stem}-int8-bf16" if int8 is not None else f"{fp32.onnx.stem}-bf16"
    manifest_path = fp32.onnx.with_name(f"{stem}.json")
    # The INT8 graph's rule for random weights; the FP32 graph in bf16 keeps its threshold as before.
    min_agreement = _min_agreement(req, result, fp32) if int8 is not None else req.min_agreement
    t0 = time.perf_counter()
    with steps.step("INT8 + BF16 accuracy check (OpenVINO)" if int8 is not None else "BF16 accuracy check (OpenVINO)"):
        details = make_precision_graph(fp32.onnx, "bf16", calib=req.calib, calib_count=req.calib_count,
                                       check_count=req.check_count, mean=inp.get("mean", IMAGENET_MEAN),
                                       std=inp.get("std", IMAGENET_STD), min_agreement=min_agreement,
                                       target="cpu", quiet=req.quiet, bf16_graph=int8.onnx if int8 else None)
        m = precision_manifest(fp32.manifest, f"{stem}.onnx", graph, "bf16", details, fp32.onnx.parent)
        m["target"] = "cpu"
        mf.publish([], m, manifest_path)
    return Artifact("bf16", graph, manifest_path, m, seconds=time.perf_counter() - t0, details=details)


def _reduced(req: BuildRequest, result: BuildResult, fp32: Artifact, precision: str, steps: Steps) -> Artifact:
    from lrformer_deploy import manifest as mf

    if precision == "bf16":
        return _bf16(req, result, fp32, steps)
    from lrformer_deploy.contract import IMAGENET_MEAN, IMAGENET_STD
    from lrformer_deploy.precision.pipeline import graph_file_size, make_precision_graph, output_path

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

    min_agreement = _min_agreement(req, result, fp32)
    t0 = time.perf_counter()
    with steps.step(f"{precision.upper()} graph + accuracy check"), staging(out_dir, final.stem) as stage:
        calib = req.calib
        if calib is None and precision == "int8":  # synthetic_calibration (checked by validate)
            calib = write_synthetic_calibration(out_dir / "calib-synthetic", req.calib_count, graph_file_size(fp32.onnx))
        staged = stage / final.name  # the final name: the calibration cache and records are named from it
        details = make_precision_graph(fp32.onnx, precision, calib=calib, calib_count=req.calib_count,
                                       calib_method=req.calib_method, check_count=req.check_count,
                                       out_onnx=staged, cache_dir=out_dir, mean=mean, std=std,
                                       min_agreement=min_agreement, target=req.target, quiet=req.quiet)
        details["onnx"] = final.name
        details.setdefault("target", req.target)
        data = details.get("data", {})
        if data.get("check_held_back") is False:
            note(req, result, f"{precision.upper()} accuracy check: {data.get('source')} has no frames left to hold "
                               f"back from the {data.get('calibration_frames')} calibration frames, so the check "
                               "ran on calibration frames (check_held_back: false; give a longer source or a "
                               "smaller --calib-count for an independent check)")
        backend_note = (details.get("cpu_backends") or {}).get("note")
        if backend_note:
            note(req, result, backend_note)
        m = None
        if fp32.manifest is not None:
            m = precision_manifest(fp32.manifest, final.name, staged, precision, details, out_dir)
            m["target"] = req.target
            mf.publish([(staged, final)], m, mf.manifest_path_for(final))
        else:  # a bare graph without manifest: nothing to describe it with, the graph alone is committed
            mf.publish([(staged, final)])
    return Artifact(precision, final, mf.manifest_path_for(final) if m else None, m,
                    seconds=time.perf_counter() - t0, details=details)


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
    # --int8 --bf16 on a CPU: also the INT8 graph with bf16 float ops (NAME-int8-bf16.json)
    int8_bf16 = req.target == "cpu" and "int8" in precisions and "bf16" in precisions
    steps = Steps(1 + len(precisions) + int8_bf16 + n_engines, req.quiet)
    try:
        fp32 = _existing(req) if req.graph is not None else _fp32(req, result, steps)
        if req.graph is not None:
            steps.bar.update(1)
        result.artifacts["fp32"] = fp32
        for precision in precisions:
            result.artifacts[precision] = _reduced(req, result, fp32, precision, steps)
        if int8_bf16:
            result.artifacts["int8-bf16"] = _bf16(req, result, fp32, steps, int8=result.artifacts["int8"])
        elif req.target == "cpu" and "int8" in precisions and _bf16_runs_here():
            note(req, result, "this CPU computes bf16: --int8 --bf16 also writes NAME-int8-bf16.json, the INT8 graph "
                              "with its float ops in bf16 on OpenVINO (2.7x ONNX Runtime FP32 on LRFormer-T, where "
                              "INT8 alone was 1.8x; docs/cpu.md), checked against FP32 as INT8 is")
        for art in [result.artifacts[p] for p in graphs] or [fp32]:
            if req.engine != "off":
                engine_step(req, art, steps, fp32)
            else:
                stale_engine(req, art, "built with the engine step off")
    finally:
        steps.close()
    result.seconds = time.perf_counter() - t0
    return result
