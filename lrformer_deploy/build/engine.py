"""Compile an ONNX graph into a TensorRT engine, as a strongly typed network.

Precision is NOT chosen here: TensorRT 11 removed BuilderFlag.FP16/INT8 and the calibrator API, and a
strongly typed network runs every layer in the type the ONNX graph gives it. So the FP16 / INT8 graph
written by lrformer_deploy.precision *is* the precision decision; this module only parses and builds.

Written to the documented TensorRT 10.x / 11.x Python API (names checked against NVIDIA's API docs):
trt.Builder(logger).create_network(flags) with 1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED
(a deprecated no-op on TensorRT 11, where strong typing is always on, so it is passed only when the
enum still has it), trt.OnnxParser(network, logger).parse_from_file, config.set_memory_pool_limit(
MemoryPoolType.WORKSPACE, bytes), config.create_timing_cache / set_timing_cache / get_timing_cache().
serialize(), builder.create_optimization_profile + profile.set_shape when the batch dim is dynamic,
builder.build_serialized_network. No FP16/INT8 BuilderFlag anywhere; only TF32 is set or cleared
(`tf32`): TensorRT allows TF32 for FP32 layers by default on Ampere and newer, and TF32 keeps FP16's
10-bit mantissa, i.e. exactly the precision the FP16 pass kept those layers away from. So the default
is off; `tf32=True` (`lrformer-export --tf32`) trades that for speed.

The engine is built on CUDA device `device_id` as CUDA numbers it (CUDA_VISIBLE_DEVICES applies), and
the record names that device, read through the runtime's CUDA memory provider (pycuda or torch.cuda);
nvidia-smi, which numbers GPUs in PCI order, is only a fallback. Return values TensorRT reports
failures with (set_timing_cache, get_timing_cache) are checked. The engine and the timing cache are
written atomically; the default timing cache is keyed by TensorRT version and compute capability.

Without TensorRT or a GPU, build_engine raises EngineUnavailable(reason): the export CLI prints
"engine step skipped: <reason>" and carries on. This module never imports torch.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

from lrformer_deploy import atomic
from lrformer_deploy.errors import UserError
from lrformer_deploy.manifest import sha256_file


class EngineUnavailable(RuntimeError):
    """TensorRT or a usable NVIDIA GPU is missing here; `.reason` is one line for the user."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class EngineBuildError(UserError):
    """TensorRT is present but rejected the graph or returned no engine."""


