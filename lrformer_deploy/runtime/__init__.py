"""Torch-free runtime: backends (TensorRT, ONNX Runtime, PyTorch), pre/post-processing, video pipeline.

Importing this package is cheap and never imports torch, TensorRT or onnxruntime; the names below are
loaded on first use.

    from lrformer_deploy.runtime import Segmenter
    seg = Segmenter("model.onnx")            # or .json manifest, .engine, .pth
    mask = seg(frame_bgr)
"""
from __future__ import annotations

from lrformer_deploy.lazy import lazy_exports

_EXPORTS = {
    "Segmenter": "lrformer_deploy.runtime.segmenter",
    "BACKENDS": "lrformer_deploy.runtime.segmenter",
    "ModelSpec": "lrformer_deploy.runtime.spec",
    "resolve_model": "lrformer_deploy.runtime.spec",
    "Preprocessor": "lrformer_deploy.runtime.preprocess",
    "Geometry": "lrformer_deploy.runtime.preprocess",
    "preprocess_image": "lrformer_deploy.runtime.preprocess",
    "Postprocessor": "lrformer_deploy.runtime.postprocess",
    "mask_to_frame": "lrformer_deploy.runtime.postprocess",
    "logits_to_frame": "lrformer_deploy.runtime.postprocess",
    "run_pipeline": "lrformer_deploy.runtime.pipeline",
    "PipelineOptions": "lrformer_deploy.runtime.pipeline",
    "available_backends": "lrformer_deploy.runtime.backends",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
