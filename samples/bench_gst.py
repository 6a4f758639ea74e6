"""Frames/s of the lrformerseg GStreamer pipeline vs lrformer-infer on the same video and model, one run.

    python samples/bench_gst.py [--video V] [--model M]   (default: car-detection.mp4, the demo model)

Both write an overlay video: lrformer-infer with OpenCV (mp4v), GStreamer with
`decodebin ! videoconvert ! queue ! lrformerseg ! queue ! videoconvert ! <encoder> ! <mux>` for each
encoder chain below. Wall time includes start-up (model load) for both. Prints the load average too:
compare only numbers from one run on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from lrformer_deploy.gst import check  # noqa: E402

CHAINS = {"vp8enc ! webmmux": "webm", "jpegenc ! avimux": "avi"}


def frames(video: Path) -> int:
    import cv2

    cap, n = cv2.VideoCapture(str(video)), 0
    while cap.read()[0]:
        n += 1
    return n


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cut(video: Path, count: int, out: Path) -> Path:
    import cv2

    cap = cv2.VideoCapture(str(video))
    writer = None
    for _ in range(count):
        ok, frame = cap.read()
        if not ok:
            break
        if writer is None:
            writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), cap.get(cv2.CAP_PROP_FPS),
                                     frame.shape[1::-1])
        writer.write(frame)
    writer.release()
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--video", default=str(REPO.parent / "shared" / "data" / "car-detection.mp4"))
    p.add_argument("--model", default=None)
    p.add_argument("--frames", type=int, default=None, help="first N frames only (a clip re-encoded with OpenCV)")
    args = p.parse_args()
    video = Path(args.video)
    if args.model is None:
        from lrformer_deploy.build.demo import default_model
        args.model = str(default_model())
    n = frames(video)
    env = check.gst_environment()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.frames:
            video = cut(video, args.frames, Path(tmp) / "clip.mp4")
            n = frames(video)
        print(f"load average before: {os.getloadavg()}")
        t, cpu = time.perf_counter(), child_cpu()
        subprocess.run([sys.executable, "-m", "lrformer_deploy.cli.infer", str(video), "--model", args.model,
                        "--output", f"{tmp}/infer.mp4", "--no-legend", "--quiet"], check=True)  # gst draws none
        rows.append(("lrformer-infer (OpenCV mp4v)", n / (time.perf_counter() - t), (child_cpu() - cpu) / n))
        for chain, ext in CHAINS.items():
            t, cpu = time.perf_counter(), child_cpu()
            subprocess.run(["gst-launch-1.0", "-q", "filesrc", f"location={video}", "!", "decodebin", "!",
                            "videoconvert", "!", "queue", "!", "lrformerseg", f"model={args.model}", "!", "queue",
                            "!", "videoconvert", "!", *chain.split(), "!", "filesink", f"location={tmp}/gst.{ext}"],
                           env=env, check=True, stdout=subprocess.DEVNULL)
            rows.append((f"gst-launch lrformerseg ({chain})", n / (time.perf_counter() - t), (child_cpu() - cpu) / n))
        print(f"load average after: {os.getloadavg()}")
    base = rows[0][1]
    # CPU seconds per frame (user + sys of the child) is the figure that a loaded machine distorts least.
    for name, fps, cpu in rows:
        print(f"{name:45s} {fps:6.1f} frames/s  ratio {fps / base:.2f}   {cpu * 1000:6.1f} CPU-ms/frame")
    print(json.dumps({"frames": n, "fps": {name: round(fps, 2) for name, fps, _ in rows},
                      "cpu_ms_per_frame": {name: round(cpu * 1000, 1) for name, _, cpu in rows}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
