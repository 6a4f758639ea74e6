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
written atomically; the default timing cache is keyed by TensorRT version, GPU name and compute
capability, and a cache TensorRT refuses (made on another device) is replaced, never a failed build.

What the engine runs is recorded: the parsed network must hold no plugin layers (`allow_plugins`
overrides), the engine inspector's JSON layer report (profiling verbosity DETAILED) is written beside
the engine as NAME.layers.json with per-precision layer counts in the record, and the record carries
the equivalent `trtexec` command line. Portable engines: `version_compatible` (BuilderFlag.
VERSION_COMPATIBLE; the runtime then sets engine_host_code_allowed) and `hardware_compatible`
("ampere+" or "same-cc": config.hardware_compatibility_level). A dynamic batch needs a batch_range:
it is never guessed. build/engine_step.py verifies the engine against ONNX Runtime before publishing it.

Without TensorRT or a GPU, build_engine raises EngineUnavailable(reason): the export CLI prints
"engine step skipped: <reason>" and carries on. This module never imports torch.

Why ~490 lines in one module: every call into TensorRT's builder lives here, so tests/test_tensorrt_api.py
checks one place against the 10.x and 11.x bindings; the step around it (verify, publish) is engine_step.py.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

from lrformer_deploy import atomic
from lrformer_deploy.contract import HARDWARE_COMPATIBILITY
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


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in str(text).lower()).strip("-") or "gpu"


def timing_cache_name(engine_path: Path, trt_version: str, compute_capability: str, gpu_name: str = "") -> Path:
    """NAME.trt<version>.<gpu>.sm<cc>.timing-cache: TensorRT rejects a cache made on another device, and
    two GPUs of one compute capability (A100 / A30, H100 PCIe / SXM) are different devices to it, so the
    key holds the GPU's name as well as its compute capability."""
    cc = str(compute_capability).replace(".", "")
    gpu = f".{_slug(gpu_name)}" if gpu_name else ""
    return engine_path.with_name(f"{engine_path.stem}.trt{trt_version}{gpu}.sm{cc}.timing-cache")


