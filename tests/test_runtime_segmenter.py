"""Segmenter API and backends on CPU (ONNX Runtime), plus TensorRT checks that skip without a GPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from lrformer_deploy.errors import UserError
from lrformer_deploy.runtime import Segmenter
from lrformer_deploy.runtime.backends.ort import OnnxRuntimeRunner
from lrformer_deploy.runtime.backends.trt import check_engine_record
from lrformer_deploy.runtime.pipeline import PipelineOptions, run_pipeline
from lrformer_deploy.runtime.sinks import Outputs
from lrformer_deploy.runtime.sources import open_source

REPO = Path(__file__).resolve().parent.parent
RED, GREEN, BLUE = (0, 0, 255), (0, 255, 0), (255, 0, 0)  # BGR


def two_colour_frame(h: int = 45, w: int = 120, left=RED, right=BLUE) -> np.ndarray:
    frame = np.zeros((h, w, 3), np.uint8)
    frame[:, : w // 2] = left
    frame[:, w // 2:] = right
    return frame


@pytest.mark.parametrize("head", ["mask", "logits"])
@pytest.mark.parametrize("resize", ["stretch", "keep-ratio"])
def test_segmenter_maps_colours_to_classes_at_frame_size(tiny_model, head, resize):
    seg = Segmenter(tiny_model(head=head, size=(64, 64)), resize=resize)
    mask = seg(two_colour_frame())
    assert mask.shape == (45, 120) and mask.dtype == np.uint8
    # Class 0 = red, 2 = blue; away from the seam (bilinear logits blur it by a few pixels).
    assert np.all(mask[:, :50] == 0) and np.all(mask[:, 70:] == 2)
    assert seg.class_names == ("red", "green", "blue")
    assert seg.palette[0] == (255, 0, 0)
    assert seg.input_size == (64, 64)
    assert seg.manifest["format"] == "lrformer-deploy-manifest"
    assert seg.backend_name.startswith("onnxruntime")


def test_segment_batch_chunks_by_model_batch(tiny_model):
    seg = Segmenter(tiny_model(batch=4, size=(32, 32)))
    assert seg.batch_size == 4
    colours = [RED, GREEN, BLUE, GREEN, RED, BLUE]
    frames = [np.full((20 + 5 * i, 30, 3), c, np.uint8) for i, c in enumerate(colours)]
    masks = seg.segment_batch(frames)
    assert [m.shape for m in masks] == [f.shape[:2] for f in frames]
    assert [int(np.unique(m)[0]) for m in masks] == [0, 1, 2, 1, 0, 2]
    assert all(len(np.unique(m)) == 1 for m in masks)


def test_manifest_json_and_onnx_paths_agree(tiny_model):
    onnx_path = tiny_model()
    frame = two_colour_frame(left=GREEN)
    a = Segmenter(onnx_path)(frame)
    b = Segmenter(onnx_path.with_suffix(".json"))(frame)
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) == {1, 2}


def test_onnx_without_manifest_warns_and_runs(tiny_model, capsys):
    seg = Segmenter(tiny_model(manifest=False, head="logits"))
    assert "no manifest" in capsys.readouterr().err
    assert seg.spec.output_kind == "logits" and seg.spec.num_classes == 3
    assert np.all(seg(np.full((10, 10, 3), BLUE, np.uint8)) == 2)


def test_manifest_that_disagrees_with_the_graph_is_refused(tiny_model):
    onnx_path = tiny_model(size=(32, 32))
    manifest = json.loads(onnx_path.with_suffix(".json").read_text())
    manifest["input"]["shape"] = [1, 3, 64, 64]
    onnx_path.with_suffix(".json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="manifest says"):
        Segmenter(onnx_path)


@pytest.mark.parametrize("name, content, message", [
    ("missing.onnx", None, "not found"),
    ("empty.onnx", b"", "empty"),
    ("junk.onnx", b"not a protobuf at all", "cannot load ONNX"),
    ("m.txt", b"x", "unsupported model file"),
    ("bad.json", b"{nope", "not valid JSON"),
    ("other.json", b'{"a": 1}', "not an lrformer-deploy manifest"),
])
def test_bad_model_files_are_user_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        Segmenter(path)


def test_backend_choices_are_checked(tiny_model, tmp_path):
    onnx_path = tiny_model()
    with pytest.raises(UserError, match="unknown backend"):
        Segmenter(onnx_path, backend="tensorflow")
    with pytest.raises(UserError, match="no TensorRT engine"):
        Segmenter(onnx_path, backend="tensorrt")
    with pytest.raises(UserError, match="--backend torch runs"):
        Segmenter(onnx_path, backend="torch")
    with pytest.raises(UserError, match="unknown device"):
        Segmenter(onnx_path, device="tpu")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 64)
    if not _has_tensorrt():
        with pytest.raises(UserError, match="TensorRT"):
            Segmenter(engine)


def test_runner_is_a_context_manager(tiny_model):
    runner = OnnxRuntimeRunner(tiny_model(size=(16, 16)), device="cpu")
    with runner as active:
        out = active.infer({"image": np.zeros((1, 3, 16, 16), np.float32)})
        assert out["mask"].shape == (1, 16, 16) and out["mask"].dtype == np.int32
        assert runner.is_active
    assert not runner.is_active and runner.session is None


@pytest.mark.parametrize("spin_wait,env,expected", [(None, None, ""), (False, None, "0"), (None, "0", "0"),
                                                    (True, "0", "")])
def test_runner_spin_wait_reaches_the_session(tiny_model, monkeypatch, spin_wait, env, expected):
    """spin_wait=False (or LRFORMER_ORT_SPIN=0 when not given) lets idle ORT threads sleep."""
    if env is None:
        monkeypatch.delenv("LRFORMER_ORT_SPIN", raising=False)
    else:
        monkeypatch.setenv("LRFORMER_ORT_SPIN", env)
    with OnnxRuntimeRunner(tiny_model(size=(16, 16)), device="cpu", spin_wait=spin_wait) as runner:
        options = runner.session.get_session_options()
        try:
            value = options.get_session_config_entry("session.intra_op.allow_spinning")
        except RuntimeError:   # never set: ONNX Runtime's default, spinning
            value = ""
        assert value == expected


def test_segmenter_is_safe_to_share_between_threads(tiny_model):
    seg = Segmenter(tiny_model(head="logits"))
    frames = [two_colour_frame(left=c) for c in (RED, GREEN, BLUE, RED)]
    expected = [seg(f) for f in frames]
    results: dict[int, list[np.ndarray]] = {}

    def work(k: int) -> None:
        results[k] = [seg(f) for f in frames for _ in range(5)][::5]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        for got, want in zip(results[k], expected):
            np.testing.assert_array_equal(got, want)


def test_pipeline_api_on_a_small_video(tiny_model, tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (80, 48))
    colours = [RED, GREEN, BLUE] * 4
    for c in colours:
        writer.write(np.full((48, 80, 3), c, np.uint8))
    writer.release()
    seg = Segmenter(tiny_model(batch=2, size=(32, 32)))
    outputs = Outputs(video_path=tmp_path / "out.mp4", mask_dir=tmp_path / "masks", fps=10.0)
    result = run_pipeline(seg, open_source(str(video)), outputs, PipelineOptions(progress=False))
    assert result.frames == len(colours)
    masks = sorted((tmp_path / "masks").glob("clip_*.png"))
    assert [m.name for m in masks[:2]] == ["clip_000000.png", "clip_000001.png"]
    ids = [int(np.unique(cv2.imread(str(m), cv2.IMREAD_UNCHANGED))[0]) for m in masks]
    assert ids == [0, 1, 2] * 4
    summary = result.summary()
    assert set(summary["stage_ms_per_frame"]) == {"decode", "preprocess", "infer", "postprocess", "encode"}
    assert summary["latency_ms"]["p50"] > 0 and summary["fps"] > 0
    cap = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 80
    cap.release()


BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys
    class _NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked for this test")
            return None
    sys.meta_path.insert(0, _NoTorch())
""")


