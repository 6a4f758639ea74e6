"""Segmenter: the embeddable API. Model file in, class-id masks at the frame size out.

    from lrformer_deploy.runtime import Segmenter
    seg = Segmenter("engines/lrformer-t-ade20k-512x512.onnx", backend="auto", resize="stretch")
    mask = seg(frame_bgr)                       # H x W uint8 class ids (uint16 beyond 256 classes)
    masks = seg.segment_batch([f1, f2, f3])

Backend choice ("auto"): a TensorRT engine when the model has one and TensorRT + a GPU are present,
then ONNX Runtime on CUDA when the installed onnxruntime offers it; on a CPU, OpenVINO for the precisions
it runs faster than ONNX Runtime FP32 when it is installed (AUTO_OPENVINO_PRECISIONS, measured in
docs/cpu.md), else ONNX Runtime on the CPU.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import threading
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from lrformer_deploy.contract import BACKENDS, default_palette
from lrformer_deploy.errors import UserError, install_hint
from lrformer_deploy.runtime.backends import openvino_missing, tensorrt_missing
from lrformer_deploy.runtime.backends.base import Runner
from lrformer_deploy.runtime.postprocess import Postprocessor
from lrformer_deploy.runtime.preprocess import Geometry, Preprocessor
from lrformer_deploy.runtime.spec import (
    ModelSpec,
    ResolvedModel,
    resolve_model,
    spec_from_io,
    spec_from_manifest,
    verify_artifact,
)



def default_model_path() -> Path:
    """The project's demo model: the graph shipped in the package, else exported on first use (needs torch)
    through the build side's one door."""
    try:
        from lrformer_deploy.build.on_demand import demo_graph
    except ImportError:
        raise UserError("no --model given and the demo model is not available") from None
    try:
        return demo_graph()
    except UserError:
        raise
    except Exception as exc:  # e.g. torch missing for the first-use export
        raise UserError(f"no --model given and the demo model is not available ({exc.__class__.__name__}: {exc})") from None


# CPU-target artifacts `auto` runs on OpenVINO when it is installed (an x86 CPU, no CUDA device asked for).
# Measured on an AMD EPYC (docs/cpu.md, 2 threads, interleaved with a pause between rows): INT8 (real u8
# convolutions from our Q/DQ graph) 1.8x and bf16 2.2x ONNX Runtime FP32 on LRFormer-T 512x512; FP32 graphs
# 1.15x (512x512), 1.18x (512x896), 1.08x (the demo model) since OpenVINO runs the channel LayerNorms on the
# NCHW map (backends/openvino.py). Its first compile costs ~0.4-0.9 s more than ONNX Runtime's session,
# ~0.2-0.3 s from its model cache. FP16 graphs (made for GPUs) and TensorRT-target graphs, whose full-size
# Resize tail OpenVINO runs at half ONNX Runtime's speed, stay on ONNX Runtime.
AUTO_OPENVINO_PRECISIONS = ("fp32", "int8", "bf16")


def _x86() -> bool:
    import platform

    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def _int8_graph(spec: ModelSpec | None) -> bool:
    """A bf16 artifact made from the INT8 graph (--int8 --bf16's NAME-int8-bf16.json)."""
    details = ((spec.manifest or {}) if spec is not None else {}).get("precision_details") or {}
    return details.get("graph_precision") == "int8"


def graph_precision(spec: ModelSpec | None) -> str:
    """The precision the manifest states (a graph without manifest is taken as FP32)."""
    return str((spec.manifest or {}).get("precision") or "fp32") if spec is not None else "fp32"


def _device_index(device: str | None) -> int:
    _, _, index = (device or "").partition(":")
    return int(index) if index.isdigit() else 0


