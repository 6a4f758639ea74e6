"""Backends behind one interface (`Runner`: activate / infer / deactivate, usable as a context manager).

Modules are imported lazily: `ort` needs onnxruntime, `trt` needs tensorrt + pycuda (or torch.cuda),
`torch_runner` needs torch,
`openvino` needs openvino. Nothing heavy is imported by this package itself.
"""
from __future__ import annotations

import importlib.util
import shutil

from lrformer_deploy.errors import install_hint


def onnxruntime_providers() -> list[str]:
    """The execution providers the installed onnxruntime offers ([] without onnxruntime)."""
    if importlib.util.find_spec("onnxruntime") is None:
        return []
    import onnxruntime as ort

    return list(ort.get_available_providers())


def available_backends() -> dict[str, list[str] | bool]:
    """What this machine can run: ONNX Runtime providers, and whether TensorRT / torch are installed."""
    return {
        "onnxruntime": onnxruntime_providers(),
        "tensorrt": importlib.util.find_spec("tensorrt") is not None,
        "pycuda": importlib.util.find_spec("pycuda") is not None,
        "torch": importlib.util.find_spec("torch") is not None,
        "openvino": importlib.util.find_spec("openvino") is not None,
    }


def openvino_missing() -> str | None:
    """Why OpenVINO cannot be used here, else None (a cheap check: no import)."""
    if importlib.util.find_spec("openvino") is None:
        return "OpenVINO is not installed (pip install 'lrformer-deploy[openvino]')"
    return None


def tensorrt_missing(purpose: str = "build") -> str | None:
    """Why TensorRT cannot be used here, else None: the one answer for the engine step, the Segmenter's
    `auto` choice, lrformer-bench and lrformer-eval. A cheap check (no import, no GPU query).

    purpose "build": the tensorrt package and an NVIDIA GPU (nvidia-smi). "run": the tensorrt package and
    a CUDA memory provider (pycuda or torch); nvidia-smi is not required there, as Jetson boards lack it.
    """
    if importlib.util.find_spec("tensorrt") is None:
        return f"TensorRT is not installed ({install_hint('tensorrt')} on a machine with an NVIDIA GPU)"
    if purpose == "run":
        if importlib.util.find_spec("pycuda") is None and importlib.util.find_spec("torch") is None:
            return f"TensorRT needs pycuda or torch for CUDA memory ({install_hint('pycuda')})"
        return None
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU found (nvidia-smi is not installed)"
    return None
