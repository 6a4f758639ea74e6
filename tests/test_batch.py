"""lrformer-batch on a local Ray: real video frames and a short video, as users run it (subprocesses, real
files, exit codes, stderr), plus the Python API inside Ray Data.

One Ray instance (module fixture) serves most tests through --address, which keeps the suite to one Ray
start plus the two runs that must start their own (defaults on 2 CPUs, interrupt + resume).
"""
from __future__ import annotations

import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import build_tiny_model, default_signals, read_video

from lrformer_deploy.runtime.overlay import legend_strip_height

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="needs Ray Data: pip install '.[batch]'")

REPO = Path(__file__).resolve().parent.parent
N_FRAMES = 12  # real frames saved as images
VIDEO_FRAMES = 30  # frames of the short video
RAY_PROCESS = ("raylet", "gcs_server", "ray::", "dashboard", "runtime_env", "log_monitor", "monitor.py")


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_cli(module: str, *args, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"lrformer_deploy.cli.{module}", *map(str, args)],
                          env=env or cli_env(), capture_output=True, text=True, timeout=timeout)


def ray_pids() -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True).stdout
    pids = set()
    for line in out.splitlines():
        pid, stat, args = line.strip().split(None, 2) if len(line.split(None, 2)) == 3 else (line, "", "")
        if "Z" not in stat and any(key in args for key in RAY_PROCESS) and "pytest" not in args:
            pids.add(int(pid))
    return pids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(folder.glob("*.png"))}


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


