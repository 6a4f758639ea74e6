"""The fault table (issue 20): what each fault below the signal level does to a user, and what is kept.

    python samples/faults.py                 # every case (several minutes on 2 cores: a server, Ray)
    python samples/faults.py --quick         # without the server and Ray cases

One row per case: case, what happened (exit code, the line the user sees, counts), what was kept (files
on disk, their consistency, temporaries left). The cases are those of issue 20 (kill -9 leftovers,
truncated media, oversized images, calibration, live and network streams, a killed Ray actor) and the
ones that already held before it (kill -9 during a re-export leaves consistent manifests, a full file
system, Ctrl-C mid-video, a second writer), so they stay held. Everything runs locally (127.0.0.1),
with the demo checkpoint at 64x64 for exports and the tests' tiny colour model for inference.
Not a test: nothing is asserted; read the table.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "samples"))
DEMO_CKPT = REPO / "lrformer_deploy" / "weights" / "lrformer-demo-synthetic.pth"
ENV = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
EXPORT = ["--ckpt", str(DEMO_CKPT), "--size", "64x64", "--no-engine", "--target", "cpu", "--quiet"]
ROWS: list[tuple[str, str, str]] = []


def cli(command: str, *args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"lrformer_deploy.cli.{command}", *map(str, args)], cwd=cwd,
                          env=ENV, capture_output=True, text=True, timeout=timeout)


def popen(command: str, *args, cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", f"lrformer_deploy.cli.{command}", *map(str, args)], cwd=cwd,
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)


def line(stderr: str) -> str:
    lines = [s.strip() for s in stderr.replace("\r", "\n").splitlines() if s.strip()]
    picked = [s for s in lines if s.startswith(("error:", "note:", "interrupted", "WARNING"))] or lines[-1:]
    return " | ".join(picked)[:220]


def frames_of(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*partial*"))


def consistent(folder: Path) -> str:
    from lrformer_deploy import manifest as mf

    out = []
    for man in sorted(folder.glob("*.json")):
        try:
            m = mf.load_manifest(man)
        except Exception:  # noqa: BLE001 - reported
            continue
        graph = folder / m["artifacts"]["onnx"]["file"]
        ok = graph.is_file() and mf.sha256_file(graph) == m["artifacts"]["onnx"]["sha256"]
        out.append(f"{man.name}:{'ok' if ok else 'MISMATCH'}")
    return ", ".join(out) or "no manifest"


def row(case: str, happened: str, kept: str) -> None:
    ROWS.append((case, happened, kept))
    print(f"- {case}: {happened} || {kept}", file=sys.stderr, flush=True)


def case(fn):
    def run(work: Path) -> None:
        folder = work / fn.__name__
        folder.mkdir()
        try:
            fn(folder)
        except Exception as exc:  # noqa: BLE001 - a broken case is a row too
            row(fn.__name__, f"CASE FAILED: {exc.__class__.__name__}: {exc}"[:200], "")
    run.__name__ = fn.__name__
    return run


def wait_for(predicate, timeout: float = 120.0, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


# ----------------------------------------------------------------------------------------------- cases
@case
def kill9_export_leftovers(d: Path) -> None:
    from lrformer_deploy.locks import OWNER_FILE

    out = d / "out"
    out.mkdir()
    proc = popen("export", *EXPORT, "--output-dir", out, "--name", "m", cwd=d)
    wait_for(lambda: any((p / OWNER_FILE).is_file() for p in out.glob(".*.partial")))
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    left = [p.name for p in out.glob(".*.partial")]
    again = cli("export", *EXPORT, "--output-dir", out, "--name", "m", cwd=d)
    row("kill -9 mid-export, then export again",
        f"killed: {len(left)} staging folder(s) left; next export exit {again.returncode}",
        f"staging folders after: {len(list(out.glob('.*.partial')))}; {consistent(out)}")


@case
def kill9_reexport_manifests(d: Path) -> None:
    out = d / "out"
    first = cli("export", *EXPORT, "--output-dir", out, "--name", "m", "--fp16", cwd=d)
    rng = random.Random(0)
    results = []
    for _ in range(3):
        proc = popen("export", *EXPORT, "--output-dir", out, "--name", "m", "--fp16", cwd=d)
        time.sleep(rng.uniform(1.0, 12.0))
        proc.kill()
        proc.wait()
        results.append(consistent(out))
    from lrformer_deploy.runtime.segmenter import Segmenter

    try:
        with Segmenter(out / "m.json"):
            loads = "runtime loads m.json"
    except Exception as exc:  # noqa: BLE001
        loads = f"runtime refuses: {str(exc)[:80]}"
    left = len(list(out.glob(".*.partial")))
    again = cli("export", *EXPORT, "--output-dir", out, "--name", "m", "--fp16", cwd=d)
    row("kill -9 at 3 random moments of a re-export (FP32+FP16)", f"first export exit {first.returncode}; {loads}",
        f"after each kill: {' / '.join(results)}; staging folders {left} after the kills, "
        f"{len(list(out.glob('.*.partial')))} after the next export (exit {again.returncode})")


@case
def truncated_video(d: Path) -> None:
    from test_faults import truncated_avi

    from conftest import build_tiny_model

    cut, decodable = truncated_avi(d)
    model = build_tiny_model(d / "model")
    proc = cli("infer", cut, "--model", model, "--output", d / "o.mp4", "--quiet", cwd=d)
    row("truncated video (AVI cut in half) -> lrformer-infer", f"exit {proc.returncode}: {line(proc.stderr)}",
        f"o.mp4 playable, {frames_of(d / 'o.mp4')} frames; temporaries {partials(d)}")


@case
def truncated_video_gst(d: Path) -> None:
    from lrformer_deploy.build.demo import default_model
    from lrformer_deploy.gst import check

    env = check.gst_environment(dict(ENV, GST_REGISTRY=str(d / "registry.bin")))
    full, cut = d / "full.mov", d / "cut.mov"
    subprocess.run(["gst-launch-1.0", "-q", "videotestsrc", "num-buffers=20", "pattern=ball", "!",
                    "video/x-raw,width=128,height=96,framerate=10/1", "!", "jpegenc", "!", "qtmux", "faststart=true",
                    "!", "filesink", f"location={full}"], env=env, check=True, capture_output=True)
    blob = full.read_bytes()
    cut.write_bytes(blob[: len(blob) // 2])
    proc = subprocess.run(["gst-launch-1.0", "filesrc", f"location={cut}", "!", "decodebin", "!", "videoconvert", "!",
                           "video/x-raw,format=BGR", "!", "lrformerseg", f"model={default_model()}", "mode=mask", "!",
                           "filesink", f"location={d / 'masks.raw'}"], env=env, capture_output=True, text=True)
    warning = next((s for s in proc.stdout.splitlines() if "read " in s and "frames" in s), "no warning")
    row("truncated video (faststart MOV cut in half) -> GStreamer element",
        f"exit {proc.returncode}; bus: {warning.split('lrformerseg: ')[-1][:120]}",
        f"{(d / 'masks.raw').stat().st_size // (96 * 128)} masks written")


@case
def bomb_infer(d: Path) -> None:
    from conftest import bomb_png

    from conftest import build_tiny_model

    imgs = d / "imgs"
    imgs.mkdir()
    cv2.imwrite(str(imgs / "ok.png"), np.full((40, 40, 3), 90, np.uint8))
    (imgs / "bomb.png").write_bytes(bomb_png())
    proc = cli("infer", imgs, "--model", build_tiny_model(d / "model"), "--no-overlay", "--save-mask", d / "m",
               "--quiet", cwd=d)
    row("decompression bomb (PNG declaring 20000x20000) in a folder -> lrformer-infer",
        f"exit {proc.returncode}: {line(proc.stderr)}", f"masks: {sorted(p.name for p in (d / 'm').iterdir())}")


@case
def bomb_serve(d: Path) -> None:
    import tritonclient.http as httpclient
    from conftest import bomb_png
    from test_triton import descendants, free_port, rss_mib

    from lrformer_deploy.build.demo import default_model

    http, grpc = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lrformer_deploy.cli.serve", default_model(), "--http-port",
                             str(http), "--grpc-port", str(grpc), "--quiet"], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
        name = f"{Path(default_model()).stem}_frames"
        wait_for(lambda: _ready(client, name), timeout=120, step=0.5)
        family = {proc.pid} | descendants(proc.pid)
        before = rss_mib(family)
        peak = [before]
        errors: list[str] = []
        bomb = bomb_png()

        def send() -> None:
            inp = httpclient.InferInput("encoded", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[bomb]], dtype=object))
            try:
                httpclient.InferenceServerClient(f"127.0.0.1:{http}").infer(name, [inp])
                errors.append("answered")
            except Exception as exc:  # noqa: BLE001
                errors.append(str(exc))

        for _ in range(3):
            threads = [threading.Thread(target=send) for _ in range(4)]
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                peak[0] = max(peak[0], rss_mib(family))
                time.sleep(0.02)
        refused = sum("--max-pixels" in e for e in errors)
        row("12 decompression bombs, 4 at a time -> lrformer-serve 'encoded'",
            f"{refused}/12 refused: ...{errors[0].strip().splitlines()[0][-150:]}",
            f"server RSS {before:.0f} MiB -> peak {peak[0]:.0f} MiB; still serving: {proc.poll() is None}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _ready(client, name) -> bool:
    try:
        return client.is_model_ready(name)
    except Exception:  # noqa: BLE001
        return False


@case
def calibration_hold_back(d: Path) -> None:
    calib = d / "calib"
    calib.mkdir()
    for i in range(3):
        cv2.imwrite(str(calib / f"c{i}.png"), np.full((64, 64, 3), 50 * i, np.uint8))
    args = [a for a in EXPORT if a != "--quiet"]
    proc = cli("export", *args, "--output-dir", d / "out", "--name", "m", "--fp16", "--calib", calib,
               "--calib-count", 4, cwd=d)
    data = json.loads((d / "out" / "m-fp16.json").read_text())["precision_details"]["data"]
    row("calibration source with no frames left to hold back", f"exit {proc.returncode}: {line(proc.stderr)}",
        f"manifest check_held_back: {data['check_held_back']}")


@case
def live_camera(d: Path) -> None:
    from bench_live import FakeCamera
    from conftest import build_tiny_model
    from test_faults import SlowSegmenter

    from lrformer_deploy.runtime.pipeline import PipelineOptions, run_pipeline
    from lrformer_deploy.runtime.segmenter import Segmenter
    from lrformer_deploy.runtime.sinks import Outputs

    frames = [np.full((48, 64, 3), i, np.uint8) for i in range(50)]
    out = []
    with Segmenter(build_tiny_model(d / "model")) as seg:
        for drop in (False, True):
            r = run_pipeline(SlowSegmenter(seg, 0.08), FakeCamera(frames, 25.0, 4.0),
                             Outputs(video_path=d / f"{drop}.mp4"), PipelineOptions(progress=False, drop_stale=drop))
            s = r.summary()
            out.append(f"{'live' if drop else 'every frame'}: {s['frames']} segmented, {s['dropped']} dropped, "
                       f"p50 {s['latency_ms']['p50']:.0f} ms, p95 {s['latency_ms']['p95']:.0f} ms")
    row("live camera 25 fps, model 80 ms/frame", "; ".join(out), "the output video holds the segmented frames")


@case
def stream_restart(d: Path) -> None:
    from conftest import build_tiny_model
    from test_faults import MjpegServer

    server = MjpegServer(frames=30)
    proc = popen("infer", f"http://127.0.0.1:{server.port}/cam.mjpg", "--model", build_tiny_model(d / "model"),
                 "--output", d / "cam.mp4", "--json", d / "r.json", "--reconnect", 4, "--every-frame", cwd=d)
    server.session_done.wait(60)
    server.stop()
    time.sleep(1.0)
    server.start()
    server.session_done.wait(30)
    server.stop()
    _, err = proc.communicate(timeout=120)
    s = json.loads((d / "r.json").read_text())
    row("HTTP MJPEG stream stopped, restarted, then gone for good (--reconnect 4)",
        f"exit {proc.returncode}: gaps {s['gaps']}, stream_lost {s['stream_lost']}; {line(err)}",
        f"cam.mp4 {frames_of(d / 'cam.mp4')} frames (2 sessions of 30); temporaries {partials(d)}")


@case
def ray_actor_kill(d: Path) -> None:
    from conftest import build_tiny_model
    from test_batch import actor_pids

    model = build_tiny_model(d / "model", head="logits", size=(64, 96))
    inputs = d / "imgs"
    inputs.mkdir()
    for i in range(150):
        cv2.imwrite(str(inputs / f"img_{i:04d}.png"), np.roll(np.indices((54, 96)).sum(0).astype(np.uint8)[..., None]
                                                            .repeat(3, 2) * 3, 3 * i, axis=1))
    ref = cli("infer", inputs, "--model", model, "--no-overlay", "--save-mask", d / "ref", "--quiet", cwd=d)
    before = actor_pids()
    proc = popen("batch", inputs, "-o", d / "out", "--model", model, "--batch-size", 1, "--actors", 1, "--quiet", cwd=d)
    killed = None
    if wait_for(lambda: (d / "out" / "masks").is_dir() and len(list((d / "out" / "masks").glob("*.png"))) >= 5
                and actor_pids() - before, timeout=240):
        killed = (actor_pids() - before).pop()
        os.kill(killed, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    m = json.loads((d / "out" / "manifest.json").read_text())
    same = sum(np.array_equal(cv2.imread(str(p), -1), cv2.imread(str(d / "out" / "masks" / p.name), -1))
               for p in (d / "ref").glob("*.png"))
    row("SIGKILL of the Ray actor mid-run (150 images)",
        f"actor {'killed' if killed else 'NOT killed'}; exit {proc.returncode} (lrformer-infer reference exit "
        f"{ref.returncode}); Ray logs the death: {'Actor with class name' in err}",
        f"manifest {m['counts']}, frames {m['summary']['frames']}; masks equal to lrformer-infer: {same}/150")


@case
def full_filesystem(d: Path) -> None:
    from conftest import build_tiny_model

    mnt = d / "mnt"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        row("lrformer-infer onto a full 1 MiB file system", "not run: cannot mount a tmpfs here", "")
        return
    try:
        video = d / "v.avi"  # noise in MJPG: its overlay does not fit in 1 MiB
        w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (256, 256))
        rng = np.random.default_rng(0)
        for _ in range(100):
            w.write(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
        w.release()
        proc = cli("infer", video, "--model", build_tiny_model(d / "model"), "--output", mnt / "o.mp4",
                   "--save-mask", mnt / "masks", "--quiet", cwd=d)
        row("lrformer-infer onto a full 1 MiB file system", f"exit {proc.returncode}: {line(proc.stderr)}",
            f"temporaries left on it: {partials(mnt)}")
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


@case
def ctrl_c_mid_video(d: Path) -> None:
    video = REPO.parent / "shared" / "data" / "car-detection.mp4"
    if not video.is_file():
        video = REPO / "samples" / "synthetic-scenes.mp4"
    # The demo model (tens of ms a frame), signalled once 20 frames are done.
    proc = subprocess.Popen([sys.executable, "-m", "lrformer_deploy.cli.infer", str(video), "--output",
                             str(d / "o.mp4")], cwd=d, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = b""
    while proc.poll() is None:
        seen += proc.stderr.read1(4096)
        done = [int(x) for x in __import__("re").findall(rb"\r(\d+)/", seen)]
        if done and done[-1] >= 20:
            break
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    err = (seen + rest).decode(errors="replace")
    kept = frames_of(d / "o.mp4") if (d / "o.mp4").exists() else 0
    row("Ctrl-C mid-video", f"exit {proc.returncode}: {line(err)}",
        f"o.mp4 playable, {kept} frames; temporaries {partials(d)}")


@case
def second_writer(d: Path) -> None:
    from lrformer_deploy.locks import output_lock

    from conftest import build_tiny_model

    img = d / "a.png"
    cv2.imwrite(str(img), np.full((40, 40, 3), 90, np.uint8))
    with output_lock(d / "a_seg.png"):
        proc = cli("infer", img, "--model", build_tiny_model(d / "model"), "--quiet", cwd=d)
    row("second writer of the same output", f"exit {proc.returncode}: {line(proc.stderr)}",
        f"a_seg.png exists: {(d / 'a_seg.png').exists()}")


QUICK = [kill9_export_leftovers, kill9_reexport_manifests, truncated_video, truncated_video_gst, bomb_infer,
         calibration_hold_back, live_camera, stream_restart, full_filesystem, ctrl_c_mid_video, second_writer]
SLOW = [bomb_serve, ray_actor_kill]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="skip the server and Ray cases")
    p.add_argument("--only", help="run the cases whose name contains this")
    args = p.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    todo = QUICK + ([] if args.quick else SLOW)
    if args.only:
        todo = [c for c in todo if args.only in c.__name__]
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        for run in todo:
            run(Path(tmp))
    print("| case | what happened | what was kept |")
    print("|---|---|---|")
    for c, h, k in ROWS:
        print(f"| {c} | {h.replace('|', '/')} | {k.replace('|', '/')} |")


if __name__ == "__main__":
    main()
