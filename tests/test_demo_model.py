"""The shipped demo model, end to end as a user runs it: the README's main command, the runtime agreeing
with the exporter's own computation, and FP16/INT8 accuracy against FP32 with trained weights."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lrformer_deploy.build import demo

from lrformer_deploy.data import synthetic
from lrformer_deploy.data.evaluation import ConfusionMatrix
from lrformer_deploy.model.lrformer import logits_to_mask
from lrformer_deploy.runtime import Segmenter
from lrformer_deploy.runtime.preprocess import preprocess_image

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "synthetic-scenes.mp4"


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory):
    return demo.default_model(tmp_path_factory.mktemp("demo-cache"))


def _sample_frames(step: int = 4) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(SAMPLE))
    frames, i = [], 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if i % step == 0:
            frames.append(frame)
        i += 1
    cap.release()
    return frames


def test_shipped_graph_is_the_shipped_checkpoints(demo_onnx):
    """The graph shipped for torch-free quick starts is the shipped checkpoint's: its manifest records the
    checkpoint's sha256, and a fresh export of the checkpoint (demo_onnx) gives the same masks on the
    sample video. A retrained checkpoint without a re-shipped graph (samples/ship_demo_graph.py) fails here."""
    from lrformer_deploy import manifest as mf

    manifest = json.loads(demo.SHIPPED_GRAPH.with_suffix(".json").read_text())
    assert manifest["model"]["checkpoint_sha256"] == mf.sha256_file(demo.CHECKPOINT)
    assert manifest["artifacts"]["onnx"]["sha256"] == mf.sha256_file(demo.SHIPPED_GRAPH)
    assert manifest["artifacts"]["onnx"]["file"] == demo.SHIPPED_GRAPH.name
    assert demo.shipped_model() == demo.SHIPPED_GRAPH and demo.default_model() == demo.SHIPPED_GRAPH
    fresh = json.loads(demo_onnx.with_suffix(".json").read_text())
    assert manifest["input"] == fresh["input"] and manifest["output"] == fresh["output"]
    assert manifest["model"] == fresh["model"] and manifest["opset"] == fresh["opset"]
    # Small: the weights once, nothing folded into large constants (the checkpoint holds the same weights).
    assert demo.SHIPPED_GRAPH.stat().st_size < 1.1 * demo.CHECKPOINT.stat().st_size
    frames = _sample_frames()
    assert len(frames) == 21
    with Segmenter(demo.SHIPPED_GRAPH) as shipped, Segmenter(demo_onnx) as exported:
        for frame in frames:
            np.testing.assert_array_equal(shipped(frame), exported(frame))


def test_stale_or_broken_shipped_graph_is_not_used(tmp_path, monkeypatch):
    retrained = tmp_path / "lrformer-demo-synthetic.pth"
    retrained.write_bytes(demo.CHECKPOINT.read_bytes() + b"\0")  # another checkpoint's sha256
    monkeypatch.setattr(demo, "CHECKPOINT", retrained)
    assert demo.shipped_model() is None
    monkeypatch.undo()
    graph = tmp_path / demo.SHIPPED_GRAPH.name
    graph.write_bytes(demo.SHIPPED_GRAPH.read_bytes()[:-1])  # a truncated graph
    graph.with_suffix(".json").write_text(demo.SHIPPED_GRAPH.with_suffix(".json").read_text())
    monkeypatch.setattr(demo, "SHIPPED_GRAPH", graph)
    assert demo.shipped_model() is None
    graph.write_bytes((demo.WEIGHTS / graph.name).read_bytes())
    assert demo.shipped_model() == graph  # the control: the same files, intact, are used
    graph.with_suffix(".json").write_text("{not json")
    assert demo.shipped_model() is None


def test_runtime_mask_equals_the_exporters_computation(demo_onnx, shared_video):
    """Segmenter(frame) == PyTorch model on the exporter's preprocessing (preprocess_image) of that frame."""
    from lrformer_deploy.model.checkpoint import load_checkpoint

    model = load_checkpoint(demo.CHECKPOINT, verbose=False)
    seg = Segmenter(demo_onnx, backend="onnxruntime")
    h, w = seg.input_size
    cap = cv2.VideoCapture(str(SAMPLE))
    ok, scene = cap.read()
    cap.release()
    cap = cv2.VideoCapture(str(shared_video))
    ok2, street = cap.read()
    cap.release()
    assert ok and ok2 and scene.shape[:2] == (h, w)
    for frame in (scene, street):
        x, _ = preprocess_image(frame, (h, w), seg.manifest["input"]["mean"], seg.manifest["input"]["std"])
        with torch.no_grad():
            ref = logits_to_mask(model(torch.from_numpy(x)), (h, w))[0].numpy()
        if frame.shape[:2] != (h, w):   # the runtime maps the mask back to the frame by nearest sampling
            ref = cv2.resize(ref.astype(np.uint8), (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST)
        got = seg(frame)
        assert got.shape == frame.shape[:2]
        assert (got == ref).mean() > 0.995


def test_readme_main_command_segments_the_sample_video(tmp_path):
    """`lrformer-infer samples/synthetic-scenes.mp4`, no other arguments; masks follow the real shapes."""
    video = tmp_path / "synthetic-scenes.mp4"
    video.write_bytes(SAMPLE.read_bytes())
    env = {**os.environ, "LRFORMER_DEPLOY_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "lrformer_deploy.cli.infer", str(video), "--quiet",
                        "--save-mask", str(tmp_path / "masks")], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "synthetic-scenes_seg.mp4"
    cap = cv2.VideoCapture(str(out))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == 84 and cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 448 and abs(cap.get(cv2.CAP_PROP_FPS) - 12) < 0.01
    # The sample video is scene_frames(84, (256, 448), seed 2024): score the saved masks against its labels.
    cm = ConfusionMatrix(synthetic.NUM_CLASSES)
    for i, (_, label) in enumerate(synthetic.scene_frames(84, (256, 448), 2024)):
        if i % 7 == 0:
            mask = cv2.imread(str(tmp_path / "masks" / f"synthetic-scenes_{i:06d}.png"), cv2.IMREAD_UNCHANGED)
            cm.update(mask, label)
    assert cm.metrics().miou > 0.65   # measured 0.8 on these frames; chance level is ~0.17


@pytest.mark.slow
def test_fp16_and_int8_keep_the_demo_models_accuracy(tmp_path):
    """Export FP32/FP16/INT8 with the CLI, compare with lrformer-eval on held-out synthetic scenes."""
    data = synthetic.write_dataset(tmp_path / "syn", n_train=24, n_val=48, size=(256, 448), seed=11)
    out = tmp_path / "art"
    r = subprocess.run([sys.executable, "-m", "lrformer_deploy.cli.export", "--ckpt", str(demo.CHECKPOINT),
                        "--preset", "demo", "--fp16", "--int8", "--calib", str(data / "images" / "train"),
                        "--calib-count", "16", "--output-dir", str(out), "--no-engine"],
                       capture_output=True, text=True, timeout=900, cwd=REPO)
    assert r.returncode == 0, r.stderr
    stem = out / "lrformer-demo-synthetic-256x448"
    models = [f"{stem}.onnx", f"{stem}-fp16.onnx", f"{stem}-int8.onnx"]
    for m in models[1:]:
        manifest = json.loads(Path(m).with_suffix(".json").read_text())
        assert manifest["precision"] in ("fp16", "int8") and manifest["precision_details"]["accuracy"]
    r = subprocess.run([sys.executable, "-m", "lrformer_deploy.cli.eval", "--compare", *models, "--data", str(data),
                        "--json"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    fp32, fp16, int8 = (m["mIoU"] for m in json.loads(r.stdout)["models"])
    assert fp32 >= 0.80
    assert (fp32 - fp16) * 100 <= 0.2
    assert (fp32 - int8) * 100 <= 1.0