# ---------------------------------------------------------------- data and Ray, made once per module
@pytest.fixture(scope="module")
def data(tmp_path_factory, shared_video) -> dict[str, Path]:
    """Real frames as PNGs, a 30-frame video (mp4v) and a tiny logits-head model."""
    root = tmp_path_factory.mktemp("batch-data")
    frames = root / "frames"
    frames.mkdir()
    cap = cv2.VideoCapture(str(shared_video))
    fps = cap.get(cv2.CAP_PROP_FPS)
    writer = None
    for i in range(max(N_FRAMES, VIDEO_FRAMES)):
        ok, frame = cap.read()
        assert ok
        if i < N_FRAMES:
            cv2.imwrite(str(frames / f"frame_{i:03d}.png"), frame)
        if writer is None:
            writer = cv2.VideoWriter(str(root / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                     (frame.shape[1], frame.shape[0]))
        writer.write(frame)
    writer.release()
    cap.release()
    model = build_tiny_model(root / "model", head="logits", size=(64, 96))
    return {"root": root, "frames": frames, "video": root / "clip.mp4", "model": model}


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray for the module, joined by the CLI runs with --address; shut down afterwards."""
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    # A token for this instance only (in the environment the CLI subprocesses inherit): Ray would
    # otherwise write ~/.ray/auth_token and warn.
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    # Loopback addresses only (read when Ray is imported; the CLI runs inherit it).
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    before = ray_pids()
    ctx = ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        assert ctx.address_info["gcs_address"].startswith("127.0.0.1:")  # loopback only
        yield ctx.address_info["gcs_address"]
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        deadline = time.time() + 30
        while ray_pids() - before and time.time() < deadline:
            time.sleep(0.5)
        assert not ray_pids() - before, "Ray processes left after shutdown"


# ---------------------------------------------------------------- user mistakes: before Ray starts
def test_user_mistakes_are_one_line_before_ray(tmp_path, data):
    out = tmp_path / "out"
    cases = [
        ((tmp_path / "missing.png", "-o", out), "input not found"),
        (("s3://bucket/x.png", "-o", out), "file:// URIs"),
        ((data["frames"], "-o", out, "--cpus-per-actor", "4096"), "would hang"),
        ((data["frames"], "-o", out, "--model", tmp_path / "nope.onnx"), "model file not found"),
        ((data["frames"], "-o", out, "--batch-size", "0"), "--batch-size"),
        ((data["frames"], "-o", out, "--address", f"127.0.0.1:{free_port()}"), "cannot reach the Ray cluster"),
    ]
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / "frame_000.jpg").write_bytes((data["frames"] / "frame_000.png").read_bytes())
    cases.append(((data["frames"], twin, "-o", out), "same outputs"))
    for args, fragment in cases:
        proc = run_cli("batch", *args, timeout=60)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], (args, proc.stderr)
    assert not out.exists() or not (out / "manifest.json").exists()


# ---------------------------------------------------------------- results equal lrformer-infer's
def test_masks_and_overlay_video_match_lrformer_infer(tmp_path, data, ray_address):
    ref_masks, ref_video = tmp_path / "ref_masks", tmp_path / "ref.mp4"
    for args in ((data["frames"], "--no-overlay"), (data["video"], "--output", ref_video)):
        proc = run_cli("infer", *args, "--model", data["model"], "--save-mask", ref_masks, "--quiet")
        assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    # The folder as a file:// URI: the other way in besides plain paths. 8 frames per task: 4 video tasks.
    proc = run_cli("batch", data["frames"].as_uri(), data["video"], "--output", out, "--model", data["model"],
                   "--save-mask", "--overlay", "--legend", "--frames-per-task", 8, "--batch-size", 4,
                   "--address", ray_address)
    assert proc.returncode == 0, proc.stderr

    expected = read_masks(ref_masks)
    got = read_masks(out / "masks")
    assert len(expected) == N_FRAMES + VIDEO_FRAMES
    assert sorted(got) == sorted(expected)
    differing = [name for name in expected if not np.array_equal(expected[name], got[name])]
    assert not differing, differing[:5]

    src, src_fps = read_video(data["video"])
    overlay, fps = read_video(out / "overlays" / "clip_seg.mp4")
    assert len(overlay) == len(src) == VIDEO_FRAMES
    assert fps == pytest.approx(src_fps, abs=0.01)
    # --legend: the strip below the frame that lrformer-infer adds by default, on every frame alike
    h, w = src[0].shape[:2]
    assert overlay[0].shape == (h + legend_strip_height(h, w), w, 3)
    reference, _ = read_video(ref_video)
    assert all(np.array_equal(a, b) for a, b in zip(overlay, reference)), "overlay frames differ from lrformer-infer's"
    assert len(list((out / "overlays").glob("frame_*_seg.png"))) == N_FRAMES

    m = manifest(out)
    assert m["counts"] == {"done": N_FRAMES + 1}
    video = next(r for r in m["inputs"] if r["kind"] == "video")
    assert video["frames"] == VIDEO_FRAMES and video["output"]["overlay"] == "overlays/clip_seg.mp4"
    assert m["summary"]["frames"] == N_FRAMES + VIDEO_FRAMES
    assert "frames/s" in proc.stderr  # the final summary line
    assert not (out / ".work").exists() or not any((out / ".work").iterdir())


# ---------------------------------------------------------------- bad inputs among good ones
def test_bad_inputs_are_reported_and_the_rest_completes(tmp_path, data, ray_address):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    good = sorted(data["frames"].glob("*.png"))[:4]
    for path in good:
        (inputs / path.name).write_bytes(path.read_bytes())
    (inputs / "corrupt.png").write_bytes(good[0].read_bytes()[:200])  # header only
    blob = data["video"].read_bytes()
    (inputs / "cut.mp4").write_bytes(blob[: len(blob) // 2])  # the index (moov) is at the end: gone
    # An AVI keeps its header: it opens, says 30 frames, and ends early.
    frames, fps = read_video(data["video"])
    avi = tmp_path / "full.avi"
    writer = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), fps, (frames[0].shape[1], frames[0].shape[0]))
    for frame in frames:
        writer.write(frame)
    writer.release()
    blob = avi.read_bytes()
    (inputs / "short.avi").write_bytes(blob[: len(blob) // 2])
    from conftest import bomb_png

    (inputs / "bomb.png").write_bytes(bomb_png())  # declares 20000x20000: refused from its header
    out = tmp_path / "out"
    proc = run_cli("batch", inputs, data["video"], "-o", out, "--model", data["model"], "--overlay",
                   "--save-mask", "--frames-per-task", 8, "--address", ray_address)
    assert proc.returncode == 1, proc.stderr
    bad = {str(inputs / name) for name in ("corrupt.png", "cut.mp4", "short.avi", "bomb.png")}
    for path in bad:
        assert any(line.startswith("error:") and path in line for line in proc.stderr.splitlines()), (path, proc.stderr)
    assert "Traceback" not in proc.stderr

    records = {r["input"]: r for r in manifest(out)["inputs"]}
    assert {p for p, r in records.items() if r["status"] == "failed"} == bad
    assert all(records[p]["error"] for p in bad)
    assert "video ends at frame" in records[str(inputs / "short.avi")]["error"]
    assert "--max-pixels" in records[str(inputs / "bomb.png")]["error"]
    # every good output is there
    for path in good:
        assert (out / "masks" / path.name).is_file() and (out / "overlays" / f"{path.stem}_seg.png").is_file()
    assert len(list((out / "masks").glob("clip_*.png"))) == VIDEO_FRAMES
    assert len(read_video(out / "overlays" / "clip_seg.mp4")[0]) == VIDEO_FRAMES
    assert records[str(data["video"])]["status"] == "done"
    assert not (out / "overlays" / "short_seg.mp4").exists() and not (out / "overlays" / "cut_seg.mp4").exists()


# ---------------------------------------------------------------- crash (SIGKILL) and --resume
def test_resume_after_killed_driver_skips_finished_inputs(tmp_path, data, ray_address):
    inputs = tmp_path / "many"
    inputs.mkdir()
    src = cv2.imread(str(sorted(data["frames"].glob("*.png"))[0]))
    small = cv2.resize(src, (96, 54))
    total = 300
    for i in range(total):
        cv2.imwrite(str(inputs / f"img_{i:04d}.png"), np.roll(small, i, axis=1))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "lrformer_deploy.cli.batch", str(inputs), "-o", str(out), "--model",
            str(data["model"]), "--batch-size", "1", "--address", ray_address, "--quiet"]
    driver = subprocess.Popen(args, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and driver.poll() is None:
            done = len(list((out / "masks").glob("*.png"))) if (out / "masks").is_dir() else 0
            if done >= 5:
                break
            time.sleep(0.05)
        assert driver.poll() is None, f"finished before it could be killed: {driver.stderr.read()}"
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.wait(timeout=30)
    time.sleep(1.0)  # the cluster stops the dead driver's actors
    finished = {p.name: p.stat() for p in (out / "masks").glob("*.png")}  # atomic writes: present = complete
    assert 0 < len(finished) < total

    proc = run_cli("batch", inputs, "-o", out, "--model", data["model"], "--resume", "--address", ray_address)
    assert proc.returncode == 0, proc.stderr
    summary = manifest(out)["summary"]
    assert summary["skipped"] == len(finished)
    assert summary["processed"] == total - len(finished)
    assert summary["frames"] == total - len(finished)
    assert len(list((out / "masks").glob("*.png"))) == total
    for name, st in finished.items():  # not rewritten: same file, same modification time
        now = (out / "masks" / name).stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), name
    assert manifest(out)["counts"] == {"done": total}


# ---------------------------------------------------------------- defaults on 2 CPUs, Ctrl-C/SIGTERM, cleanup
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_defaults_on_two_cpus_do_not_hang_and_interrupt_then_resume(tmp_path, data):
    """Own local Ray, default sizing, restricted to 2 CPUs: finishes (bounded by a timeout), SIGTERM
    leaves a manifest and no Ray process, and --resume completes."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    src = cv2.imread(str(sorted(data["frames"].glob("*.png"))[0]))
    for i in range(150):
        cv2.imwrite(str(inputs / f"img_{i:04d}.png"), np.roll(cv2.resize(src, (96, 54)), i, axis=0))
    home = tmp_path / "home"
    home.mkdir()
    env = cli_env(HOME=str(home))
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS"):
        env.pop(key, None)
    before = ray_pids()
    out = tmp_path / "out"
    two_cpus = set(sorted(os.sched_getaffinity(0))[:2])

    def on_two_cpus() -> None:  # like `taskset`: the driver and every Ray process it starts see 2 CPUs
        os.sched_setaffinity(0, two_cpus)
        default_signals()

    cmd = [sys.executable, "-m", "lrformer_deploy.cli.batch", str(inputs), str(data["video"]), "-o", str(out), "--model", str(data["model"]),
           "--batch-size", "1", "--overlay"]
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              preexec_fn=on_two_cpus)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and driver.poll() is None:
            if (out / "overlays").is_dir() and len(list((out / "overlays").glob("*.png"))) >= 5:
                break
            time.sleep(0.05)
        assert driver.poll() is None, f"finished before it could be interrupted: {driver.stderr.read()}"
        driver.send_signal(signal.SIGTERM)
        _, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 128 + signal.SIGTERM, err
    assert "Token authentication" not in err and "Traceback" not in err, err
    assert not (home / ".ray" / "auth_token").exists()
    counts = manifest(out)["counts"]
    done_before = counts.get("done", 0)
    assert done_before >= 1 and counts.get("pending", 0) >= 1, counts

    # Resume with the defaults; the timeout is the "never hangs" check.
    proc = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=240,
                          preexec_fn=on_two_cpus)
    assert proc.returncode == 0, proc.stderr
    m = manifest(out)
    assert m["counts"] == {"done": 151}
    assert m["summary"]["actors"] == 1 and m["summary"]["skipped"] >= done_before
    assert len(list((out / "overlays").glob("*.png"))) == 150
    assert len(read_video(out / "overlays" / "clip_seg.mp4")[0]) == VIDEO_FRAMES
    assert not (out / "masks").exists() and not (out / ".work").exists()  # --overlay alone: masks were temporary
    deadline = time.time() + 30
    while ray_pids() - before and time.time() < deadline:
        time.sleep(0.5)
    assert not ray_pids() - before, "Ray processes left behind"