class Segmenter:
    """Segment BGR uint8 frames with one model on one backend.

    Thread safety: calls may come from several threads. ONNX Runtime sessions run concurrently;
    TensorRT and torch runners are serialised by an internal lock (for parallel GPU work, create one
    Segmenter per thread: each gets its own execution context, and they share one deserialized engine).
    """

    def __init__(
        self,
        model: str | Path | None = None,
        backend: str = "auto",
        device: str | None = None,
        resize: str = "stretch",
        *,
        input_size: tuple[int, int] | None = None,
        stream: Any = None,
        intra_op_threads: int | None = None,
    ) -> None:
        backend = (backend or "auto").lower()
        if backend not in BACKENDS:
            raise UserError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        self._tmpdir: Path | None = None
        self.model_path = Path(model) if model is not None else default_model_path()
        resolved = resolve_model(self.model_path)
        self._stream = stream
        self._threads = intra_op_threads
        runner, spec = self._make_runner(resolved, backend, device, input_size)
        try:
            runner.activate()
        except BaseException:
            self._cleanup_tmp()
            raise
        self.runner: Runner = runner
        self.spec: ModelSpec = self._check_io(spec, runner, resolved.path)
        self.preprocessor = Preprocessor(self.spec.input_size, self.spec.mean, self.spec.std,
                                         self.spec.color_order, resize, self.spec.input_dtype)
        self.postprocessor = Postprocessor(self.spec.output_kind, self.spec.num_classes)
        self.resize = resize
        self._lock = nullcontext() if runner.thread_safe else threading.Lock()

    # ------------------------------------------------------------------ properties of the contract
    @property
    def manifest(self) -> dict[str, Any]:
        return self.spec.manifest

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names

    @property
    def palette(self) -> tuple[tuple[int, int, int], ...]:
        return self.spec.palette

    @property
    def input_size(self) -> tuple[int, int]:
        return self.spec.input_size

    @property
    def batch_size(self) -> int:
        return self.spec.batch

    @property
    def backend_name(self) -> str:
        return self.runner.name

    # ------------------------------------------------------------------ segmentation
    def __call__(self, frame_bgr: np.ndarray) -> np.ndarray:
        return self.segment_batch([frame_bgr])[0]

    def segment_batch(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Masks for any number of frames; they are run in chunks of the model's batch size."""
        masks: list[np.ndarray] = []
        b = self.batch_size
        for start in range(0, len(frames), b):
            chunk = frames[start:start + b]
            # A dynamic-batch graph runs the chunk as it is; a static one needs it padded to its batch.
            tensor, geos = self.preprocessor.batch(chunk, None if self.spec.dynamic_batch else b)
            outputs = self.infer(tensor)
            masks.extend(self.postprocess(outputs, geos))
        return masks

    def infer(self, tensor: Any) -> np.ndarray:
        """Raw model output for a preprocessed N x 3 x H x W batch (N = the model's batch size; N x H x W x 3
        uint8 frames for a uint8-input model: spec.input_dtype)."""
        with self._lock:
            out = self.runner.infer({self.spec.input_name: tensor})
        return out[self.spec.output_name]

    @property
    def can_overlap(self) -> bool:
        """Whether submit()/collect() overlap the next batch's copy with this batch's execution (TensorRT)."""
        return callable(getattr(self.runner, "submit", None))

    def submit(self, tensor: Any) -> Any:
        """Start a batch (as `infer`) without waiting for it; `collect(ticket)` returns its raw output."""
        with self._lock:
            if not self.can_overlap:
                return self.runner.infer({self.spec.input_name: tensor})
            return self.runner.submit({self.spec.input_name: tensor})

    def collect(self, ticket: Any) -> np.ndarray:
        if isinstance(ticket, dict):
            return ticket[self.spec.output_name]
        with self._lock:
            out = self.runner.collect(ticket)
        return out[self.spec.output_name]

    def postprocess(self, output: np.ndarray, geos: list[Geometry]) -> list[np.ndarray]:
        """Per-frame masks from one batch output; rows beyond len(geos) (batch padding) are dropped."""
        return [self.postprocessor(output[i], geo) for i, geo in enumerate(geos)]

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.deactivate()
        self._cleanup_tmp()

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._cleanup_tmp()
        except Exception:
            pass

    def _cleanup_tmp(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    # ------------------------------------------------------------------ backend selection
    def _make_runner(self, resolved: ResolvedModel, backend: str, device: str | None,
                     input_size: tuple[int, int] | None) -> tuple[Runner, ModelSpec | None]:
        if resolved.kind == "checkpoint":
            return self._checkpoint_runner(resolved.path, backend, device, input_size)
        spec = resolved.spec
        engine = resolved.path if resolved.kind == "engine" else (spec.engine_path if spec else None)
        onnx = resolved.path if resolved.kind == "onnx" else (spec.onnx_path if spec else None)
        if backend == "torch":
            raise UserError("--backend torch runs .pth checkpoints; for .onnx/.engine models use onnxruntime, "
                            "openvino or tensorrt")
        if backend == "tensorrt":
            if engine is None:
                raise UserError(f"no TensorRT engine recorded for {resolved.path.name}; build one with lrformer-export "
                                "--engine, or use --backend onnxruntime --device tensorrt (ONNX Runtime's TensorRT provider)")
            return self._trt_runner(engine, spec, device), spec
        verified = bool(((spec.engine_record if spec else None) or {}).get("verification", {}).get("passed"))
        if (backend == "auto" and engine is not None and engine.is_file() and not verified and onnx is not None
                and tensorrt_missing("run") is None):
            # Engines from before verification-before-publish (or built by hand): only on request.
            print(f"warning: {engine.name} has no passed verification against ONNX Runtime in its manifest; "
                  "running the ONNX graph (--backend tensorrt runs the engine anyway, or rebuild it)", file=sys.stderr)
            engine = None
        if backend == "auto" and engine is not None and engine.is_file() and tensorrt_missing("run") is None:
            runner = self._trt_runner(engine, spec, device)
            try:
                runner.activate()
                return runner, spec
            except UserError as exc:
                if onnx is None:
                    raise
                print(f"warning: TensorRT engine not usable ({exc}); falling back to ONNX Runtime", file=sys.stderr)
        if onnx is None:
            if resolved.kind == "engine":
                raise UserError(f"{resolved.path.name} is a TensorRT engine and TensorRT is not available here "
                                f"({install_hint('tensorrt')}); pass the .onnx model to run with ONNX Runtime")
            raise UserError(f"{resolved.path}: the manifest names no ONNX graph to run")
        if not onnx.is_file():
            raise UserError(f"model file not found: {onnx}")
        verify_artifact(onnx, spec, "onnx")  # never run a graph its manifest does not vouch for
        precision = graph_precision(spec)
        why = self._auto_openvino(spec, precision, device) if backend == "auto" else None
        if why:
            label = "int8 (bf16 float ops)" if precision == "bf16" and _int8_graph(spec) else precision
            print(f"note: backend auto: OpenVINO runs this {label} artifact ({why}; --backend onnxruntime to "
                  "override)", file=sys.stderr)
        if backend == "openvino" or why:
            return self._openvino_runner(onnx, precision, device), spec
        from lrformer_deploy.runtime.backends.ort import OnnxRuntimeRunner

        if precision == "bf16":
            what = "this INT8 graph's float ops" if _int8_graph(spec) else "its graph"
            print(f"note: {onnx.name} is a bf16 artifact; ONNX Runtime runs {what} in FP32 "
                  "(bf16 runs on --backend openvino)", file=sys.stderr)
        ort_device = device if device not in (None, "auto") else "auto"
        return OnnxRuntimeRunner(onnx, device=ort_device, intra_op_threads=self._threads), spec

    @staticmethod
    def _auto_openvino(spec: ModelSpec | None, precision: str, device: str | None) -> str | None:
        """Why `auto` runs this graph on OpenVINO, or None when it should not."""
        # The export's own measurement (precision_details.cpu_backends) decides where it made one.
        manifest = (spec.manifest if spec else None) or {}
        measured = (manifest.get("precision_details") or {}).get("cpu_backends") or {}
        if "recommended" in measured:
            wanted = measured["recommended"] == "openvino"
            # A timed choice (INT8) or a stated one (bf16: only OpenVINO computes in bf16).
            why = ("the export measured it faster than ONNX Runtime on its CPU" if measured.get("median_ms")
                   else str(measured.get("why") or "the export recommends it"))
        else:  # graphs shaped for a CPU only: a TensorRT-target graph keeps its old path
            wanted = precision in AUTO_OPENVINO_PRECISIONS and manifest.get("target") == "cpu"
            why = "faster than ONNX Runtime on the x86 CPUs measured, docs/cpu.md"
        if not (wanted and (device or "auto").lower() in ("auto", "cpu") and _x86() and openvino_missing() is None):
            return None
        if (device or "auto").lower() == "auto":  # ONNX Runtime on CUDA keeps its place before any CPU backend
            from lrformer_deploy.runtime.backends import onnxruntime_providers

            if "CUDAExecutionProvider" in onnxruntime_providers():
                return None
        return why

    def _openvino_runner(self, onnx: Path, precision: str, device: str | None) -> Runner:
        from lrformer_deploy.runtime.backends.openvino import OpenVINORunner

        reason = openvino_missing()
        if reason:
            raise UserError(f"--backend openvino: {reason}")
        return OpenVINORunner(onnx, device=device, precision=precision, threads=self._threads)

    def _trt_runner(self, engine: Path, spec: ModelSpec | None, device: str | None) -> Runner:
        from lrformer_deploy.runtime.backends.trt import TensorRTRunner

        verify_artifact(engine, spec, "engine")
        return TensorRTRunner(engine, spec.engine_record if spec else None, device_id=_device_index(device),
                              stream=self._stream)

    def _checkpoint_runner(self, path: Path, backend: str, device: str | None,
                           input_size: tuple[int, int] | None) -> tuple[Runner, ModelSpec | None]:
        from lrformer_deploy.runtime.backends.torch_runner import TorchRunner, load_checkpoint_model

        if backend == "tensorrt":
            raise UserError("a .pth checkpoint cannot run on TensorRT directly; export it and build an engine with "
                            "lrformer-export first")
        if backend == "openvino":
            raise UserError("a .pth checkpoint cannot run on OpenVINO directly; export it with lrformer-export "
                            "--target cpu first")
        size = tuple(input_size or (512, 512))
        if size[0] % 32 or size[1] % 32:
            raise UserError(f"input size {size[0]}x{size[1]} must be a multiple of 32 on both sides")
        model = load_checkpoint_model(path)
        if backend == "torch":
            return TorchRunner(model=model, device=device), checkpoint_spec(model, path, size)
        # auto / onnxruntime: export into a temporary folder and run the graph with ONNX Runtime.
        try:
            from lrformer_deploy.build.on_demand import checkpoint_graph
        except ImportError as exc:
            raise UserError(f"cannot export {path.name}: the export side is unavailable ({exc})") from None
        from lrformer_deploy.runtime.backends.ort import OnnxRuntimeRunner

        self._tmpdir = Path(tempfile.mkdtemp(prefix="lrformer-infer-"))
        onnx_path, manifest, manifest_path = checkpoint_graph(model, self._tmpdir, path.stem, size)
        spec = spec_from_manifest(manifest, manifest_path)
        spec = replace(spec, checkpoint_path=path, onnx_path=onnx_path)
        return OnnxRuntimeRunner(onnx_path, device=device, intra_op_threads=self._threads), spec

    # ------------------------------------------------------------------ consistency
    def _check_io(self, spec: ModelSpec | None, runner: Runner, path: Path) -> ModelSpec:
        try:
            inputs, outputs = runner.io_info()
        except NotImplementedError:
            if spec is None:
                raise UserError(f"{path}: no manifest found and the backend cannot describe the model") from None
            return spec
        if spec is None:
            (in_name, in_shape), (out_name, out_shape) = inputs[0], outputs[0]
            return spec_from_io(path, in_name, in_shape, out_name, out_shape)
        in_names = {n: s for n, s in inputs}
        out_names = [n for n, _ in outputs]
        if spec.input_name not in in_names:
            raise UserError(f"{path.name}: the manifest's input {spec.input_name!r} is not in the model "
                            f"(it has {', '.join(in_names)})")
        if spec.output_name not in out_names:
            raise UserError(f"{path.name}: the manifest's output {spec.output_name!r} is not in the model "
                            f"(it has {', '.join(out_names)})")
        got = tuple(in_names[spec.input_name])
        static = all(isinstance(d, int) and d > 0 for d in got)
        if static and got != tuple(spec.model_input_shape):
            raise UserError(f"{path.name}: the model input is {list(got)} but its manifest says "
                            f"{list(spec.model_input_shape)}")
        return spec


def _dataset_for(model: Any):
    try:
        from lrformer_deploy.data.datasets import dataset_for_num_classes
    except ImportError:
        return None
    return dataset_for_num_classes(int(getattr(model, "num_classes", 0) or 0))


def checkpoint_spec(model: Any, path: Path, size: tuple[int, int]) -> ModelSpec:
    """Spec for running a checkpoint module directly: stride-8 logits, names/palette from the dataset."""
    num_classes = int(getattr(model, "num_classes"))
    preset = _dataset_for(model)
    return ModelSpec(
        name=path.stem,
        input_name="image",
        input_shape=(1, 3, int(size[0]), int(size[1])),
        output_name="logits",
        output_kind="logits",
        num_classes=num_classes,
        class_names=tuple(preset.class_names) if preset else tuple(f"class {i}" for i in range(num_classes)),
        palette=tuple(preset.palette) if preset else default_palette(num_classes),
        mean=tuple(preset.mean) if preset else ModelSpec.__dataclass_fields__["mean"].default,
        std=tuple(preset.std) if preset else ModelSpec.__dataclass_fields__["std"].default,
        checkpoint_path=path,
    )
