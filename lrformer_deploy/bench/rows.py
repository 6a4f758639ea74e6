"""The benchmark's rows: each holds one of the runtime's Runners (PyTorch, ONNX Runtime, TensorRT), so
every backend is timed through the same interface the runtime serves frames with, as Polygraphy's
comparator holds its runners. A row that cannot run here is kept, with the reason, as a skipped row.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lrformer_deploy.bench.plan import Source, engine_for, reduced_graph
from lrformer_deploy.cpus import bf16_missing
from lrformer_deploy.errors import UserError
from lrformer_deploy.runtime.backends import openvino_missing, tensorrt_missing
from lrformer_deploy.runtime.backends.base import Runner


@dataclass
class Row:
    """One measured line: a runner on the shared input, or a skipped line saying why."""

    name: str
    backend: str
    precision: str
    device: str
    runner: Runner | None = None
    skipped: str | None = None  # reason, when this row is not measured
    note: str = ""
    latencies_ms: list[float] = field(default_factory=list)
    first_output: Any = None
    _input_name: str | None = None

    def activate(self) -> Row:
        if self.runner is not None and not self.runner.is_active:
            self.runner.activate()
        return self

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if self._input_name is None:
            inputs = self.runner.io_info()[0]
            self._input_name = inputs[0][0]
        return self.runner.infer({self._input_name: x})

    def close(self) -> None:
        if self.runner is not None:
            self.runner.deactivate()


def gpu_missing() -> str | None:
    """None when a CUDA GPU is usable from torch, else why not."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    return None if torch.cuda.is_available() else "no CUDA GPU (torch.cuda.is_available() is False)"


def torch_row(src: Source, device: str, threads: int, name: str | None = None) -> Row:
    """PyTorch eager FP32 on cpu or cuda (the runtime's TorchRunner), or a skipped row saying why."""
    from lrformer_deploy.runtime.backends.torch_runner import TorchRunner

    dev = "cuda" if device.startswith("cuda") else "cpu"
    row = Row(name or f"torch-{'eager' if dev == 'cpu' else 'cuda'}", "torch", "fp32", dev, note=src.torch_note)
    try:
        import torch
    except ImportError:
        row.skipped = "PyTorch is not installed"
        return row
    if dev == "cuda" and not torch.cuda.is_available():
        row.skipped = "torch sees no CUDA GPU"
        return row
    module = src.torch_module()
    if module is None:
        row.skipped = "no PyTorch model (the manifest names no variant; pass a .pth or --variant)"
        return row
    torch.set_num_threads(threads)
    if dev == "cuda":
        module = copy.deepcopy(module)  # the CPU row keeps its own copy: activation moves a module in place
    # PyTorch runs the same work as the graph: for a mask graph that is MaskHead (upsample + argmax) too.
    row.runner = TorchRunner(model=module, device=dev, output_name=src.head)
    row._input_name = "image"
    return row.activate()


def ort_row(onnx_path: Path, precision: str, device: str, threads: int, note: str = "", spin: bool = True) -> Row:
    """ONNX Runtime through the runtime's own runner (what lrformer-infer runs); spin=False lets its idle
    intra-op threads sleep instead of spin-waiting."""
    from lrformer_deploy.runtime.backends.ort import OnnxRuntimeRunner

    dev = "cuda" if device.startswith("cuda") else "cpu"
    runner = OnnxRuntimeRunner(onnx_path, device=dev, intra_op_threads=threads, spin_wait=spin)
    return Row(f"ort-{precision}", "onnxruntime", precision, dev, runner=runner, note=note).activate()


def openvino_row(onnx_path: Path, precision: str, threads: int, note: str = "", device: str = "CPU",
                 name: str | None = None) -> Row:
    """OpenVINO through the runtime's own runner, with the inference precision the graph states (f32 for
    FP32 and Q/DQ INT8 graphs, bf16 for bf16), never OpenVINO's silent CPU default; skipped without it."""
    reason = openvino_missing()
    if reason is not None:
        return Row(name or f"openvino-{precision}", "openvino", precision, "cpu", skipped=reason)
    from lrformer_deploy.runtime.backends.openvino import OpenVINORunner

    runner = OpenVINORunner(onnx_path, device=device, precision=precision, threads=threads)
    return Row(name or f"openvino-{precision}", "openvino", precision, "cpu", runner=runner, note=note).activate()


def tensorrt_row(engine_path: Path, record: dict | None, precision: str, note: str = "") -> Row:
    from lrformer_deploy.runtime.backends.trt import TensorRTRunner

    runner = TensorRTRunner(engine_path, record)
    return Row(f"tensorrt-{precision}", "tensorrt", precision, "cuda", runner=runner, note=note).activate()


def built_engine_row(src: Source, precision: str, calib: str | None, calib_count: int) -> Row:
    """A strongly typed engine built from the FP32 graph or its FP16/INT8 graph made for TensorRT."""
    art = engine_for(src, precision, calib, calib_count)
    if art.engine is None:
        return Row(f"tensorrt-{precision}", "tensorrt", precision, "cuda", skipped=art.engine_skipped)
    return tensorrt_row(art.engine, art.engine_record, precision, note=f"built from {art.onnx.name}")


