"""Faults below the signal level (issue 20): kill -9 leftovers, truncated media, oversized inputs, live and
network sources."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import bomb_png

REPO = Path(__file__).resolve().parent.parent
DEMO_CKPT = REPO / "lrformer_deploy" / "weights" / "lrformer-demo-synthetic.pth"


def env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", **extra)


def cli(command: str, *args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"lrformer_deploy.cli.{command}", *map(str, args)], cwd=cwd,
                          env=env(), capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------- 1. killed exports
def partial_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob(".*.partial") if p.is_dir())


def test_killed_export_leftovers_are_removed_by_the_next_export_but_a_live_ones_are_not(tmp_path):
    from lrformer_deploy import manifest as mf
    from lrformer_deploy.locks import OWNER_FILE, owned_temporary_folder

    out = tmp_path / "out"
    out.mkdir()
    args = ["--ckpt", DEMO_CKPT, "--size", "64x64", "--output-dir", out, "--name", "m", "--no-engine",
            "--target", "cpu", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "lrformer_deploy.cli.export", *map(str, args)], cwd=tmp_path,
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while (not any((p / OWNER_FILE).is_file() for p in partial_folders(out)) and proc.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.01)
        assert partial_folders(out), "the export never made its staging folder"
        time.sleep(0.5)  # mid-export: the graph is being traced into the folder
        proc.send_signal(signal.SIGKILL)  # no cleanup runs at all
    finally:
        proc.kill()
        proc.wait(timeout=30)
    killed = partial_folders(out)
    assert killed and all((p / OWNER_FILE).is_file() for p in killed)
    # Two more kinds of leftover: an owner file nobody holds (a killed process's), and an owner-less
    # folder from an older version, an hour old.
    orphan = out / ".m-fp16.abc123.partial"
    orphan.mkdir()
    (orphan / OWNER_FILE).write_text("999999")
    (orphan / "m-fp16.onnx").write_bytes(b"x" * 1000)
    legacy = out / ".m-int8.old.partial"
    legacy.mkdir()
    os.utime(legacy, (time.time() - 3600, time.time() - 3600))
    young = out / ".m-int8.young.partial"  # owner-less but new: maybe a live one a moment before its lock
    young.mkdir()
    with owned_temporary_folder(out, prefix=".m.", suffix=".partial") as live:
        proc = cli("export", *args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert live.is_dir(), "a live process's staging folder was removed"
        assert young.is_dir()
        left = set(partial_folders(out))
        assert left == {live, young}, left
    assert not live.exists()
    manifest = mf.load_manifest(out / "m.json")
    assert manifest["artifacts"]["onnx"]["sha256"] == mf.sha256_file(out / "m.onnx")


def test_publish_replaces_the_manifest_without_a_moment_where_it_is_missing(tmp_path, monkeypatch):
    """The old manifest is replaced by a rename, never unlinked first, and the folder is fsynced after."""
    from lrformer_deploy import atomic, manifest as mf

    target = tmp_path / "m.onnx"
    man = tmp_path / "m.json"
    target.write_bytes(b"old")
    man.write_text(json.dumps({"v": "old"}))
    staged = tmp_path / "staged.onnx"
    staged.write_bytes(b"new")
    seen_missing = []
    synced = []
    real_replace, real_unlink = os.replace, os.unlink

    def replace(src, dst):
        seen_missing.append(not man.exists())
        return real_replace(src, dst)

    def unlink(path, *a, **k):
        assert Path(path) != man, "publish unlinked the old manifest"
        return real_unlink(path, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(atomic, "fsync_dir", lambda folder: synced.append(Path(folder)))
    mf.publish([(staged, target)], {"v": "new"}, man)
    assert seen_missing and not any(seen_missing)
    assert json.loads(man.read_text()) == {"v": "new"} and target.read_bytes() == b"new"
    assert tmp_path.resolve() in synced


# ------------------------------------------------------------------------------- 2. truncated video
def truncated_avi(folder: Path, frames: int = 40, size=(48, 64)) -> tuple[Path, int]:
    """An MJPG AVI cut in half: its header still states `frames`, fewer decode. Returns (path, decodable)."""
    full = folder / "full.avi"
    writer = cv2.VideoWriter(str(full), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (size[1], size[0]))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    writer.release()
    blob = full.read_bytes()
    cut = folder / "cut.avi"
    cut.write_bytes(blob[: len(blob) // 2])
    cap = cv2.VideoCapture(str(cut))
    stated = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    decodable = 0
    while cap.read()[0]:
        decodable += 1
    cap.release()
    assert stated == frames and 0 < decodable < frames - 1
    return cut, decodable


def test_truncated_video_exits_1_with_one_line_and_keeps_what_it_read(tiny_model, tmp_path):
    cut, decodable = truncated_avi(tmp_path)
    out, masks, report = tmp_path / "cut_seg.mp4", tmp_path / "masks", tmp_path / "r.json"
    proc = cli("infer", cut, "--model", tiny_model(), "--output", out, "--save-mask", masks, "--json", report,
               "--quiet", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: read {decodable} of 40 frames"), proc.stderr
    cap = cv2.VideoCapture(str(out))
    kept = 0
    while cap.read()[0]:
        kept += 1
    assert kept == decodable  # the partial result is a finished, playable video
    assert len(list(masks.glob("*.png"))) == decodable
    assert json.loads(report.read_text())["ended_early"] == {"read": decodable, "expected": 40}
    assert not list(tmp_path.glob(".*partial*"))


def test_complete_video_is_not_reported_as_truncated(tiny_model, tmp_path):
    cut, _ = truncated_avi(tmp_path)
    proc = cli("infer", tmp_path / "full.avi", "--model", tiny_model(), "--output", tmp_path / "o.mp4", "--quiet",
               cwd=tmp_path)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


# ------------------------------------------------------------------------------- 2b. oversized images
def test_infer_skips_an_oversized_image_undecoded_and_does_the_rest(tiny_model, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"ok{i}.png"), np.full((40, 40, 3), 60 * (i + 1), np.uint8))
    (folder / "bomb.png").write_bytes(bomb_png())
    (folder / "wide.png").write_bytes(bomb_png(300, 200))  # over a small --max-pixels only
    masks = tmp_path / "masks"
    proc = cli("infer", folder, "--model", tiny_model(), "--no-overlay", "--save-mask", masks, "--quiet",
               "--max-pixels", "250x200", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "bomb.png" in line or "wide.png" in line]
    assert len(errors) == 2 and all("--max-pixels" in line for line in errors), proc.stderr
    assert any("400000000 pixels" in line for line in errors) and any("300x200" in line for line in errors)
    assert sorted(p.name for p in masks.iterdir()) == ["ok0.png", "ok1.png"]
    # The default limit lets the 300x200 image through and still stops the 400-megapixel one.
    proc = cli("infer", folder, "--model", tiny_model(), "--no-overlay", "--save-mask", masks, "--quiet",
               cwd=tmp_path)
    assert proc.returncode == 1 and "bomb.png" in proc.stderr and "wide.png" not in proc.stderr, proc.stderr
    # A single oversized image is one error line, exit 2.
    proc = cli("infer", folder / "bomb.png", "--model", tiny_model(), "--quiet", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--max-pixels" in proc.stderr, proc.stderr


def test_frames_requests_are_refused_from_shape_and_header_before_decoding(monkeypatch):
    import lrformer_deploy.triton.frames as frames

    decoded = []
    monkeypatch.setattr(frames.cv2, "imdecode", lambda *a: decoded.append(1))
    with pytest.raises(frames.BadRequest, match="400000000 pixels"):
        frames.decode_request(None, np.array([bomb_png()], dtype=object), max_pixels=4096 * 4096)
    with pytest.raises(frames.BadRequest, match="--max-pixels"):
        frames.decode_request(np.zeros((1, 65, 64, 3), np.uint8), None, max_pixels=64 * 64)
    assert not decoded
    assert len(frames.decode_request(np.zeros((2, 64, 64, 3), np.uint8), None, max_pixels=64 * 64)) == 2


# ------------------------------------------------------------------------------- 3. calibration edge cases
def test_calibration_video_without_a_frame_count_is_streamed_not_held(tmp_path, monkeypatch):
    import tracemalloc

    from lrformer_deploy.precision import calibration

    video = tmp_path / "calib.avi"
    size = (192, 256)
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (size[1], size[0]))
    for i in range(60):
        writer.write(np.full((*size, 3), 4 * i, np.uint8))
    writer.release()
    known = [f.copy() for f in calibration._iter_video_frames(video, 8)]
    known_holdout = [f.copy() for f in calibration._iter_video_frames(video, 4, holdout_of=8)]

    real = cv2.VideoCapture

    class NoCount:  # a container that states no frame count (raw streams, some MKV/WebM)
        def __init__(self, *args):
            self._cap = real(*args)

        def get(self, prop):
            return 0.0 if prop == cv2.CAP_PROP_FRAME_COUNT else self._cap.get(prop)

        def __getattr__(self, name):
            return getattr(self._cap, name)

    monkeypatch.setattr(cv2, "VideoCapture", NoCount)
    tracemalloc.start()
    try:
        picked = []
        for frame in calibration._iter_video_frames(video, 8):
            picked.append(int(frame[0, 0, 0]))
            del frame
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    frame_bytes = size[0] * size[1] * 3
    assert peak < 6 * frame_bytes, f"{peak / frame_bytes:.1f} frames held at once"  # all 60 before
    assert picked == [int(f[0, 0, 0]) for f in known]  # the same frames as when the count is known
    holdout = [int(f[0, 0, 0]) for f in calibration._iter_video_frames(video, 4, holdout_of=8)]
    assert holdout == [int(f[0, 0, 0]) for f in known_holdout] and not set(holdout) & set(picked)


def test_export_says_in_one_line_when_no_frames_are_left_to_hold_back(tmp_path):
    from lrformer_deploy import manifest as mf

    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(3):
        cv2.imwrite(str(calib / f"c{i}.png"), np.full((64, 64, 3), 50 * i, np.uint8))
    out = tmp_path / "out"
    proc = cli("export", "--ckpt", DEMO_CKPT, "--size", "64x64", "--output-dir", out, "--name", "m", "--fp16",
               "--calib", calib, "--calib-count", 4, "--no-engine", "--target", "cpu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "hold" in line and "back" in line]
    assert len(notes) == 1 and notes[0].startswith("note: FP16 accuracy check") and "check_held_back: false" in notes[0]
    data = mf.load_manifest(out / "m-fp16.json")["precision_details"]["data"]
    assert data["check_held_back"] is False


# ------------------------------------------------------------------------------- 4. live sources
class FakeLive:
    """A camera without a network: a frame every `interval` s whether or not anyone reads, like a device.
    Frames carry their capture time; `in_flight` tracks frames produced and not yet written or dropped."""

    kind = "webcam"
    description = "fake camera"
    fps = 100.0
    frame_count = None
    stem = "fake"
    ended_early = None
    is_video = True

    def __init__(self, frames: int, interval: float, live: bool = True) -> None:
        self.n, self.interval, self.is_live = frames, interval, live
        self.produced = 0

    def frames(self):
        from lrformer_deploy.runtime.sources import Frame

        t0 = time.perf_counter()
        for i in range(self.n):
            due = t0 + i * self.interval
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            self.produced += 1
            image = np.full((32, 32, 3), i % 256, np.uint8)
            yield Frame(index=i, stem=self.stem, image=image, captured=due)

    def close(self) -> None:
        pass


class SlowSegmenter:
    """The tiny model, 40 ms per inference: slower than the fake camera's 10 ms per frame."""

    def __init__(self, seg, seconds: float = 0.04) -> None:
        self.seg, self.seconds = seg, seconds

    def __getattr__(self, name):
        return getattr(self.seg, name)

    def infer(self, tensor):
        time.sleep(self.seconds)
        return self.seg.infer(tensor)


