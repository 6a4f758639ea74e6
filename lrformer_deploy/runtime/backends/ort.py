"""ONNX Runtime backend: CPU, CUDA or TensorRT execution providers, whichever the installed build has."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from lrformer_deploy.errors import UserError
from lrformer_deploy.runtime.backends.base import Runner

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT_EP = "TensorrtExecutionProvider"


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def tensorrt_ep_options(device_id: int, graph: str | Path | None) -> dict[str, Any]:
    """The TensorRT execution provider's options: engine and timing caches on, in a folder per graph
    (content hash) in the user's cache, so a session start after the first does not rebuild the engine.

    Option names are ONNX Runtime's documented TensorRT EP provider options (trt_engine_cache_enable,
    trt_engine_cache_path, trt_timing_cache_enable, trt_timing_cache_path); the EP itself keys each
    cached engine by GPU and TensorRT version, and rebuilds when they change.
    """
    options: dict[str, Any] = {"device_id": device_id}
    if graph is None:
        return options
    from lrformer_deploy.cache import cache_dir, cached_sha256

    graph = Path(graph)
    folder = cache_dir() / "ort-tensorrt" / f"{graph.stem}-{cached_sha256(graph)[:16]}"
    folder.mkdir(parents=True, exist_ok=True)
    options.update(trt_engine_cache_enable="True", trt_engine_cache_path=str(folder),
                   trt_timing_cache_enable="True", trt_timing_cache_path=str(folder))
    return options


def providers_for_device(device: str | None, graph: str | Path | None = None) -> list[Any]:
    """Provider list for a device string: None/"auto", "cpu", "cuda[:N]" or "tensorrt[:N]" (the TRT EP).

    "auto" takes CUDA when the installed onnxruntime offers it, else CPU. The TensorRT EP is never
    picked automatically: it builds an engine at session start, which takes minutes the first time;
    with `graph` its engine and timing caches are kept (tensorrt_ep_options) so that happens once.
    """
    have = available_providers()
    dev = (device or "auto").lower()
    kind, _, index = dev.partition(":")
    device_id = int(index) if index.isdigit() else 0
    if kind == "auto":
        return [(CUDA, {"device_id": device_id}), CPU] if CUDA in have else [CPU]
    if kind == "cpu":
        return [CPU]
    if kind in ("cuda", "gpu"):
        if CUDA not in have:
            raise UserError(f"device {device!r} needs onnxruntime with CUDA (installed build offers: {', '.join(have)}); "
                            "install onnxruntime-gpu or use --device cpu")
        return [(CUDA, {"device_id": device_id}), CPU]
    if kind in ("tensorrt", "trt"):
        if TENSORRT_EP not in have:
            raise UserError(f"device {device!r} needs onnxruntime with the TensorRT execution provider "
                            f"(installed build offers: {', '.join(have)})")
        chain: list[Any] = [(TENSORRT_EP, tensorrt_ep_options(device_id, graph))]
        if CUDA in have:
            chain.append((CUDA, {"device_id": device_id}))
        return chain + [CPU]
    raise UserError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or tensorrt")


def read_graph_io(onnx_path: str | Path) -> tuple[list[tuple[str, str, tuple]], list[tuple[str, str, tuple]]]:
    """(inputs, outputs) of a graph as ONNX Runtime declares them: (name, type such as "tensor(float)",
    shape with ints or symbolic names). Read without any optimisation pass, on the CPU provider; this is
    the reader for places that have ONNX Runtime but not the onnx package (serving)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(onnx_path), options, providers=[CPU])
    except Exception as exc:  # ORT raises its own exception types (InvalidProtobuf, Fail, ...)
        raise UserError(f"cannot read the graph {onnx_path}: {str(exc).strip().splitlines()[0][:200]}") from None

    def rows(args):
        return [(a.name, a.type, tuple(a.shape)) for a in args]

    return rows(sess.get_inputs()), rows(sess.get_outputs())


class OnnxRuntimeRunner(Runner):
    # InferenceSession.run is documented as thread-safe, so one session can serve several threads.
    thread_safe = True

    def __init__(self, onnx_path: str | Path, device: str | None = None, providers: list[Any] | None = None,
                 intra_op_threads: int | None = None, spin_wait: bool | None = None) -> None:
        super().__init__()
        self.onnx_path = Path(onnx_path)
        self.device = device
        self._providers = providers
        self.intra_op_threads = intra_op_threads
        # Idle intra-op threads spin by default; sleeping is fairer on a CPU shared with other work.
        self.spin_wait = spin_wait if spin_wait is not None else os.environ.get("LRFORMER_ORT_SPIN") != "0"
        self.session = None
        self.name = "onnxruntime"

    def _activate(self) -> None:
        import onnxruntime as ort

        providers = self._providers or providers_for_device(self.device, self.onnx_path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = self.intra_op_threads or int(os.environ.get("LRFORMER_ORT_THREADS", "0") or 0)
        if threads:
            options.intra_op_num_threads = threads
        if not self.spin_wait:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: keep the CLI's stderr to our own lines
        if not self.onnx_path.is_file():
            raise UserError(f"model file not found: {self.onnx_path}")
        try:
            self.session = ort.InferenceSession(str(self.onnx_path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types (InvalidProtobuf, Fail, ...)
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise UserError(f"cannot load ONNX model {self.onnx_path.name}: {detail[:300]}") from None
        self.name = f"onnxruntime[{self.session.get_providers()[0]}]"

    def _deactivate(self) -> None:
        self.session = None

    def io_info(self) -> tuple[list[tuple[str, tuple]], list[tuple[str, tuple]]]:
        assert self.session is not None, "activate() first"
        inputs = [(i.name, tuple(i.shape)) for i in self.session.get_inputs()]
        outputs = [(o.name, tuple(o.shape)) for o in self.session.get_outputs()]
        return inputs, outputs

    def infer(self, feed: dict[str, Any]) -> dict[str, np.ndarray]:
        if self.session is None:
            raise RuntimeError("OnnxRuntimeRunner.infer() called before activate()")
        host_feed = {name: _to_host(value) for name, value in feed.items()}
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, host_feed)))


def _to_host(value: Any) -> np.ndarray:
    """ONNX Runtime takes host arrays here; accept numpy and anything with a host copy (e.g. torch)."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "__cuda_array_interface__") and hasattr(value, "cpu"):
        return value.cpu().numpy()  # a torch CUDA tensor
    return np.asarray(value)
