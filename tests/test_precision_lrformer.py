"""The precision passes on a real (tiny, random-weight) LRFormer export: demo variant, 6 classes, 128x128.

Exported with the project's exporter (lrformer_deploy.build.export). Slow on 2 CPU cores (the export dominates).
"""
from __future__ import annotations

import collections

import numpy as np
import pytest

pytestmark = pytest.mark.slow

SIZE = (128, 128)


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    model_mod = pytest.importorskip("lrformer_deploy.model")
    folder = tmp_path_factory.mktemp("demo")
    torch.manual_seed(0)
    model = model_mod.build_model("demo", 6)
    from lrformer_deploy.build.export import export_onnx
    from lrformer_deploy.data.datasets import get_dataset

    result = export_onnx(model, folder, "demo", size=SIZE, head="mask", dataset=get_dataset("synthetic"),
                         variant="demo", quiet=True)
    return result.onnx_path


@pytest.fixture(scope="module")
def video_frames(shared_video):
    from lrformer_deploy.precision import load_calibration_frames

    frames = load_calibration_frames(shared_video, 16, SIZE)
    return frames[0::2], frames[1::2]  # calibration, held-back


def test_fp16_lrformer_keeps_sensitive_ops_and_agrees(demo_onnx, video_frames, tmp_path):
    from lrformer_deploy.precision import accuracy_report, convert_fp16

    calib, held = video_frames
    out = tmp_path / "demo-fp16.onnx"
    record = convert_fp16(demo_onnx, out, calib)
    kept = collections.Counter(k["op"] for k in record["kept_fp32"])
    assert kept["LayerNormalization"] >= 1 and kept["Softmax"] >= 1 and kept["ArgMax"] == 1
    assert record["fp16_op_counts"].get("Conv", 0) > 0 and record["fp16_op_counts"].get("MatMul", 0) > 0
    report = accuracy_report(demo_onnx, out, held, precision="fp16")
    print("LRFormer demo fp16:", report["mask_agreement"], report["logits_rel_error"], record["fp32_op_counts"])
    assert report["mask_agreement"] >= 0.995 and 0 < report["logits_rel_error"] < 5e-3


def test_int8_lrformer_qdq_and_agreement(demo_onnx, video_frames, tmp_path):
    from lrformer_deploy.precision import accuracy_report, quantize_int8

    calib, held = video_frames
    out = tmp_path / "demo-int8.onnx"
    record = quantize_int8(demo_onnx, out, calib, count=len(calib), method="percentile")
    again = quantize_int8(demo_onnx, out, calib, count=len(calib), method="percentile")
    assert (record["calibration"]["cache_hit"], again["calibration"]["cache_hit"]) == (False, True)
    assert record["graph"]["quantized_ops"].get("Conv", 0) > 0
    assert record["graph"]["per_channel_weight_scales"] > 0
    report = accuracy_report(demo_onnx, out, held, precision="int8")
    print("LRFormer demo int8:", report["mask_agreement"], report["logits_rel_error"])
    assert report["passed"]