def test_live_source_keeps_at_most_one_frame_waiting_and_counts_the_dropped(tiny_model, tmp_path):
    from lrformer_deploy.runtime.pipeline import PipelineOptions, run_pipeline
    from lrformer_deploy.runtime.segmenter import Segmenter
    from lrformer_deploy.runtime.sinks import Outputs

    with Segmenter(tiny_model()) as seg:
        slow = SlowSegmenter(seg)
        source = FakeLive(120, 0.01)
        outputs = Outputs(mask_dir=tmp_path / "masks")
        written = []
        real_write = outputs.write

        def write(frame, *a, **k):
            written.append(frame.index)
            real_write(frame, *a, **k)

        outputs.write = write
        result = run_pipeline(slow, source, outputs, PipelineOptions(progress=False))
        live_written = list(written)
        assert result.frames == len(live_written) and result.dropped > 0
        assert result.frames + result.dropped == 120  # every frame is either segmented or counted as dropped
        assert live_written == sorted(live_written)  # in order, newest first after each drop
        assert result.summary()["dropped"] == result.dropped
        p95_live = result.summary()["latency_ms"]["p95"]

        # The same camera with every frame kept (as for files): nothing dropped, latency grows with the backlog.
        written.clear()
        source = FakeLive(120, 0.01, live=False)
        kept = run_pipeline(slow, source, outputs, PipelineOptions(progress=False))
        assert kept.frames == 120 and kept.dropped == 0 and written == list(range(120))
        assert kept.summary()["latency_ms"]["p95"] > p95_live


