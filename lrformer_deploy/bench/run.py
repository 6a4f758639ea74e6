"""Latency and throughput of LRFormer on each backend and precision, in the spirit of trtexec.

Two modes, both measured on ONE preprocessed synthetic scene (the same array for every backend):

- single: one backend/precision/batch -> median, p95, mean, min latency (ms) and images/s.
- compare: PyTorch eager FP32 on the CPU, ONNX Runtime FP32 / FP16 / INT8 graphs, and on a GPU machine
  PyTorch CUDA and a TensorRT engine. Backends run in interleaved rounds (each round runs every backend
  once, in a rotated order) so that a neighbour's load on a shared machine hits them all alike, and all
  of them use the same number of CPU threads. Speedups are torch_eager_median / backend_median.

The stages, one module each: plan.py (what is measured; the only build() call), rows.py (one runtime
Runner per row), timing.py (the one timing loop), report.py (the table and JSON); this module validates
the arguments and runs them in that order.

Fairness notes that shaped the code:
- PyTorch runs the same work as the graph: with a mask graph it runs MaskHead (upsample + argmax) too.
- ONNX Runtime sessions are opened with ORT_ENABLE_ALL and intra_op_num_threads = --threads (the
  runtime's OnnxRuntimeRunner does both); torch gets torch.set_num_threads(--threads).
- Latency includes the host->device->host copies of every backend (numpy in, numpy out), like a caller
  sees it.
Speed is measured, never assumed: on most CPUs ONNX Runtime has no native FP16 kernels, so the FP16 graph
is usually SLOWER than FP32 there; the FP16/INT8 rows pay off on a GPU (TensorRT).
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from lrformer_deploy.bench.plan import make_input, resolve_source
from lrformer_deploy.bench.report import format_report, make_report
from lrformer_deploy.bench.rows import Row, compare_rows, gpu_missing, single_row
from lrformer_deploy.bench.timing import apply_passive_wait, cpu_snapshot, measure, other_cores
from lrformer_deploy.build.request import check_calibration_source, check_memory, check_output_dir
from lrformer_deploy.contract import BACKENDS, HEADS, PRECISIONS, check_export_size
from lrformer_deploy.cpus import SETTLE_S, usable_cpus
from lrformer_deploy.errors import UserError
from lrformer_deploy.runtime.backends import tensorrt_missing

__all__ = ["format_report", "run_benchmark"]


def run_benchmark(*, model: str | None = None, variant: str | None = None, num_classes: int = 150,
                  size: tuple[int, int] | None = None, batch: int | None = None, head: str = "mask",
                  backend: str = "auto", device: str = "auto", precision: str = "fp32", compare: bool = False,
                  warmup: int = 5, iterations: int = 20, duration: float | None = None,
                  threads: int | None = None, calib: str | None = None, calib_count: int = 8,
                  engine: str | None = None, work_dir: str | None = None, seed: int = 0,
                  spin_wait: bool = True, settle_ms: float = SETTLE_S * 1000) -> dict:
    """Measure and return the report dict (what --json prints). See the module docstring."""
    if backend not in BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if head not in HEADS:
        raise UserError(f"--head must be one of {', '.join(HEADS)}, got {head!r}")
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
    if settle_ms < 0:
        raise UserError(f"--settle-ms must be 0 or more, got {settle_ms}")
    threads = threads or usable_cpus()
    wait_note = "library defaults (idle threads spin-wait)" if spin_wait else apply_passive_wait()

    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="lrformer-bench-")
        work = Path(tmp.name)
    else:
        work = Path(work_dir)
    rows: list[Row] = []
    try:
        src = resolve_source(model, variant, num_classes, size, batch, head, work)
        if device == "auto":  # after the model is resolved: a bad --model is reported without importing torch
            device = "cuda" if (not compare and backend != "openvino" and precision != "bf16"
                                and gpu_missing() is None) else "cpu"
        x = make_input(src.size, src.batch, src.mean, src.std, seed)
        if compare:
            rows = compare_rows(src, threads, calib, calib_count, engine_path, spin=spin_wait)
        else:
            rows = [single_row(src, backend, device, precision, threads, calib, calib_count, engine_path,
                               spin=spin_wait)]
        load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
        cpu_before = cpu_snapshot()
        t0 = time.perf_counter()
        measure(rows, x, warmup, None if duration else iterations, duration, settle_s=settle_ms / 1000)
        wall = time.perf_counter() - t0
        others = other_cores(cpu_before, cpu_snapshot(), wall)
        load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
        report = make_report(src, rows, compare, threads, warmup, iterations, duration, wall, seed)
        report["load_average"] = {"before": list(load_before) if load_before else None,
                                  "after": list(load_after) if load_after else None}
        report["thread_wait"] = wait_note + (f"; {settle_ms:g} ms pause between rows" if len(rows) > 1 else "")
        report["other_processes_cores"] = others
        if threads > 1 and others is not None and others > 0.25 and threads + others > (os.cpu_count() or 1):
            report["warning"] = (f"other processes used {others:.1f} of {os.cpu_count()} cores while timing: "
                                 f"{threads}-thread timings are distorted by waiting for descheduled threads "
                                 "(PyTorch's OpenMP most of all); compare with --threads 1"
                                 + (" or --spin-wait off" if spin_wait else ""))
        return report
    finally:
        for row in rows:
            try:
                row.close()
            except Exception:  # closing must not hide the measurement's own error
                pass
        if tmp is not None:
            tmp.cleanup()
