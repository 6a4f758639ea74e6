"""Backends behind one interface (`Runner`: activate / infer / deactivate, usable as a context manager).

Modules are imported lazily: `ort` needs onnxruntime, `trt` needs tensorrt + pycuda (or torch.cuda),
`torch_runner` needs torch. Nothing heavy is imported by this package itself.
"""
from __future__ import annotations

import importlib.util


def available_backends() -> dict[str, list[str] | bool]:
    """What this machine can run: ONNX Runtime providers, and whether TensorRT / torch are installed."""
    providers: list[str] = []
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime as ort

        providers = list(ort.get_available_providers())
    return {
        "onnxruntime": providers,
        "tensorrt": importlib.util.find_spec("tensorrt") is not None,
        "pycuda": importlib.util.find_spec("pycuda") is not None,
        "torch": importlib.util.find_spec("torch") is not None,
    }