def gpu_info() -> dict:
    """Name, compute capability and driver of GPU 0 via nvidia-smi (no torch, no CUDA bindings needed).

    Raises EngineUnavailable when no NVIDIA driver/GPU answers.
    """
    smi = shutil.which("nvidia-smi")
    if smi is None:
        raise EngineUnavailable("no NVIDIA GPU found (nvidia-smi is not installed)")
    # Older drivers do not know the compute_cap field: ask again without it before giving up.
    for fields_asked in ("name,compute_cap,driver_version,memory.total", "name,driver_version,memory.total"):
        try:
            out = subprocess.run([smi, f"--query-gpu={fields_asked}", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EngineUnavailable(f"nvidia-smi failed: {exc}") from exc
        lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
        if out.returncode == 0 and lines:
            break
    else:
        msg = (out.stderr or out.stdout).strip().splitlines()
        raise EngineUnavailable(f"no usable NVIDIA GPU ({msg[0] if msg else 'nvidia-smi returned nothing'})")
    values = [f.strip() for f in lines[0].split(",")]
    info = dict(zip(fields_asked.split(","), values))
    return {"name": info.get("name", ""), "compute_capability": info.get("compute_cap", "unknown"),
            "driver": info.get("driver_version", ""), "memory": info.get("memory.total", ""), "count": len(lines)}


def _import_tensorrt():
    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError as exc:
        raise EngineUnavailable(
            "TensorRT is not installed (pip install 'lrformer-deploy[tensorrt]' on a machine with an NVIDIA GPU)"
        ) from exc
    except Exception as exc:  # a wheel without its CUDA libraries fails at import with OSError/RuntimeError
        raise EngineUnavailable(f"TensorRT cannot be loaded: {str(exc).splitlines()[0]}") from exc
    return trt


def _network_flags(trt) -> int:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


class _NoContext:
    """Stands in for a memory provider when neither pycuda nor torch.cuda can reach the GPU."""

    def push(self) -> None:
        pass

    def pop(self) -> None:
        pass


def build_device(device_id: int = 0) -> tuple[dict, Any]:
    """(identity, provider) of the CUDA device TensorRT will build on.

    The identity comes from the runtime's CUDA memory provider (pycuda or torch.cuda), which numbers
    devices as CUDA and TensorRT do; nvidia-smi (PCI order) only fills in the driver version, or
    everything when no provider can reach the GPU (then only device 0 can be chosen).
    """
    from lrformer_deploy.runtime.backends import cuda

    try:
        smi = gpu_info()
    except EngineUnavailable as exc:
        smi, smi_error = None, exc
    try:
        mem = cuda.make_memory(device_id, "auto")
    except UserError as exc:
        if smi is None:
            raise smi_error from None
        if device_id != 0:
            raise EngineUnavailable(f"cannot select CUDA device {device_id}: {exc}") from None
        note = "" if smi["count"] == 1 else "; with several GPUs this may not be the one TensorRT used"
        return ({"name": smi["name"], "compute_capability": smi["compute_capability"], "driver": smi["driver"],
                 "source": f"nvidia-smi GPU 0 (no CUDA API for the build device: {exc}{note})"}, _NoContext())
    name, cc = mem.gpu()
    return ({"name": name, "compute_capability": f"{cc[0]}.{cc[1]}", "driver": smi["driver"] if smi else "",
             "source": f"{mem.kind} device {device_id}"}, mem)


def timing_cache_name(engine_path: Path, trt_version: str, compute_capability: str) -> Path:
    """NAME.trt<version>.sm<cc>.timing-cache: a cache is only valid for one TensorRT version and GPU."""
    cc = str(compute_capability).replace(".", "")
    return engine_path.with_name(f"{engine_path.stem}.trt{trt_version}.sm{cc}.timing-cache")


def _set_tf32(trt, config, tf32: bool) -> bool | None:
    flag = getattr(trt.BuilderFlag, "TF32", None)
    if flag is None:  # a TensorRT without the flag never uses TF32 implicitly
        return None
    (config.set_flag if tf32 else config.clear_flag)(flag)
    return bool(tf32)


def _warn_channels_last_tail(onnx_path: Path) -> None:
    """An NHWC mask tail (made for ONNX Runtime on CPUs) becomes a resize across the class channels in TensorRT."""
    import json
    import sys

    try:
        tail = json.loads(onnx_path.with_suffix(".json").read_text())["output"].get("mask_tail")
    except (OSError, ValueError, KeyError, AttributeError):
        return
    if tail == "nhwc":
        print(f"warning: {onnx_path.name} has the channels-last mask tail made for ONNX Runtime on CPUs; TensorRT "
              "resizes the last dims, so it also interpolates across the classes: export it with the NCHW tail "
              "(lrformer-export for a TensorRT target) for engines", file=sys.stderr)


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path | None = None,
    workspace_gib: float = 4.0,
    *,
    timing_cache: str | Path | None = None,
    batch_range: Sequence[int] | None = None,
    optimization_level: int | None = None,
    tf32: bool | None = None,
    device_id: int = 0,
    verbose: bool = False,
) -> dict:
    """Build a strongly typed TensorRT engine from `onnx_path`; return the manifest's engine record.

    engine_path: default NAME.engine beside the ONNX. timing_cache: default
    NAME.trt<version>.sm<cc>.timing-cache beside the engine; loaded when present and written back after
    the build. batch_range: (min, opt, max) batch for an optimization profile, used only when the
    graph's batch dim is dynamic (default 1,1,1). tf32: None or False keeps FP32 layers in true FP32
    (see the module doc), True lets TensorRT use TF32 for them. device_id: CUDA device to build on.
    Raises EngineUnavailable when TensorRT or a GPU is missing, EngineBuildError when the build fails.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise UserError(f"ONNX file {onnx_path} does not exist.")
    engine_path = Path(engine_path) if engine_path is not None else onnx_path.with_suffix(".engine")
    if workspace_gib <= 0:
        raise UserError(f"workspace must be positive, got {workspace_gib} GiB.")

    trt = _import_tensorrt()
    _warn_channels_last_tail(onnx_path)
    gpu, device = build_device(device_id)
    cache_path = (Path(timing_cache) if timing_cache is not None
                  else timing_cache_name(engine_path, trt.__version__, gpu["compute_capability"]))
    # TensorRT builds on the current CUDA device: make the recorded device the current one.
    device.push()
    try:
        return _build(trt, onnx_path, engine_path, cache_path, gpu, device_id, workspace_gib, batch_range,
                      optimization_level, bool(tf32), verbose)
    finally:
        device.pop()


def _build(trt, onnx_path: Path, engine_path: Path, cache_path: Path, gpu: dict, device_id: int,
           workspace_gib: float, batch_range, optimization_level, tf32: bool, verbose: bool) -> dict:
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # no CUDA device / driver mismatch surfaces here
        raise EngineUnavailable(f"TensorRT cannot create a builder: {str(exc).splitlines()[0]}") from exc
    if builder is None:
        raise EngineUnavailable("TensorRT cannot create a builder (no usable CUDA device)")

    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT cannot parse {onnx_path.name}: {'; '.join(errors[:3]) or 'unknown error'}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if optimization_level is not None:
        config.builder_optimization_level = int(optimization_level)
    tf32_used = _set_tf32(trt, config, tf32)

    previous = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(previous)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise EngineBuildError(f"TensorRT {trt.__version__} rejected the timing cache {cache_path} (made by another "
                               "TensorRT version or GPU?); delete it and build again")

    inputs = []
    profile = None
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        inputs.append({"name": tensor.name, "shape": shape, "dtype": str(tensor.dtype)})
        if any(d < 0 for d in shape):
            if any(d < 0 for d in shape[1:]):
                raise EngineBuildError(f"input {tensor.name} has dynamic dims besides the batch: {shape}")
            lo, opt, hi = tuple(batch_range) if batch_range else (1, 1, 1)
            if not 1 <= lo <= opt <= hi:
                raise UserError(f"batch range must satisfy 1 <= min <= opt <= max, got {lo}, {opt}, {hi}.")
            profile = profile or builder.create_optimization_profile()
            profile.set_shape(tensor.name, [lo] + shape[1:], [opt] + shape[1:], [hi] + shape[1:])
    if profile is not None:
        config.add_optimization_profile(profile)

    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT returned no engine for {onnx_path.name} (see the log above; try a larger --workspace)."
        )
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_open(engine_path, "wb") as f:
        f.write(memoryview(serialized))  # no extra copy of a possibly large plan
    # The engine is done and usable even when no cache comes back; then the record says so.
    final_cache = config.get_timing_cache()
    cache_written = final_cache is not None
    if cache_written:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_open(cache_path, "wb") as f:
            f.write(memoryview(final_cache.serialize()))

    outputs = [{"name": network.get_output(i).name, "dtype": str(network.get_output(i).dtype)}
               for i in range(network.num_outputs)]
    return {
        "file": engine_path.name,
        "sha256": sha256_file(engine_path),
        "bytes": engine_path.stat().st_size,
        "tensorrt": trt.__version__,
        "gpu": gpu["name"],
        "compute_capability": gpu["compute_capability"],
        "driver": gpu["driver"],
        "device_id": device_id,
        "gpu_source": gpu["source"],
        "built_from": onnx_path.name,
        "build_options": {
            "strongly_typed": True,
            "network_flags": _network_flags(trt),
            "workspace_gib": workspace_gib,
            "tf32": tf32_used,
            "timing_cache": cache_path.name if cache_written else None,
            "timing_cache_reused": bool(previous),
            "optimization_profile": None if profile is None else list(batch_range or (1, 1, 1)),
            "builder_optimization_level": optimization_level,
        },
        "inputs": inputs,
        "outputs": outputs,
        "build_seconds": round(seconds, 2),
        "note": "engines are tied to this TensorRT version and GPU model",
    }