def _hardware_level(trt, level: str):
    """The HardwareCompatibilityLevel for `level`; SAME_COMPUTE_CAPABILITY arrived after TensorRT 10.0."""
    levels = trt.HardwareCompatibilityLevel
    if level == "ampere+":
        return levels.AMPERE_PLUS
    same_cc = getattr(levels, "SAME_COMPUTE_CAPABILITY", None)
    if same_cc is None:
        raise UserError(f"TensorRT {trt.__version__} has no same-compute-capability engines; use ampere+ "
                        "or a newer TensorRT")
    return same_cc


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
    version_compatible: bool = False,
    hardware_compatible: str = "none",
    allow_plugins: bool = False,
) -> dict:
    """Build a strongly typed TensorRT engine from `onnx_path`; return the manifest's engine record.

    engine_path: default NAME.engine beside the ONNX. timing_cache: default
    NAME.trt<version>.sm<cc>.timing-cache beside the engine; loaded when present and written back after
    the build. batch_range: (min, opt, max) batch for an optimization profile; required when the
    graph's batch dim is dynamic (a guessed (1, 1, 1) profile would refuse every larger batch), ignored
    otherwise. version_compatible: an engine later TensorRT releases of the same major version can
    run (the runtime must then allow engine host code). hardware_compatible: "ampere+" (any Ampere or
    newer GPU) or "same-cc" (any GPU of this compute capability) instead of this GPU model only.
    allow_plugins: accept a network with plugin layers (refused by default: a plugin must be shipped
    and loaded beside the engine, which nothing here does). tf32: None or False keeps FP32 layers in true FP32
    (see the module doc), True lets TensorRT use TF32 for them. device_id: CUDA device to build on.
    Raises EngineUnavailable when TensorRT or a GPU is missing, EngineBuildError when the build fails.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise UserError(f"ONNX file {onnx_path} does not exist.")
    engine_path = Path(engine_path) if engine_path is not None else onnx_path.with_suffix(".engine")
    if workspace_gib <= 0:
        raise UserError(f"workspace must be positive, got {workspace_gib} GiB.")
    hardware_compatible = str(hardware_compatible or "none").lower()
    if hardware_compatible not in HARDWARE_COMPATIBILITY:
        raise UserError(f"hardware compatibility must be one of {', '.join(HARDWARE_COMPATIBILITY)}, "
                        f"got {hardware_compatible!r}")
    if batch_range is not None:
        lo, opt, hi = (int(v) for v in batch_range)
        if not 1 <= lo <= opt <= hi:
            raise UserError(f"batch range must satisfy 1 <= min <= opt <= max, got {lo}, {opt}, {hi}.")
        batch_range = (lo, opt, hi)

    trt = _import_tensorrt()
    _warn_channels_last_tail(onnx_path)
    gpu, device = build_device(device_id)
    cache_path = (Path(timing_cache) if timing_cache is not None
                  else timing_cache_name(engine_path, trt.__version__, gpu["compute_capability"], gpu["name"]))
    # TensorRT builds on the current CUDA device: make the recorded device the current one.
    device.push()
    try:
        options = {"version_compatible": bool(version_compatible), "hardware_compatible": hardware_compatible,
                   "allow_plugins": bool(allow_plugins)}
        return _build(trt, onnx_path, engine_path, cache_path, gpu, device_id, workspace_gib, batch_range,
                      optimization_level, bool(tf32), verbose, options)
    finally:
        device.pop()


def _build(trt, onnx_path: Path, engine_path: Path, cache_path: Path, gpu: dict, device_id: int,
           workspace_gib: float, batch_range, optimization_level, tf32: bool, verbose: bool,
           options: dict) -> dict:
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
    plugins = plugin_layers(trt, network)
    if plugins and not options["allow_plugins"]:
        raise EngineBuildError(f"{onnx_path.name} parses into {len(plugins)} plugin layer(s) ({', '.join(plugins[:3])}): "
                               "an engine with plugins needs their library at run time; export a graph without "
                               "custom ops")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if optimization_level is not None:
        config.builder_optimization_level = int(optimization_level)
    tf32_used = _set_tf32(trt, config, tf32)
    # The layer report (engine inspector) only names tactics and formats at DETAILED verbosity.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if options["version_compatible"]:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if options["hardware_compatible"] != "none":
        config.hardware_compatibility_level = _hardware_level(trt, options["hardware_compatible"])

    previous = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(previous)
    cache_rejected = False
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        if not previous:
            raise EngineBuildError(f"TensorRT {trt.__version__} cannot create a timing cache")
        # Only a speed-up: a cache from another device is left alone and the build starts from an empty one.
        import sys

        print(f"warning: TensorRT {trt.__version__} rejected the timing cache {cache_path.name} (made on another "
              "device); building without it and replacing it", file=sys.stderr)
        cache_rejected, previous = True, b""
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            raise EngineBuildError(f"TensorRT {trt.__version__} cannot create a timing cache")

    inputs = []
    profile = None
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        inputs.append({"name": tensor.name, "shape": shape, "dtype": str(tensor.dtype)})
        if any(d < 0 for d in shape):
            if any(d < 0 for d in shape[1:]):
                raise EngineBuildError(f"input {tensor.name} has dynamic dims besides the batch: {shape}")
            if batch_range is None:
                raise UserError(f"{onnx_path.name} has a dynamic batch: give the engine's batch range (min, opt, "
                                "max), e.g. from the manifest's input.batch_range")
            lo, opt, hi = batch_range
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
    layers = write_layer_report(trt, serialized, logger, layer_report_name(engine_path))
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
            "timing_cache_rejected": cache_rejected,
            "optimization_profile": None if profile is None else list(batch_range),
            "builder_optimization_level": optimization_level,
            "version_compatible": options["version_compatible"],
            "hardware_compatibility": options["hardware_compatible"],
        },
        # Read by the runtime's compatibility check (runtime/backends/trt.py check_engine_record).
        "version_compatible": options["version_compatible"],
        "hardware_compatibility": options["hardware_compatible"],
        "plugins": plugins,
        "layers": layers,
        "trtexec": trtexec_command(onnx_path, engine_path, workspace_gib, inputs, batch_range, optimization_level,
                                   tf32_used, options, cache_path.name),
        "inputs": inputs,
        "outputs": outputs,
        "build_seconds": round(seconds, 2),
        "note": engine_note(options),
    }


def engine_note(options: dict) -> str:
    version = ("later TensorRT releases of this major version (version-compatible)"
               if options["version_compatible"] else "this TensorRT version")
    gpu = {"none": "this GPU model", "ampere+": "any Ampere or newer GPU (hardware-compatible)",
           "same-cc": "GPUs of this compute capability (hardware-compatible)"}[options["hardware_compatible"]]
    return f"engines are tied to {version} and {gpu}"


def plugin_layers(trt, network) -> list[str]:
    """Names of the parsed network's plugin layers (none expected: LRFormer's graph uses standard ops)."""
    kinds = (trt.LayerType.PLUGIN, trt.LayerType.PLUGIN_V2, trt.LayerType.PLUGIN_V3)
    found = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in kinds:
            found.append(layer.name)
    return found


def layer_report_name(engine_path: Path) -> Path:
    return engine_path.with_name(f"{engine_path.stem}.layers.json")


# Words TensorRT's inspector uses in a tensor's "Format/Datatype" text, per precision.
_FORMAT_WORDS = (("int8", ("int8",)), ("fp8", ("fp8",)), ("fp16", ("fp16", "half")), ("bf16", ("bf16",)),
                 ("fp32", ("fp32", "float")), ("int32", ("int32",)), ("int64", ("int64",)), ("bool", ("bool",)),
                 ("uint8", ("uint8",)))


def layer_precision(entry: dict) -> str:
    """A layer's precision as its first output's format text names it ("unknown" when it names none)."""
    # (names differ from _build's TensorRT objects: tests/tensorrt_names.py tracks variables by name)
    produced = entry.get("Outputs") or []
    text = ""
    if produced and isinstance(produced[0], dict):
        text = str(produced[0].get("Format/Datatype", "")).lower()
    for precision, words in _FORMAT_WORDS:
        if any(w in text for w in words):
            return precision
    return "unknown"


def count_layers(report: dict) -> dict:
    """{"total": n, "by_precision": {precision: n}} from an engine inspector JSON report."""
    entries = [e for e in report.get("Layers", []) if isinstance(e, dict)]
    counts: dict[str, int] = {}
    for e in entries:
        key = layer_precision(e)
        counts[key] = counts.get(key, 0) + 1
    return {"total": len(entries), "by_precision": dict(sorted(counts.items()))}


def parse_layer_report(text: str) -> dict:
    """The inspector's JSON as a {"Layers": [dict, ...]} report (names only when built without DETAILED)."""
    import json

    try:
        report = json.loads(text)
    except ValueError:
        return {"Layers": []}
    if not isinstance(report, dict):
        return {"Layers": []}
    layers = report.get("Layers") or []
    report["Layers"] = [layer if isinstance(layer, dict) else {"Name": str(layer)} for layer in layers]
    return report


