"""Latency and throughput of LRFormer on each backend and precision, in the spirit of trtexec.

Two modes, both measured on ONE preprocessed synthetic scene (the same array for every backend):

- single: one backend/precision/batch -> median, p95, mean, min latency (ms) and images/s.
- compare: PyTorch eager FP32 on the CPU, ONNX Runtime FP32 / FP16 / INT8 graphs, and on a GPU machine
  PyTorch CUDA and a TensorRT engine. Backends run in interleaved rounds (each round runs every backend
  once, in a rotated order) so that a neighbour's load on a shared machine hits them all alike, and all
  of them use the same number of CPU threads. Speedups are torch_eager_median / backend_median.

Fairness notes that shaped the code:
- PyTorch runs the same work as the graph: with a mask graph it runs MaskHead (upsample + argmax) too.
- ONNX Runtime sessions are opened with ORT_ENABLE_ALL and intra_op_num_threads = --threads (the
  runtime's OnnxRuntimeRunner does both); torch gets torch.set_num_threads(--threads).
- Latency includes the host->device->host copies of every backend (numpy in, numpy/tensor out), like
  a caller sees it; CUDA timings are closed with torch.cuda.synchronize().
Speed is measured, never assumed: on most CPUs ONNX Runtime has no native FP16 kernels, so the FP16 graph
is usually SLOWER than FP32 there; the FP16/INT8 rows pay off on a GPU (TensorRT).
"""
from __future__ import annotations

import contextlib
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .cpus import usable_cpus
from .errors import UserError

FOOTNOTE = ("speedup = torch-eager median / row median (same input, same threads, interleaved rounds). "
            "ONNX Runtime on a CPU has no native FP16 kernels on most processors, so the FP16 graph is "
            "typically slower than FP32 here; INT8 gains depend on the CPU's VNNI/AVX-512 support. "
            "The FP16/INT8 graphs are meant for the GPU (TensorRT), where they pay off.")