def _existing_engine(src: Source, engine: Path | None) -> Path | None:
    return engine or (src.engine_path if src.engine_path and src.engine_path.is_file() else None)


def compare_rows(src: Source, threads: int, calib: str | None, calib_count: int, engine: Path | None,
                 spin: bool = True) -> list[Row]:
    """PyTorch eager (the reference), ONNX Runtime FP32/FP16/INT8 (graphs for the CPU), and on a GPU
    machine PyTorch CUDA and a TensorRT engine."""
    if src.onnx_path is None:
        raise UserError(src.no_graph() + "; --compare needs the graph (pass an .onnx/.json with its graph, "
                        "a .pth or --variant)")
    rows = [torch_row(src, "cpu", threads, name="torch-eager")]
    rows.append(ort_row(src.onnx_path, "fp32", "cpu", threads, spin=spin))
    rows.append(openvino_row(src.onnx_path, "fp32", threads))
    for precision in ("fp16", "int8"):
        art, note = reduced_graph(src, precision, calib, calib_count, target="cpu")
        rows.append(ort_row(art.onnx, precision, "cpu", threads, note=note, spin=spin))
        if precision == "int8":  # OpenVINO runs the same Q/DQ graph with real u8 convolutions
            rows.append(openvino_row(art.onnx, precision, threads, note=note))
            int8_graph = art.onnx
    reason = bf16_missing()
    rows.append(openvino_row(src.onnx_path, "bf16", threads, note="the FP32 graph, inference precision bf16")
                if reason is None else Row("openvino-bf16", "openvino", "bf16", "cpu", skipped=reason))
    # --int8 --bf16's NAME-int8-bf16.json: the INT8 graph, float ops in bf16
    rows.append(openvino_row(int8_graph, "bf16", threads, note="the INT8 graph, inference precision bf16",
                             name="openvino-int8-bf16")
                if reason is None else Row("openvino-int8-bf16", "openvino", "bf16", "cpu", skipped=reason))
    gpu_reason = gpu_missing()
    if gpu_reason is None:
        rows.append(torch_row(src, "cuda", threads, name="torch-cuda"))
    else:
        rows.append(Row("torch-cuda", "torch", "fp32", "cuda", skipped=gpu_reason))
    trt_reason = tensorrt_missing()
    engine = _existing_engine(src, engine)
    if trt_reason is not None:
        rows.append(Row("tensorrt", "tensorrt", "fp16" if engine is None else "engine", "cuda", skipped=trt_reason))
    elif engine is not None:
        rows.append(tensorrt_row(engine, src.engine_record if engine == src.engine_path else None, "engine",
                                 note=engine.name))
    else:
        rows.append(built_engine_row(src, "fp16", calib, calib_count))
    return rows


def single_row(src: Source, backend: str, device: str, precision: str, threads: int, calib: str | None,
               calib_count: int, engine: Path | None, spin: bool = True) -> Row:
    engine = _existing_engine(src, engine)
    if precision == "bf16":  # a CPU precision that only OpenVINO computes in
        if backend not in ("auto", "openvino"):
            raise UserError("--precision bf16 runs on OpenVINO: use --backend openvino (or auto)")
        reason = bf16_missing()
        if reason is not None:
            raise UserError(f"--precision bf16 refused: {reason}")
        backend = "openvino"
    if backend == "auto":
        # Never a stand-in: without an engine or a graph there is nothing of this model to measure.
        if engine is not None and tensorrt_missing() is None:
            backend = "tensorrt"
        elif src.onnx_path is not None:
            backend = "onnxruntime"
        else:
            raise UserError(src.no_graph())
    if backend == "torch":
        if precision != "fp32":
            raise UserError("--backend torch measures FP32 only; use onnxruntime or tensorrt for fp16/int8")
        row = torch_row(src, device, threads)
        if row.skipped:
            raise UserError(f"cannot run the torch backend: {row.skipped}")
        return row
    if backend == "tensorrt":
        reason = tensorrt_missing()
        if reason is not None:
            raise UserError(f"cannot run the tensorrt backend here: {reason}")
        if engine is not None:
            return tensorrt_row(engine, src.engine_record if engine == src.engine_path else None, "engine",
                                note=engine.name)
        if src.onnx_path is None:
            raise UserError(src.no_graph() + "; no TensorRT engine either")
        row = built_engine_row(src, precision, calib, calib_count)
        if row.skipped:
            raise UserError(f"cannot run the tensorrt backend: {row.skipped}")
        return row
    if src.onnx_path is None:
        raise UserError(src.no_graph())
    if backend == "openvino":
        reason = openvino_missing()
        if reason is not None:
            raise UserError(f"cannot run the openvino backend here: {reason}")
        graph, note = src.onnx_path, ""
        if precision in ("fp16", "int8"):
            art, note = reduced_graph(src, precision, calib, calib_count, target="cpu")
            graph = art.onnx
        return openvino_row(graph, precision, threads, note=note, device="CPU" if device in ("auto", "cpu") else device)
    if precision == "fp32":
        return ort_row(src.onnx_path, precision, device, threads, spin=spin)
    art, note = reduced_graph(src, precision, calib, calib_count, target="cpu")
    return ort_row(art.onnx, precision, device, threads, note=note, spin=spin)