def write_layer_report(trt, serialized, logger, path: Path) -> dict:
    """Deserialize the plan, write the engine inspector's JSON layer report to `path`, return its counts.

    What TensorRT actually runs (fused layers, tactics, formats) is only visible here, not in the ONNX.
    """
    import json

    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        raise EngineBuildError("TensorRT cannot deserialize the engine it has just built")
    inspector = engine.create_engine_inspector()
    report = parse_layer_report(str(inspector.get_engine_information(trt.LayerInformationFormat.JSON)))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(report, indent=1) + "\n")
    return {"report": path.name, **count_layers(report)}


def trtexec_command(onnx_path: Path, engine_path: Path, workspace_gib: float, inputs: list, batch_range,
                    optimization_level, tf32_used, options: dict, cache_name: str) -> str:
    """The trtexec command line that builds the same engine (for comparing with NVIDIA's own tool)."""
    import shlex

    args = ["trtexec", f"--onnx={onnx_path.name}", f"--saveEngine={engine_path.name}", "--stronglyTyped",
            f"--memPoolSize=workspace:{int(workspace_gib * 1024)}M", f"--timingCacheFile={cache_name}",
            "--profilingVerbosity=detailed"]
    if tf32_used is False:
        args.append("--noTF32")
    if optimization_level is not None:
        args.append(f"--builderOptimizationLevel={int(optimization_level)}")
    if batch_range is not None:
        for flag, batch in zip(("--minShapes", "--optShapes", "--maxShapes"), batch_range):
            args.append(flag + "=" + ",".join(f"{t['name']}:{'x'.join(str(d) for d in [batch] + list(t['shape'][1:]))}"
                                              for t in inputs if any(int(d) < 0 for d in t["shape"])))
    if options["version_compatible"]:
        args.append("--versionCompatible")
    if options["hardware_compatible"] != "none":
        args.append("--hardwareCompatibilityLevel=" + {"ampere+": "ampere+", "same-cc": "sameComputeCapability"}[
            options["hardware_compatible"]])
    return " ".join(shlex.quote(a) for a in args)
