"""Reduced-precision graphs, decided in ONNX and checked on the CPU with ONNX Runtime.

- convert_fp16: mixed FP16/FP32 graph, sensitive ops kept FP32 by policy and by measured ranges.
- quantize_int8: explicit Q/DQ INT8 graph (TensorRT's symmetric, per-channel weight scheme), with a
  calibration cache next to the artifact.
- accuracy_report: logits relative error and mask agreement vs the FP32 graph; raises below threshold.
- load_calibration_frames: frames from an image folder or a video, preprocessed like inference.
- make_precision_graph: the export CLI's one call (conversion + held-back accuracy check);
  target="tensorrt" (float ops FP16 where safe) or "cpu" (INT8 with FP32 float ops).
- measure.stream: the one streaming pass over frames (FP16 statistics in the graph, INT8 ranges).

No torch anywhere here; onnx and onnxruntime are imported inside the functions.
"""
from lrformer_deploy.contract import CALIB_METHODS as CALIBRATION_METHODS
from lrformer_deploy.contract import REDUCED_PRECISIONS as PRECISIONS
from lrformer_deploy.contract import TARGETS
from lrformer_deploy.precision.accuracy import DEFAULT_MIN_AGREEMENT, AccuracyBelowThreshold, accuracy_report
from lrformer_deploy.precision.calibration import load_calibration_frames
from lrformer_deploy.precision.fp16 import POLICY_FP32_OPS, convert_fp16
from lrformer_deploy.precision.int8 import quantize_int8
from lrformer_deploy.precision.pipeline import make_precision_graph, output_path

__all__ = [
    "AccuracyBelowThreshold",
    "CALIBRATION_METHODS",
    "DEFAULT_MIN_AGREEMENT",
    "POLICY_FP32_OPS",
    "accuracy_report",
    "convert_fp16",
    "load_calibration_frames",
    "make_precision_graph",
    "output_path",
    "PRECISIONS",
    "quantize_int8",
    "TARGETS",
]