BACKENDS = ("auto", "onnxruntime", "torch", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")


def summarize(latencies_ms: Sequence[float], batch: int) -> dict[str, float]:
    """median, p95, mean, min, max (ms) and throughput in images/s (batch / mean latency)."""
    lat = np.asarray(latencies_ms, dtype=np.float64)
    if lat.size == 0:
        raise ValueError("no latencies measured")
    mean = float(lat.mean())
    return {"median_ms": float(np.median(lat)), "p95_ms": float(np.percentile(lat, 95)), "mean_ms": mean,
            "min_ms": float(lat.min()), "max_ms": float(lat.max()), "iterations": int(lat.size),
            "throughput_ips": batch * 1000.0 / mean}


@dataclass
class Target:
    """One row: a callable that runs the model on the shared input and returns its output."""

    name: str
    backend: str
    precision: str
    device: str
    run: Callable[[np.ndarray], Any] | None = None
    close: Callable[[], None] | None = None
    skipped: str | None = None  # reason, when this row is not measured
    note: str = ""
    latencies_ms: list[float] = field(default_factory=list)
    first_output: Any = None


def measure(targets: list[Target], x: np.ndarray, warmup: int, iterations: int | None,
            duration: float | None) -> None:
    """Warm every target up, then time them in interleaved rounds (rotated order each round).

    With `duration`, rounds continue until duration * len(targets) seconds have passed (so each backend
    gets about `duration` seconds of timed work); otherwise exactly `iterations` rounds.
    """
    live = [t for t in targets if t.skipped is None]
    for t in live:
        t.first_output = t.run(x)  # also the first warm-up call; kept for the agreement column
        for _ in range(max(0, warmup - 1)):
            t.run(x)
    deadline = None if duration is None else time.perf_counter() + duration * len(live)
    rounds = 0
    while True:
        if deadline is None and rounds >= (iterations or 1):
            break
        if deadline is not None and rounds >= 1 and time.perf_counter() >= deadline:
            break
        shift = rounds % len(live)
        for t in live[shift:] + live[:shift]:
            t0 = time.perf_counter_ns()
            t.run(x)
            t.latencies_ms.append((time.perf_counter_ns() - t0) / 1e6)
        rounds += 1


def _as_mask(output: Any) -> np.ndarray:
    """Class ids from a mask output (N x H x W) or from logits (N x C x h x w -> argmax)."""
    if isinstance(output, dict):  # runner outputs: {name: array}, one output per graph here
        output = next(iter(output.values()))
    arr = output.numpy() if hasattr(output, "numpy") else np.asarray(output)
    return arr.argmax(axis=1) if arr.ndim == 4 else arr


def agreement(a: Any, b: Any) -> float | None:
    """Fraction of pixels with the same class id; None when the outputs are not comparable."""
    ma, mb = _as_mask(a), _as_mask(b)
    if ma.shape != mb.shape:
        return None
    return float((ma == mb).mean())


# ---------------------------------------------------------------------------------------------- inputs
def make_input(size: tuple[int, int], batch: int, mean: Sequence[float], std: Sequence[float],
               seed: int = 0) -> np.ndarray:
    """N x 3 x H x W float32: synthetic BGR scenes through the runtime's preprocessing (stretch, RGB)."""
    from .runtime.preprocess import Preprocessor
    from .synthetic import generate_scene

    prep = Preprocessor(tuple(size), tuple(mean), tuple(std), "RGB", "stretch")
    frames = [prep(generate_scene(seed + i, (max(size[0], 32), max(size[1], 32)))[0])[0] for i in range(batch)]
    return np.ascontiguousarray(np.stack(frames).astype(np.float32))


# ---------------------------------------------------------------------------------------------- model
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
            from .model import MaskHead

            model.set_static(False)  # eager = adaptive pooling, as a PyTorch user runs it
            self._torch_model = MaskHead(model).eval() if self.head == "mask" else model.eval()
        return self._torch_model

    def _base_model(self):
        import torch

        from .model import build_model

        if self.checkpoint is not None:
            from .checkpoint import load_checkpoint

            return load_checkpoint(self.checkpoint, verbose=False)
        if self.variant is None or self.num_classes is None:
            return None
        torch.manual_seed(0)  # the same random weights as the graph exported from --variant
        return build_model(self.variant, self.num_classes)


def _import_torch(why: str):
    try:
        import torch
    except ImportError:
        raise UserError(f"{why} needs PyTorch (pip install torch), which is not installed here") from None
    return torch


def export_variant(variant: str, num_classes: int, size: tuple[int, int], batch: int, head: str,
                   work_dir: Path, checkpoint: Path | None = None) -> Path:
    """The FP32 graph of random weights of `variant` (or of a checkpoint) in work_dir, made by
    lrformer_deploy.build (reused while its manifest shows the same inputs)."""
    _import_torch("exporting a model for the benchmark")
    from .build import BuildRequest, build
    from .model import get_config

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
    with contextlib.redirect_stdout(sys.stderr):  # stdout is the report's
        return build(req)["fp32"].onnx


def resolve_source(model: str | None, variant: str | None, num_classes: int, size: tuple[int, int] | None,
                   batch: int | None, head: str, work_dir: Path) -> Source:
    from . import manifest as mf
    from .runtime.spec import IMAGENET_MEAN, IMAGENET_STD, resolve_model, spec_from_manifest

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
        onnx_path = export_variant(variant or "", num_classes, size, batch, head, work_dir, checkpoint=ckpt)
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

        from .build import check_graph_readable

        check_graph_readable(resolved.path)
        proto = onnx.load(str(resolved.path), load_external_data=False)
        inits = {i.name for i in proto.graph.initializer}
        inp = next(i for i in proto.graph.input if i.name not in inits)
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        out_dims = [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
        if len(dims) != 4 or min(dims) <= 0:
            raise UserError(f"{resolved.path.name}: the input must be static N x 3 x H x W, got {dims}")
        g_size, g_batch, g_head = (dims[2], dims[3]), dims[0], "logits" if len(out_dims) == 4 else "mask"
        mean, std, onnx_path, engine_path, record, m = IMAGENET_MEAN, IMAGENET_STD, resolved.path, None, None, {}
    else:
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
        from .build import check_graph_readable

        check_graph_readable(onnx_path)
    src = Source(label=resolved.path.name, size=tuple(g_size), batch=int(g_batch), head=g_head, mean=tuple(mean),
                 std=tuple(std), work_dir=work_dir, onnx_path=onnx_path,
                 engine_path=engine_path, engine_record=record,
                 variant=m.get("variant"), num_classes=m.get("num_classes"), missing_graph=missing)
    if src.variant is not None:
        src.torch_note = "random weights, same architecture (speed does not depend on the weights)"
    return src


# ---------------------------------------------------------------------------------------------- targets
def torch_target(src: Source, device: str, threads: int, name: str | None = None) -> Target:
    """PyTorch eager FP32 on cpu or cuda (synchronised), or a skipped row saying why."""
    dev = "cuda" if device.startswith("cuda") else "cpu"
    tgt = Target(name or f"torch-{'eager' if dev == 'cpu' else 'cuda'}", "torch", "fp32", dev, note=src.torch_note)
    try:
        import torch
    except ImportError:
        tgt.skipped = "PyTorch is not installed"
        return tgt
    if dev == "cuda" and not torch.cuda.is_available():
        tgt.skipped = "torch sees no CUDA GPU"
        return tgt
    module = src.torch_module()
    if module is None:
        tgt.skipped = "no PyTorch model (the manifest names no variant; pass a .pth or --variant)"
        return tgt
    torch.set_num_threads(threads)
    if dev == "cuda":
        import copy

        module = copy.deepcopy(module)  # the CPU row keeps its own copy: .to() moves a module in place
    module = module.to(dev)

    def run(x: np.ndarray):
        with torch.inference_mode():
            out = module(torch.from_numpy(x).to(dev))
            if dev == "cuda":
                out = out.cpu()
                torch.cuda.synchronize()
        return out

    tgt.run = run
    tgt.close = lambda: None
    return tgt


def ort_target(onnx_path: Path, precision: str, device: str, threads: int, note: str = "",
               spin: bool = True) -> Target:
    """ONNX Runtime through the runtime's own runner (what lrformer-infer runs); spin=False lets its
    idle intra-op threads sleep instead of spin-waiting."""
    from .runtime.backends.ort import OnnxRuntimeRunner

    dev = "cuda" if device.startswith("cuda") else "cpu"
    tgt = Target(f"ort-{precision}", "onnxruntime", precision, dev, note=note)
    runner = OnnxRuntimeRunner(onnx_path, device=dev, intra_op_threads=threads, spin_wait=spin).activate()
    (in_name, _), = runner.io_info()[0][:1]
    tgt.run = lambda x: runner.infer({in_name: x})
    tgt.close = runner.deactivate
    return tgt


def apply_passive_wait() -> str:
    """Ask OpenMP (torch's thread pool) to sleep when idle instead of spin-waiting; a note on the effect.

    On a machine whose cores are busy with other work, spin-waiting threads at every parallel barrier
    wait for a descheduled sibling and multi-threaded PyTorch can get several times slower. The variable
    is read when the OpenMP runtime loads, i.e. at `import torch`.
    """
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if "torch" in sys.modules:
        return "OMP_WAIT_POLICY=PASSIVE set too late (torch already imported); export it before starting"
    return "OMP_WAIT_POLICY=PASSIVE (torch) and allow_spinning=0 (ONNX Runtime)"


def tensorrt_target(engine_path: Path, record: dict | None, precision: str, note: str = "") -> Target:
    from .runtime.backends.trt import TensorRTRunner

    runner = TensorRTRunner(engine_path, record).activate()
    (in_name, _), = runner.io_info()[0][:1]
    tgt = Target(f"tensorrt-{precision}", "tensorrt", precision, "cuda", note=note)
    tgt.run = lambda x: runner.infer({in_name: x})
    tgt.close = runner.deactivate
    return tgt


def precision_graph(src: Source, precision: str, calib: str | None, calib_count: int,
                    engine: str = "off") -> tuple[Path, str, Any]:
    """The FP16/INT8 graph beside the FP32 one, made (or reused) by lrformer_deploy.build; with engine
    "auto"/"require" also its TensorRT engine. Returns (graph, note, the build's Artifact)."""
    from .build import BuildRequest, build

    assert src.onnx_path is not None
    # The benchmark measures speed: a low agreement (random weights) is reported, not refused; without
    # --calib, INT8 calibrates on synthetic scenes.
    req = BuildRequest(graph=src.onnx_path, precisions=(precision,), calib=calib, calib_count=calib_count,
                       check_count=2, min_agreement=0.0, synthetic_calibration=True, engine=engine, quiet=True,
                       reuse=True, output_dir=src.onnx_path.parent)
    print(f"{precision.upper()} graph ({calib_count} calibration frames)...", file=sys.stderr)
    # ONNX Runtime's calibrator prints progress to stdout: keep stdout for the table / JSON.
    with contextlib.redirect_stdout(sys.stderr):
        art = build(req)[precision]
    if art.reused:
        return art.onnx, "graph reused from an earlier run (synthetic calibration)", art
    acc = (art.details or {}).get("accuracy") or {}
    agree = acc.get("mask_agreement", acc.get("agreement"))
    where = "synthetic scenes" if calib is None else "--calib"
    return art.onnx, (f"calibrated on {where}" + (f", mask agreement vs FP32 {agree:.4f}"
                                                   if isinstance(agree, float) else "")), art


def _gpu_reason() -> str | None:
    """None when a CUDA GPU is usable from torch, else why not."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    return None if torch.cuda.is_available() else "no CUDA GPU (torch.cuda.is_available() is False)"


def _tensorrt_reason() -> str | None:
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed"
    return _gpu_reason()


def compare_targets(src: Source, threads: int, calib: str | None, calib_count: int,
                    engine: Path | None, spin: bool = True) -> list[Target]:
    if src.onnx_path is None:
        raise UserError(src.no_graph() + "; --compare needs the graph (pass an .onnx/.json with its graph, "
                        "a .pth or --variant)")
    targets = [torch_target(src, "cpu", threads, name="torch-eager")]
    targets.append(ort_target(src.onnx_path, "fp32", "cpu", threads, spin=spin))
    for precision in ("fp16", "int8"):
        path, note, _ = precision_graph(src, precision, calib, calib_count)
        targets.append(ort_target(path, precision, "cpu", threads, note=note, spin=spin))

    gpu_reason = _gpu_reason()
    if gpu_reason is None:
        targets.append(torch_target(src, "cuda", threads, name="torch-cuda"))
    else:
        targets.append(Target("torch-cuda", "torch", "fp32", "cuda", skipped=gpu_reason))
    trt_reason = _tensorrt_reason()
    engine = engine or (src.engine_path if src.engine_path and src.engine_path.is_file() else None)
    if trt_reason is not None:
        targets.append(Target("tensorrt", "tensorrt", "fp16" if engine is None else "engine", "cuda",
                              skipped=trt_reason))
    elif engine is not None:
        targets.append(tensorrt_target(engine, src.engine_record if engine == src.engine_path else None,
                                       "engine", note=engine.name))
    else:
        targets.append(_built_engine_target(src, "fp16", calib, calib_count))
    return targets


def _built_engine_target(src: Source, precision: str, calib: str | None, calib_count: int) -> Target:
    """A strongly typed engine built by lrformer_deploy.build from the FP16/INT8 graph (or the FP32 one)."""
    if precision == "fp32":
        from .build import BuildRequest, build

        print(f"building a TensorRT engine from {src.onnx_path.name}...", file=sys.stderr)
        art = build(BuildRequest(graph=src.onnx_path, engine="auto", quiet=True,
                                 output_dir=src.onnx_path.parent))["fp32"]
    else:
        _, _, art = precision_graph(src, precision, calib, calib_count, engine="auto")
    if art.engine is None:
        return Target(f"tensorrt-{precision}", "tensorrt", precision, "cuda", skipped=art.engine_skipped)
    return tensorrt_target(art.engine, art.engine_record, precision, note=f"built from {art.onnx.name}")


def single_target(src: Source, backend: str, device: str, precision: str, threads: int,
                  calib: str | None, calib_count: int, engine: Path | None, spin: bool = True) -> Target:
    engine = engine or (src.engine_path if src.engine_path and src.engine_path.is_file() else None)
    if backend == "auto":
        # Never a stand-in: without an engine or a graph there is nothing of this model to measure.
        if engine is not None and _tensorrt_reason() is None:
            backend = "tensorrt"
        elif src.onnx_path is not None:
            backend = "onnxruntime"
        else:
            raise UserError(src.no_graph())
    if backend == "torch":
        if precision != "fp32":
            raise UserError("--backend torch measures FP32 only; use onnxruntime or tensorrt for fp16/int8")
        tgt = torch_target(src, device, threads)
        if tgt.skipped:
            raise UserError(f"cannot run the torch backend: {tgt.skipped}")
        return tgt
    if backend == "tensorrt":
        reason = _tensorrt_reason()
        if reason is not None:
            raise UserError(f"cannot run the tensorrt backend here: {reason}")
        if engine is not None:
            return tensorrt_target(engine, src.engine_record if engine == src.engine_path else None, "engine",
                                   note=engine.name)
        if src.onnx_path is None:
            raise UserError(src.no_graph() + "; no TensorRT engine either")
        tgt = _built_engine_target(src, precision, calib, calib_count)
        if tgt.skipped:
            raise UserError(f"cannot run the tensorrt backend: {tgt.skipped}")
        return tgt
    # onnxruntime
    if src.onnx_path is None:
        raise UserError(src.no_graph())
    path, note = ((src.onnx_path, "") if precision == "fp32"
                  else precision_graph(src, precision, calib, calib_count)[:2])
    return ort_target(path, precision, device, threads, note=note, spin=spin)


# ---------------------------------------------------------------------------------------------- run
def _cpu_snapshot() -> tuple[float, float] | None:
    """(CPU-seconds busy on the whole machine, CPU-seconds used by this process); None off Linux."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait (guest is inside user)
    own = os.times()
    return busy / hz, own.user + own.system


def _other_cores(before, after, wall: float) -> float | None:
    """Average cores other processes kept busy during the timing (a shared machine's noise)."""
    if before is None or after is None or wall <= 0:
        return None
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / wall)


def _tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for mod in ("numpy", "onnxruntime", "torch"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return versions


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_benchmark(*, model: str | None = None, variant: str | None = None, num_classes: int = 150,
                  size: tuple[int, int] | None = None, batch: int | None = None, head: str = "mask",
                  backend: str = "auto", device: str = "auto", precision: str = "fp32", compare: bool = False,
                  warmup: int = 5, iterations: int = 20, duration: float | None = None,
                  threads: int | None = None, calib: str | None = None, calib_count: int = 8,
                  engine: str | None = None, work_dir: str | None = None, seed: int = 0,
                  spin_wait: bool = True) -> dict:
    """Measure and return the report dict (what --json prints). See the module docstring."""
    if backend not in BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if head not in ("mask", "logits"):
        raise UserError(f"--head must be mask or logits, got {head!r}")
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"--device must be cpu, cuda or auto, got {device!r}")
    if warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {warmup}")
    if duration is None and iterations < 1:
        raise UserError(f"--iterations must be at least 1, got {iterations}")
    if duration is not None and duration <= 0:
        raise UserError(f"--duration must be positive, got {duration}")
    if batch is not None and batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")
    if num_classes < 1:
        raise UserError(f"--num-classes must be at least 1, got {num_classes}")
    if calib_count < 1:
        raise UserError(f"--calib-count must be at least 1, got {calib_count}")
    if compare and (backend != "auto" or precision != "fp32"):
        raise UserError("--compare measures every backend and precision itself; drop --backend/--precision")
    from .build import check_calibration_source, check_export_size, check_memory, check_output_dir, tensorrt_missing

    if calib is not None:
        check_calibration_source(calib)
    if size is not None:
        check_export_size(size, batch or 1)
        check_memory(size, batch or 1, head, num_classes if model is None else None)
    if backend == "tensorrt" and tensorrt_missing():
        raise UserError(f"cannot run the tensorrt backend here: {tensorrt_missing()}")
    if work_dir is not None:
        check_output_dir(work_dir, "--work-dir")
    engine_path = Path(engine) if engine else None
    if engine_path is not None and not engine_path.is_file():
        raise UserError(f"engine file not found: {engine_path}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    threads = threads or usable_cpus()
    wait_note = "library defaults (idle threads spin-wait)" if spin_wait else apply_passive_wait()

    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="lrformer-bench-")
        work = Path(tmp.name)
    else:
        work = Path(work_dir)
    targets: list[Target] = []
    try:
        src = resolve_source(model, variant, num_classes, size, batch, head, work)
        if device == "auto":  # after the model is resolved: a bad --model is reported without importing torch
            device = "cuda" if (not compare and _gpu_reason() is None) else "cpu"
        x = make_input(src.size, src.batch, src.mean, src.std, seed)
        if compare:
            targets = compare_targets(src, threads, calib, calib_count, engine_path, spin=spin_wait)
        else:
            targets = [single_target(src, backend, device, precision, threads, calib, calib_count, engine_path,
                                     spin=spin_wait)]
        load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
        cpu_before = _cpu_snapshot()
        t0 = time.perf_counter()
        measure(targets, x, warmup, None if duration else iterations, duration)
        wall = time.perf_counter() - t0
        others = _other_cores(cpu_before, _cpu_snapshot(), wall)
        load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
        report = _report(src, targets, compare, threads, warmup, iterations, duration, wall, seed)
        report["load_average"] = {"before": list(load_before) if load_before else None,
                                  "after": list(load_after) if load_after else None}
        report["thread_wait"] = wait_note
        report["other_processes_cores"] = others
        if threads > 1 and others is not None and others > 0.25 and threads + others > (os.cpu_count() or 1):
            report["warning"] = (f"other processes used {others:.1f} of {os.cpu_count()} cores while timing: "
                                 f"{threads}-thread timings are distorted by waiting for descheduled threads "
                                 "(PyTorch's OpenMP most of all); compare with --threads 1"
                                 + (" or --spin-wait off" if spin_wait else ""))
        return report
    finally:
        for t in targets:
            if t.close is not None:
                try:
                    t.close()
                except Exception:  # closing must not hide the measurement's own error
                    pass
        if tmp is not None:
            tmp.cleanup()


def _report(src: Source, targets: list[Target], compare: bool, threads: int, warmup: int, iterations: int,
            duration: float | None, wall: float, seed: int) -> dict:
    reference = next((t for t in targets if t.name == "torch-eager" and t.skipped is None), None)
    ref_median = float(np.median(reference.latencies_ms)) if reference else None
    rows = []
    for t in targets:
        row: dict[str, Any] = {"name": t.name, "backend": t.backend, "precision": t.precision, "device": t.device}
        if t.skipped is not None:
            row.update(status="skipped", reason=t.skipped)
        else:
            row.update(status="ok", **summarize(t.latencies_ms, src.batch))
            if compare:
                row["speedup_vs_torch"] = ref_median / row["median_ms"] if ref_median else None
                row["agreement_vs_torch"] = (agreement(t.first_output, reference.first_output)
                                             if reference is not None else None)
        if t.note:
            row["note"] = t.note
        rows.append(row)
    return {
        "tool": "lrformer-bench", "mode": "compare" if compare else "single", "model": src.label,
        "input": {"size": list(src.size), "batch": src.batch, "head": src.head,
                  "data": f"synthetic scene(s), seed {seed}, same array for every backend"},
        "threads": threads, "warmup": warmup,
        "iterations": None if duration else iterations, "duration_s": duration,
        "schedule": "interleaved rounds, rotated order" if compare else "sequential",
        "wall_s": wall, "cpu": _cpu_name(), "cores": os.cpu_count(), "tools": _tool_versions(),
        "rows": rows, "footnote": FOOTNOTE if compare else None,
    }


# ---------------------------------------------------------------------------------------------- text
def format_report(report: dict) -> str:
    inp = report["input"]
    lines = [f"model: {report['model']}  input {inp['size'][0]}x{inp['size'][1]}  batch {inp['batch']}  "
             f"head {inp['head']}  threads {report['threads']}",
             f"timing: {report['warmup']} warm-up, "
             + (f"{report['iterations']} iterations" if report["iterations"] else f"{report['duration_s']} s")
             + f" per backend, {report['schedule']}; cpu: {report['cpu']} ({report['cores']} cores)"]
    lines.append(f"thread wait: {report.get('thread_wait', '-')}")
    if report.get("other_processes_cores") is not None:
        lines.append(f"other processes used {report['other_processes_cores']:.2f} cores on average while timing")
    load = report.get("load_average") or {}
    if load.get("before"):
        lines.append("load average (1/5/15 min): before " + " ".join(f"{v:.2f}" for v in load["before"])
                     + ", after " + " ".join(f"{v:.2f}" for v in load["after"]))
    compare = report["mode"] == "compare"
    header = f"{'backend':<13} {'prec':<6} {'device':<6} {'median':>9} {'p95':>9} {'mean':>9} {'min':>9} {'img/s':>8}"
    if compare:
        header += f" {'speedup':>8} {'agree':>7}"
    lines += ["", header + "  (latency in ms)", "-" * len(header)]
    for row in report["rows"]:
        head = f"{row['name']:<13} {row['precision']:<6} {row['device']:<6}"
        if row["status"] == "skipped":
            lines.append(f"{head} skipped: {row['reason']}")
            continue
        text = (f"{head} {row['median_ms']:>9.2f} {row['p95_ms']:>9.2f} {row['mean_ms']:>9.2f} "
                f"{row['min_ms']:>9.2f} {row['throughput_ips']:>8.2f}")
        if compare:
            sp, ag = row.get("speedup_vs_torch"), row.get("agreement_vs_torch")
            text += f" {(f'{sp:.2f}x' if sp else '-'):>8} {(f'{ag:.4f}' if ag is not None else '-'):>7}"
        lines.append(text)
    notes = [f"  {row['name']}: {row['note']}" for row in report["rows"] if row.get("note")]
    if notes:
        lines += ["", "notes:"] + notes
    if report.get("warning"):
        lines += ["", "warning: " + report["warning"]]
    if report.get("footnote"):
        lines += ["", "agree = fraction of mask pixels equal to torch-eager's on the same input.",
                  report["footnote"]]
    return "\n".join(lines)