def test_live_mode_never_queues_more_than_one_frame(tiny_model, tmp_path, monkeypatch):
    """The slot between the camera and the pipeline holds at most one frame at every put."""
    from lrformer_deploy.runtime import pipeline
    from lrformer_deploy.runtime.segmenter import Segmenter
    from lrformer_deploy.runtime.sinks import Outputs

    sizes = []
    real_put = pipeline.LatestFrame.put

    def put(self, frame):
        real_put(self, frame)
        sizes.append(self.waiting)

    monkeypatch.setattr(pipeline.LatestFrame, "put", put)
    with Segmenter(tiny_model()) as seg:
        result = pipeline.run_pipeline(SlowSegmenter(seg), FakeLive(60, 0.01), Outputs(mask_dir=tmp_path / "m"),
                                       pipeline.PipelineOptions(progress=False))
    assert len(sizes) == 60 and max(sizes) == 1 and result.dropped > 0


# ------------------------------------------------------------------------------- 5. network streams
class MjpegServer:
    """An MJPEG camera over HTTP on 127.0.0.1 (multipart/x-mixed-replace, as IP cameras serve it): each
    session sends `frames` frames at 25 fps, then the connection closes. Stopped and restarted on the same
    port by the test; while `serving` is off it answers 503."""

    def __init__(self, port: int = 0, frames: int = 30, stall_first: bool = False) -> None:
        import http.server
        import threading

        outer = self
        self.frames, self.serving, self.sessions = frames, True, 0
        self.session_done = threading.Event()
        self.release = threading.Event()  # ends a stalled session
        self.stall_first = stall_first  # the first session goes silent with its connection open

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if not outer.serving:
                    self.send_error(503)
                    return
                outer.sessions += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace;boundary=frame")
                self.end_headers()
                try:
                    for i in range(outer.frames):
                        ok, jpg = cv2.imencode(".jpg", np.full((48, 64, 3), (i * 8) % 256, np.uint8))
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                         % len(jpg) + jpg.tobytes() + b"\r\n")
                        self.wfile.flush()
                        time.sleep(0.04)
                    if outer.stall_first and outer.sessions == 1:
                        outer.serving = True  # a reconnect is answered while this connection hangs
                        outer.session_done.set()
                        outer.release.wait(30)
                        return
                except OSError:
                    pass
                finally:
                    outer.serving = False  # one session per start: the camera "goes away" after it
                    outer.session_done.set()

        self._handler = Handler
        self.port = port
        self.start()

    def start(self) -> None:
        import http.server
        import threading

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.serving = True
        self.session_done.clear()
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def test_stream_that_stops_is_reconnected_into_the_same_output_and_one_that_never_returns_ends_cleanly(
        tiny_model, tmp_path):
    server = MjpegServer(frames=30)
    out, masks, report = tmp_path / "cam.mp4", tmp_path / "masks", tmp_path / "r.json"
    proc = subprocess.Popen([sys.executable, "-m", "lrformer_deploy.cli.infer", f"http://127.0.0.1:{server.port}/cam.mjpg",
                             "--model", str(tiny_model()), "--output", str(out), "--save-mask", str(masks),
                             "--json", str(report), "--reconnect", "4", "--every-frame"],
                            cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.session_done.wait(60), "the client never connected"
        server.stop()  # the camera is gone: connections are refused
        time.sleep(1.0)
        server.start()  # back on the same port: the client reconnects within --reconnect
        assert server.session_done.wait(30), "the client did not reconnect"
        server.stop()  # gone for good: after 4 s of retries the run ends with what it has
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    summary = json.loads(report.read_text())
    assert summary["gaps"] == 1 and summary["stream_lost"] is True, summary
    assert summary["frames"] == 60 and summary["dropped"] == 0  # both sessions, every frame
    assert len(list(masks.glob("*.png"))) == 60
    cap = cv2.VideoCapture(str(out))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 60  # one output, both sessions in it
    notes = [line for line in stderr.splitlines() if "did not come back" in line]
    assert len(notes) == 1 and "kept the 60 frames" in notes[0]
    assert not list(tmp_path.glob(".*partial*"))


def test_reconnect_zero_ends_at_the_first_outage(tiny_model, tmp_path):
    server = MjpegServer(frames=10)
    try:
        proc = cli("infer", f"http://127.0.0.1:{server.port}/cam.mjpg", "--model", tiny_model(), "--no-overlay",
                   "--json", tmp_path / "r.json", "--reconnect", 0, "--every-frame", "--quiet", cwd=tmp_path, timeout=60)
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["frames"] == 10 and summary["gaps"] == 0 and summary["stream_lost"] is False
    assert server.sessions == 1


def test_stalled_stream_times_out_and_is_reconnected(tiny_model, tmp_path):
    """A stream whose connection stays open but sends nothing: the read times out (5 s) and the stream is
    reopened, instead of the run hanging."""
    server = MjpegServer(frames=10, stall_first=True)
    try:
        proc = cli("infer", f"http://127.0.0.1:{server.port}/cam.mjpg", "--model", tiny_model(), "--no-overlay",
                   "--json", tmp_path / "r.json", "--reconnect", 3, "--every-frame", "--quiet", cwd=tmp_path,
                   timeout=90)
    finally:
        server.release.set()
        server.stop()
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["frames"] == 20 and summary["gaps"] == 1 and summary["stream_lost"] is True, summary
    assert server.sessions == 2
