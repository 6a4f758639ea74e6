"""lrformer-deploy: LRFormer -> static ONNX -> FP16/INT8 graphs -> TensorRT engines -> runtime.

Importing the package is cheap and torch-free; torch is imported only by what needs it
(`load_checkpoint`, export), and the runtime (`lrformer_deploy.runtime`) never needs it.
"""
from __future__ import annotations

__version__ = "0.1.0"

from lrformer_deploy.lazy import lazy_exports

_EXPORTS = {
    "load_checkpoint": "lrformer_deploy.model.checkpoint",
    "build_model": "lrformer_deploy.model.lrformer",
    "Segmenter": "lrformer_deploy.runtime.segmenter",
}
__all__ = [*_EXPORTS, "__version__"]
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
