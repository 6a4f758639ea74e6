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
builder.build_serialized_network. No BuilderFlag precision flags anywhere.

Without TensorRT or a GPU, build_engine raises EngineUnavailable(reason): the export CLI prints
"engine step skipped: <reason>" and carries on. This module never imports torch.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Sequence

from .errors import UserError
from .manifest import sha256_file


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


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path | None = None,
    workspace_gib: float = 4.0,
    *,
    timing_cache: str | Path | None = None,
    batch_range: Sequence[int] | None = None,
    optimization_level: int | None = None,
    verbose: bool = False,
) -> dict:
    """Build a strongly typed TensorRT engine from `onnx_path`; return the manifest's engine record.

    engine_path: default NAME.engine beside the ONNX. timing_cache: default NAME.timing-cache beside
    the engine; loaded when present and written back after the build. batch_range: (min, opt, max)
    batch for an optimization profile, used only when the graph's batch dim is dynamic (default 1,1,1).
    Raises EngineUnavailable when TensorRT or a GPU is missing, EngineBuildError when the build fails.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise UserError(f"ONNX file {onnx_path} does not exist.")
    engine_path = Path(engine_path) if engine_path is not None else onnx_path.with_suffix(".engine")
    cache_path = Path(timing_cache) if timing_cache is not None else engine_path.with_suffix(".timing-cache")
    if workspace_gib <= 0:
        raise UserError(f"workspace must be positive, got {workspace_gib} GiB.")

    trt = _import_tensorrt()
    gpu = gpu_info()
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

    previous = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(previous)
    config.set_timing_cache(cache, ignore_mismatch=False)

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
    engine_path.write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))

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
        "built_from": onnx_path.name,
        "build_options": {
            "strongly_typed": True,
            "network_flags": _network_flags(trt),
            "workspace_gib": workspace_gib,
            "timing_cache": cache_path.name,
            "timing_cache_reused": bool(previous),
            "optimization_profile": None if profile is None else list(batch_range or (1, 1, 1)),
            "builder_optimization_level": optimization_level,
        },
        "inputs": inputs,
        "outputs": outputs,
        "build_seconds": round(seconds, 2),
        "note": "engines are tied to this TensorRT version and GPU model",
    }