def test_runtime_imports_and_runs_without_torch(tiny_model, tmp_path):
    onnx_path = tiny_model(head="logits")
    (tmp_path / "sitecustomize.py").write_text(BLOCK_TORCH)
    script = textwrap.dedent(f"""
        import sys, numpy as np
        try:
            import torch
        except ImportError:
            pass
        else:
            sys.exit("the torch blocker is not active")
        import lrformer_deploy.runtime
        from lrformer_deploy.runtime import Segmenter
        seg = Segmenter({str(onnx_path)!r}, resize="keep-ratio")
        frame = np.zeros((30, 40, 3), np.uint8); frame[:] = (255, 0, 0)
        mask = seg(frame)
        assert mask.shape == (30, 40) and int(mask.max()) == 2, mask
        assert "torch" not in sys.modules
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


# ------------------------------------------------------------------------- TensorRT engine records
def test_engine_record_version_and_gpu_checks():
    rec = {"file": "m.engine", "tensorrt": "10.3.0", "gpu": "NVIDIA A100", "compute_capability": "8.0"}
    assert check_engine_record(rec, "10.3.0.26", "NVIDIA A100", (8, 0)) == []
    with pytest.raises(UserError, match="TensorRT 10.3.0 but TensorRT 10.4.0"):
        check_engine_record(rec, "10.4.0", "NVIDIA A100", (8, 0))
    with pytest.raises(UserError, match="compute capability 8.0"):
        check_engine_record(rec, "10.3.0", "NVIDIA L4", (8, 9))
    warnings = check_engine_record(rec, "10.3.0", "NVIDIA A30", (8, 0))
    assert len(warnings) == 1 and "A30" in warnings[0]
    relaxed = dict(rec, version_compatible=True, hardware_compatibility="ampere+")
    assert check_engine_record(relaxed, "10.7.0", "NVIDIA L4", (8, 9)) == []
    with pytest.raises(UserError, match="Ampere"):
        check_engine_record(relaxed, "10.7.0", "Tesla T4", (7, 5))
    assert check_engine_record(None, "10.3.0", "x", (8, 0))  # no record: a warning, not an error


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


# The real engine test goes through build() and Segmenter(backend="tensorrt"): tests/test_engine_publish.py.


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_tensorrt_rejects_an_engine_from_elsewhere(tmp_path):
    pytest.importorskip("tensorrt")
    engine = tmp_path / "foreign.engine"
    engine.write_bytes(b"\x00not an engine" * 100)
    with pytest.raises(UserError, match="could not load|TensorRT"):
        Segmenter(engine, backend="tensorrt")


@pytest.mark.slow
def test_checkpoint_runs_on_torch_and_through_in_memory_export(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("lrformer_deploy.model.checkpoint")
    from lrformer_deploy.model.lrformer import build_model

    torch.manual_seed(0)
    model = build_model("demo", num_classes=19)
    torch.save({"state_dict": model.state_dict(), "meta": {}}, tmp_path / "demo.pth")
    frame = np.random.default_rng(0).integers(0, 255, (100, 150, 3), dtype=np.uint8)
    eager = Segmenter(tmp_path / "demo.pth", backend="torch", input_size=(64, 96))
    exported = Segmenter(tmp_path / "demo.pth", backend="auto", input_size=(64, 96))
    assert eager.backend_name.startswith("torch") and exported.backend_name.startswith("onnxruntime")
    a, b = eager(frame), exported(frame)
    assert a.shape == b.shape == (100, 150)
    assert eager.class_names[0] == "road"  # 19 classes -> the Cityscapes preset
    # Same network; the paths differ only in where upsampling happens (host bilinear vs in-graph + nearest).
    assert (a == b).mean() > 0.9
    tmp_dir = exported._tmpdir
    exported.close()
    assert tmp_dir is not None and not tmp_dir.exists()


class OverlappingSegmenter:
    """A Segmenter whose runner overlaps (as TensorRT's submit/collect): records the order of the calls and
    computes each result only at collect, so a result handed over before its collect would be missing."""

    can_overlap = True

    def __init__(self, seg) -> None:
        self.seg, self.calls, self.count = seg, [], 0

    def __getattr__(self, name):
        return getattr(self.seg, name)

    def submit(self, tensor):
        self.count += 1
        self.calls.append(("submit", self.count))
        return self.count, tensor.copy()

    def collect(self, ticket):
        self.calls.append(("collect", ticket[0]))
        return self.seg.infer(ticket[1])


@pytest.mark.parametrize("overlap", [True, False, "env=0"])
def test_pipeline_overlaps_submit_of_the_next_batch_with_the_previous_one(tiny_model, tmp_path, overlap, monkeypatch):
    if overlap == "env=0":
        monkeypatch.setenv("LRFORMER_TRT_OVERLAP", "0")
        overlap = None
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (80, 48))
    colours = [RED, GREEN, BLUE, BLUE, RED, GREEN, GREEN]  # 7 frames, batch 2: the last batch is padded
    for c in colours:
        writer.write(np.full((48, 80, 3), c, np.uint8))
    writer.release()
    seg = OverlappingSegmenter(Segmenter(tiny_model(batch=2, size=(32, 32))))
    result = run_pipeline(seg, open_source(str(video)), Outputs(mask_dir=tmp_path / "masks"),
                          PipelineOptions(progress=False, overlap=overlap))
    assert result.frames == len(colours)
    masks = sorted((tmp_path / "masks").glob("clip_*.png"))
    ids = [int(np.unique(cv2.imread(str(m), cv2.IMREAD_UNCHANGED))[0]) for m in masks]
    assert ids == [{RED: 0, GREEN: 1, BLUE: 2}[c] for c in colours]  # in order, same as without overlap
    if overlap is True:
        # Batch k+1 is submitted before batch k is collected; every batch is collected once, in order.
        assert seg.calls == [("submit", 1)] + [x for k in range(2, 5) for x in (("submit", k), ("collect", k - 1))] \
            + [("collect", 4)]
    else:
        assert seg.calls == []  # turned off: the plain infer path


def test_segmenter_submit_collect_without_an_overlapping_runner_equals_infer(tiny_model):
    seg = Segmenter(tiny_model(batch=2, size=(32, 32)))
    assert not seg.can_overlap
    tensor, _ = seg.preprocessor.batch([two_colour_frame(), two_colour_frame(left=GREEN)], 2)
    np.testing.assert_array_equal(seg.collect(seg.submit(tensor)), seg.infer(tensor))
