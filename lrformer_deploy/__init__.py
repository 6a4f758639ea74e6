"""lrformer-deploy: LRFormer -> static ONNX -> FP16/INT8 graphs -> TensorRT engines -> runtime.

Importing the package is cheap and torch-free; torch is imported only by what needs it
(`load_checkpoint`, export), and the runtime (`lrformer_deploy.runtime`) never needs it.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load_checkpoint", "build_model", "Segmenter", "__version__"]


def __getattr__(name: str):
    if name == "load_checkpoint":
        from .checkpoint import load_checkpoint

        return load_checkpoint
    if name == "build_model":
        from .model import build_model

        return build_model
    if name == "Segmenter":
        from .runtime import Segmenter

        return Segmenter
    raise AttributeError(f"module 'lrformer_deploy' has no attribute {name!r}")