# ---------------------------------------------------------------- the Python API in a user's pipeline
def test_api_batch_segmenter_in_a_ray_data_pipeline(data, ray_address):
    """read_images (Pillow, RGB) -> BatchSegmenter(color="RGB") gives the Segmenter's masks of the BGR frames."""
    import ray.data

    from lrformer_deploy.batch import BatchSegmenter
    from lrformer_deploy.runtime import Segmenter

    paths = [str(p) for p in sorted(data["frames"].glob("*.png"))[:4]]
    ds = ray.data.read_images(paths, include_paths=True)
    ds = ds.map_batches(BatchSegmenter, fn_constructor_kwargs={"model": str(data["model"]), "color": "RGB"},
                        compute=ray.data.ActorPoolStrategy(size=1), batch_size=2, num_cpus=1)
    rows = {Path(r["path"]).name: r for r in ds.take_all()}
    assert len(rows) == 4
    with Segmenter(data["model"]) as seg:
        for path in paths:
            row = rows[Path(path).name]
            assert row["error"] == ""
            assert np.array_equal(np.asarray(row["mask"]), seg(cv2.imread(path))), path


def test_plan_resources_leaves_cpu_for_reads():
    from lrformer_deploy.batch.job import JobOptions, plan_resources
    from lrformer_deploy.errors import UserError

    opts = JobOptions(model="m")
    two = plan_resources(2, 0, opts, local=True)
    assert (two.actors, two.cpus_per_actor, two.read_cpus, two.threads) == (1, 1.0, 1.0, 2)
    one = plan_resources(1, 0, opts, local=True)
    assert one.actors * one.cpus_per_actor + one.read_cpus <= 1
    many = plan_resources(16, 0, opts, local=True)
    assert many.actors * many.cpus_per_actor + many.read_cpus <= 16 and many.actors >= 8
    gpu = plan_resources(16, 4, JobOptions(model="m", gpus_per_actor=0.5), local=False)
    assert (gpu.actors, gpu.gpus_per_actor, gpu.threads) == (8, 0.5, None)
    for cpus, gpus, kwargs in ((2, 0, {"actors": 2}), (2, 0, {"cpus_per_actor": 2}), (8, 0, {"gpus_per_actor": 1}),
                               (64, 2, {"gpus_per_actor": 1, "actors": 3})):
        with pytest.raises(UserError):
            plan_resources(cpus, gpus, JobOptions(model="m", **kwargs), local=True)


