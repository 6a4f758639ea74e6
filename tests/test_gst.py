"""The lrformerseg GStreamer element, as pipelines and a C program use it (real video frames, the demo model).

The clip: the first 40 frames of car-detection.mp4, re-encoded with OpenCV (mp4v) to keep CI time
short. Every test compares against what the element must equal (the input's frames, the runtime's
Segmenter on the same decoded frames), so none depends on hard-coded outputs. Skips only when
GStreamer or its Python plugin loader is absent.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from lrformer_deploy.gst import check
from lrformer_deploy.gst.paths import PLUGIN_DIR, PLUGIN_FILE

REPO = Path(__file__).resolve().parent.parent
CLIP_FRAMES = 40
TIMEOUT = 300


def _gst_missing() -> str | None:
    if shutil.which("gst-launch-1.0") is None:
        return "GStreamer is not installed (gst-launch-1.0 not found)"
    return None


pytestmark = pytest.mark.skipif(_gst_missing() is not None, reason=_gst_missing() or "")


@pytest.fixture(scope="session")
def gst_env(tmp_path_factory) -> dict[str, str]:
    # PATH without this run's venv: the embedded Python would adopt it (see lrformer-gst --check).
    env = check.gst_environment(dict(os.environ, GST_REGISTRY=str(tmp_path_factory.mktemp("gst") / "registry.bin")))
    library = subprocess.run(["gst-inspect-1.0", "python"], env=env, capture_output=True, text=True)
    if library.returncode != 0:
        pytest.skip("GStreamer's Python plugin loader is not installed (gstreamer1.0-python3-plugin-loader)")
    return env


@pytest.fixture(scope="session")
def embedded_python(gst_env) -> str:
    library = check.loader_library(gst_env)
    version = check.embedded_python_version(library) if library else None
    python = check.embedded_interpreter(version) if version else None
    assert python, f"cannot tell which Python {library} embeds"
    return python


@pytest.fixture(scope="session")
def demo_onnx() -> Path:
    from lrformer_deploy.build.demo import default_model

    return Path(default_model())


@pytest.fixture(scope="session")
def clip(shared_video, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "car-40.mp4"
    cap = cv2.VideoCapture(str(shared_video))
    fps = cap.get(cv2.CAP_PROP_FPS)
    writer = None
    for _ in range(CLIP_FRAMES):
        ok, frame = cap.read()
        assert ok
        if writer is None:
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, frame.shape[1::-1])
        writer.write(frame)
    writer.release()
    cap.release()
    return path


def launch(env, *pipeline: str, messages: bool = False) -> subprocess.CompletedProcess:
    cmd = ["gst-launch-1.0", *(["-m"] if messages else []), *" ".join(pipeline).split()]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def frame_count(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_mask_mode_equals_segmenter_on_the_same_decoded_frames(gst_env, clip, demo_onnx, tmp_path, backend):
    """On both CPU backends: OpenVINO once crashed the element (SIGSEGV on GStreamer's streaming thread)."""
    from lrformer_deploy.runtime import Segmenter

    if backend == "openvino" and importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed (the openvino extra)")
    frames_raw, masks_raw = tmp_path / "frames.raw", tmp_path / "masks.raw"
    proc = launch(gst_env, f"filesrc location={clip} ! decodebin ! videoconvert ! video/x-raw,format=BGR",
                  f"! tee name=t t. ! queue ! filesink location={frames_raw}",
                  f"t. ! queue ! lrformerseg model={demo_onnx} mode=mask backend={backend} ! video/x-raw,format=GRAY8",
                  f"! filesink location={masks_raw}", messages=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr
    h, w = 432, 768  # rows of both formats need no padding at this width
    frames = np.fromfile(frames_raw, np.uint8).reshape(-1, h, w, 3)
    masks = np.fromfile(masks_raw, np.uint8).reshape(-1, h, w)
    assert len(frames) == len(masks) == CLIP_FRAMES == frame_count(clip)
    posted = re.findall(r"lrformerseg, frame=\(guint64\)(\d+), pts=\(guint64\)(\d+).*?classes=\(int\)<([^>]*)>",
                        proc.stdout)
    assert [int(f) for f, _, _ in posted] == list(range(CLIP_FRAMES))
    with Segmenter(demo_onnx, backend=backend) as seg:
        for i, (frame, mask) in enumerate(zip(frames, masks)):
            expected = seg(frame)
            assert np.array_equal(mask, expected), f"frame {i}: {np.mean(mask != expected):.4%} pixels differ"
            counts = np.bincount(expected.ravel())
            assert {int(c) for c in posted[i][2].split(",")} == set(np.flatnonzero(counts).tolist())


def test_rgb_input_gives_the_same_masks_as_bgr(gst_env, clip, demo_onnx, tmp_path):
    outs = {}
    for fmt in ("BGR", "RGB"):
        outs[fmt] = tmp_path / f"{fmt}.raw"
        proc = launch(gst_env, f"filesrc location={clip} ! decodebin ! videoconvert ! video/x-raw,format={fmt}",
                      f"! lrformerseg model={demo_onnx} mode=mask ! filesink location={outs[fmt]}")
        assert proc.returncode == 0, proc.stderr
    bgr, rgb = (np.fromfile(outs[f], np.uint8) for f in ("BGR", "RGB"))
    assert bgr.size == CLIP_FRAMES * 432 * 768 and np.array_equal(bgr, rgb)


def test_overlay_keeps_frame_count_size_and_timestamps(gst_env, embedded_python, clip, demo_onnx, tmp_path):
    from lrformer_deploy.runtime import Segmenter
    from lrformer_deploy.runtime.overlay import blend, palette_lut

    proc = subprocess.run([embedded_python, str(REPO / "tests" / "gst_probe.py"), str(clip), str(tmp_path),
                           f"model={demo_onnx}", "mode=overlay", "opacity=0.6"],
                          env=gst_env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "probe.json").read_text())
    assert len(record["sink"]) == CLIP_FRAMES == frame_count(clip)
    assert record["src"] == record["sink"]  # pts, duration and byte size of every frame
    assert record["caps"]["src"] == record["caps"]["sink"]
    assert "width=(int)768" in record["caps"]["src"] and "height=(int)432" in record["caps"]["src"]
    pts = [p for p, _, _ in record["sink"]]
    assert pts == sorted(pts) and len(set(pts)) == CLIP_FRAMES
    with Segmenter(demo_onnx) as seg:
        lut = palette_lut(seg.palette)
        for i in range(3):
            frame = np.fromfile(tmp_path / f"in_{i}.raw", np.uint8).reshape(432, 768, 3)
            out = np.fromfile(tmp_path / f"out_{i}.raw", np.uint8).reshape(432, 768, 3)
            assert np.array_equal(out, blend(frame, seg(frame), lut, 0.6))


def test_both_mode_overlay_on_src_and_masks_on_the_mask_pad(gst_env, clip, demo_onnx, tmp_path):
    from lrformer_deploy.runtime import Segmenter
    from lrformer_deploy.runtime.overlay import blend, palette_lut

    raw = {k: tmp_path / f"{k}.raw" for k in ("frames", "overlay", "masks")}
    proc = launch(gst_env, f"filesrc location={clip} ! decodebin ! videoconvert ! video/x-raw,format=BGR",
                  f"! tee name=t t. ! queue ! filesink location={raw['frames']}",
                  f"t. ! queue ! lrformerseg name=s model={demo_onnx} mode=both ! queue ! filesink location={raw['overlay']}",
                  f"s.mask ! queue ! filesink location={raw['masks']}")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    frames = np.fromfile(raw["frames"], np.uint8).reshape(-1, 432, 768, 3)
    overlay = np.fromfile(raw["overlay"], np.uint8).reshape(-1, 432, 768, 3)
    masks = np.fromfile(raw["masks"], np.uint8).reshape(-1, 432, 768)
    assert len(frames) == len(overlay) == len(masks) == CLIP_FRAMES
    with Segmenter(demo_onnx) as seg:
        lut = palette_lut(seg.palette)
        for i in (0, CLIP_FRAMES // 2, CLIP_FRAMES - 1):
            expected = seg(frames[i])
            assert np.array_equal(masks[i], expected)
            assert np.array_equal(overlay[i], blend(frames[i], expected, lut, 0.5))


def _rows(raw: np.ndarray, count: int, h: int, w: int, channels: int) -> np.ndarray:
    """Frames out of raw video bytes whose rows are padded to 4 bytes, as GStreamer lays them out."""
    stride = (w * channels + 3) // 4 * 4
    frames = raw[: count * h * stride].reshape(count, h, stride)[:, :, : w * channels]
    return frames.reshape(count, h, w, channels) if channels > 1 else frames


def test_caps_change_mid_stream_and_padded_rows(gst_env, demo_onnx, tmp_path):
    """Two sizes in one stream (concat sends new caps); 162 px rows are padded in both BGR and GRAY8."""
    from lrformer_deploy.runtime import Segmenter

    frames_raw, masks_raw = tmp_path / "frames.raw", tmp_path / "masks.raw"
    proc = launch(gst_env, "concat name=c ! videoconvert ! video/x-raw,format=BGR ! tee name=t",
                  f"t. ! queue ! filesink location={frames_raw}",
                  f"t. ! queue ! lrformerseg model={demo_onnx} mode=mask ! filesink location={masks_raw}",
                  "videotestsrc num-buffers=3 pattern=ball ! video/x-raw,width=320,height=240 ! c.",
                  "videotestsrc num-buffers=2 pattern=smpte ! video/x-raw,width=162,height=96 ! c.")
    assert proc.returncode == 0, proc.stderr
    frames, masks = np.fromfile(frames_raw, np.uint8), np.fromfile(masks_raw, np.uint8)
    big_f, big_m = 3 * 240 * 320 * 3, 3 * 240 * 320
    assert frames.size == big_f + 2 * 96 * 488 and masks.size == big_m + 2 * 96 * 164
    pairs = list(zip(_rows(frames, 3, 240, 320, 3), _rows(masks, 3, 240, 320, 1)))
    pairs += list(zip(_rows(frames[big_f:], 2, 96, 162, 3), _rows(masks[big_m:], 2, 96, 162, 1)))
    with Segmenter(demo_onnx) as seg:
        for frame, mask in pairs:
            assert np.array_equal(mask, seg(np.ascontiguousarray(frame)))


@pytest.fixture(scope="session")
def c_sample(tmp_path_factory) -> Path:
    if shutil.which("pkg-config") is None or subprocess.run(["pkg-config", "--exists", "gstreamer-1.0"]).returncode:
        pytest.fail("GStreamer is installed but its development files are not (apt-get install libgstreamer1.0-dev)")
    out = tmp_path_factory.mktemp("c-sample") / "lrformer-seg"
    proc = subprocess.run(["make", "-s", "-C", str(REPO / "samples" / "c"), f"OUT={out}"], capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    return out


def test_c_sample_prints_one_line_per_frame_and_writes_the_video(gst_env, c_sample, clip, demo_onnx, tmp_path):
    out = tmp_path / "seg.webm"
    proc = subprocess.run([str(c_sample), str(clip), str(out), str(demo_onnx)], env=gst_env, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    frame_lines = [line for line in lines if line.startswith("frame ")]
    assert [int(line.split()[1]) for line in frame_lines] == list(range(CLIP_FRAMES))
    assert lines[-1].startswith(f"summary: {CLIP_FRAMES} frames")
    assert "should be floating" not in proc.stderr and "Traceback" not in proc.stderr
    assert frame_count(out) == CLIP_FRAMES


def test_c_sample_bad_model_path_exits_nonzero_with_the_element_message(gst_env, c_sample, clip, tmp_path):
    missing = tmp_path / "nope.onnx"
    proc = subprocess.run([str(c_sample), str(clip), str(tmp_path / "x.webm"), str(missing)], env=gst_env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 1
    assert f"error: lrformerseg: model file not found: {missing}" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("what", ["broken", "missing"])
def test_broken_or_missing_model_is_a_bus_error_without_traceback(gst_env, clip, tmp_path, what):
    model = tmp_path / "model.onnx"
    if what == "broken":
        model.write_bytes(b"\x08\x07 this is not an ONNX graph" * 10)
    proc = launch(gst_env, f"filesrc location={clip} ! decodebin ! videoconvert ! lrformerseg model={model}",
                  "! fakesink")
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    expected = "cannot load ONNX model model.onnx" if what == "broken" else f"model file not found: {model}"
    assert re.search(r"ERROR: from element .*lrformerseg0: lrformerseg: " + re.escape(expected), text), text
    assert "Traceback" not in text


def test_missing_runtime_packages_are_one_error_that_says_what_to_do(gst_env, embedded_python, clip, tmp_path):
    env = {k: v for k, v in gst_env.items() if k != check.SITE_ENV}
    bare = check.probe_modules(embedded_python, ["numpy", "cv2", "onnxruntime"], env)
    if not bare["missing"]:
        pytest.skip("the system Python already has numpy, OpenCV and onnxruntime")
    proc = launch(env, f"filesrc location={clip} ! decodebin ! videoconvert ! lrformerseg ! fakesink")
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "that GStreamer embeds cannot import" in text and 'eval "$(lrformer-gst --env)"' in text, text
    assert "Traceback" not in text


def test_lrformer_gst_discovery(gst_env):
    def cli(*args, env=gst_env):
        return subprocess.run([sys.executable, "-m", "lrformer_deploy.cli.gst", *args], env=env,
                              capture_output=True, text=True, timeout=TIMEOUT)

    folder = cli("--plugin-path").stdout.strip()
    assert Path(folder) == PLUGIN_DIR and (Path(folder) / "python" / "lrformerseg.py") == PLUGIN_FILE
    exports = cli("--env").stdout
    shown = subprocess.run(["sh", "-c", exports + 'printf "%s\\n" "$GST_PLUGIN_PATH"'], capture_output=True,
                           text=True).stdout
    assert str(PLUGIN_DIR) in shown.split(os.pathsep)[0]
    proc = cli("--check")
    assert proc.returncode == 0 and "MISSING" not in proc.stdout, proc.stdout
    assert "lrformerseg element" in proc.stdout
    bare = cli("--check", env={k: v for k, v in gst_env.items() if k not in (check.SITE_ENV, "GST_PLUGIN_PATH")})
    assert bare.returncode == 1 and "MISSING" in bare.stdout and "lrformer-gst --env" in bare.stdout
    usage = cli()
    assert usage.returncode == 2 and usage.stderr.startswith("error:")


def test_truncated_input_posts_a_warning_with_frames_read_of_stated(gst_env, demo_onnx, tmp_path):
    """A QuickTime file with its index in front (faststart, like most published MP4s) cut in half still
    states its length; the element counts what arrived and warns at EOS, and the pipeline ends normally."""
    full, cut = tmp_path / "full.mov", tmp_path / "cut.mov"
    proc = launch(gst_env, "videotestsrc num-buffers=20 pattern=ball ! video/x-raw,width=128,height=96,framerate=10/1",
                  f"! jpegenc ! qtmux faststart=true ! filesink location={full}")
    assert proc.returncode == 0, proc.stderr
    blob = full.read_bytes()
    cut.write_bytes(blob[: len(blob) // 2])
    for path, expect_warning in ((cut, True), (full, False)):
        masks = tmp_path / f"{path.stem}.raw"
        proc = launch(gst_env, f"filesrc location={path} ! decodebin ! videoconvert ! video/x-raw,format=BGR",
                      f"! lrformerseg model={demo_onnx} mode=mask ! filesink location={masks}", messages=True)
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        got = np.fromfile(masks, np.uint8).size // (96 * 128)
        found = re.search(r"WARNING: from element .*lrformerseg: read (\d+) of (\d+) frames", proc.stdout + proc.stderr)
        if expect_warning:
            assert found and (int(found[1]), int(found[2])) == (got, 20), proc.stdout[-2000:]
            assert 0 < got < 19  # every frame that came is segmented and kept
        else:
            assert found is None and got == 20, proc.stdout[-2000:]