def test_resume_removes_the_temporaries_of_killed_workers(tmp_path):
    """A worker killed mid-write leaves `.NAME.XXXX.partial.png`; --resume's cleanup removes exactly those."""
    from lrformer_deploy.batch.outputs import Layout

    layout = Layout(tmp_path / "out", True, True)
    layout.make_dirs()
    stale = [layout.overlay_dir / ".img_0018_seg.k2j4.partial.png", layout.mask_dir / "clip" / ".000003.x1.partial.png"]
    stale[1].parent.mkdir()
    kept = [layout.overlay_dir / "img_0018_seg.png", layout.mask_dir / ".keep", layout.root / "run.json"]
    for p in stale + kept:
        p.write_bytes(b"x")
    assert layout.remove_stale_temporaries() == 2
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_a_finished_job_removes_killed_writers_temporaries(tmp_path, data, ray_address):
    """A worker killed mid-write leaves a hidden temporary even when its retry writes the file: the job
    removes such files once its workers are gone (planted here; a real kill leaves one at random)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for src in sorted(data["frames"].glob("*.png"))[:2]:
        (inputs / src.name).write_bytes(src.read_bytes())
    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    planted = out / "masks" / f".{sorted(inputs.glob('*.png'))[0].stem}.k2j4.partial.png"
    planted.write_bytes(b"half a png")
    proc = run_cli("batch", inputs, "-o", out, "--model", data["model"], "--actors", "1", "--address", ray_address,
                   "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert not planted.exists()
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(p.name for p in inputs.glob("*.png"))


# ---------------------------------------------------------------- an actor killed mid-run (issue 20)
def actor_pids() -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return {int(line.split(None, 1)[0]) for line in out.splitlines()
            if "BatchSegmenter" in line and "pytest" not in line}


def test_sigkill_of_an_actor_mid_run_still_finishes_with_every_mask_once(tmp_path, data, ray_address):
    inputs = tmp_path / "many"
    inputs.mkdir()
    src = cv2.imread(str(sorted(data["frames"].glob("*.png"))[0]))
    small = cv2.resize(src, (96, 54))
    total = 150
    for i in range(total):
        cv2.imwrite(str(inputs / f"img_{i:04d}.png"), np.roll(small, 3 * i, axis=1))
    ref = tmp_path / "ref"
    proc = run_cli("infer", inputs, "--model", data["model"], "--no-overlay", "--save-mask", ref, "--quiet")
    assert proc.returncode == 0, proc.stderr

    out = tmp_path / "out"
    args = [sys.executable, "-m", "lrformer_deploy.cli.batch", str(inputs), "-o", str(out), "--model",
            str(data["model"]), "--batch-size", "1", "--actors", "1", "--address", ray_address, "--quiet"]
    before = actor_pids()
    driver = subprocess.Popen(args, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        killed = None
        while time.time() < deadline and driver.poll() is None:
            done = len(list((out / "masks").glob("*.png"))) if (out / "masks").is_dir() else 0
            actors = actor_pids() - before
            if done >= 5 and actors:
                killed = actors.pop()
                os.kill(killed, signal.SIGKILL)
                break
            time.sleep(0.02)
        assert killed is not None, "the job finished before an actor could be killed"
        time.sleep(0.3)
        written = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "masks").glob("*.png")}
        assert len(written) < total
        _, stderr = driver.communicate(timeout=240)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == 0, stderr
    assert killed not in actor_pids()  # the dead one stayed dead: a restarted actor finished the job
    m = manifest(out)
    assert m["counts"] == {"done": total} and m["summary"]["frames"] == total  # every input once
    expected, got = read_masks(ref), read_masks(out / "masks")
    assert sorted(got) == sorted(expected)
    assert not [name for name in expected if not np.array_equal(expected[name], got[name])]
    for name, stamp in written.items():  # written before the kill: not written again by the retry
        now = (out / "masks" / name).stat()
        assert (now.st_ino, now.st_mtime_ns) == stamp, name
    assert not list(out.rglob(".*.partial*"))
