"""Benchmark lrformer-batch (Ray Data, local Ray) against lrformer-infer on the same inputs.

    python samples/bench_batch.py                          # demo model; car-detection.mp4 as frames + as video
    python samples/bench_batch.py --model m.onnx --frames 200 --overlay

Inputs: the first N frames of the video saved as JPEG images (a folder) plus the video itself.
- lrformer-infer runs twice (the folder, then the video), masks only (or + overlays with --overlay);
  its throughput is all frames / the sum of its two pipeline wall times (from its --json summaries).
- lrformer-batch runs once over both inputs with a local Ray it starts itself; its throughput is all
  frames / the job's wall time once Ray is up (the run manifest's summary), and Ray's start time is
  reported apart.
- Peak memory of lrformer-batch: the whole process tree (driver, gcs_server, raylet, workers and actors),
  sampled every 0.25 s from /proc: summed PSS (shared pages split between processes) and summed RSS
  (shared pages counted in each process, an upper bound); lrformer-infer's the same way.
- Masks of both are compared pixel by pixel.
Not a test: nothing is asserted, numbers depend on the machine; run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VIDEO = REPO.parent / "shared" / "data" / "car-detection.mp4"
sys.path.insert(0, str(REPO))


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _mem_kb(pid: int) -> tuple[int, int]:
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


class TreeMemory(threading.Thread):
    """Peak summed PSS and RSS of a process and all its descendants."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.stop = pid, threading.Event()
        self.peak_pss = self.peak_rss = 0
        self.peak_procs = 0

    def run(self) -> None:
        while not self.stop.wait(0.25):
            pids = _tree(self.pid)
            mems = [_mem_kb(p) for p in pids]
            self.peak_pss = max(self.peak_pss, sum(m[0] for m in mems))
            self.peak_rss = max(self.peak_rss, sum(m[1] for m in mems))
            self.peak_procs = max(self.peak_procs, len(pids))


def run(cmd: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float, TreeMemory]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mem = TreeMemory(proc.pid)
    mem.start()
    out, err = proc.communicate()
    mem.stop.set()
    mem.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), wall, mem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model (default: the demo model)")
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    ap.add_argument("--frames", type=int, default=377, help="frames of the video saved as images (default 377)")
    ap.add_argument("--overlay", action="store_true", help="also write overlays (both tools)")
    ap.add_argument("--work", type=Path, help="keep inputs and outputs here (default: a temporary folder)")
    args = ap.parse_args()

    import cv2
    import numpy as np

    from lrformer_deploy.runtime.segmenter import default_model_path

    model = args.model or str(default_model_path())
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = args.work or Path(tmp)
        frames = work / "frames"
        frames.mkdir(parents=True, exist_ok=True)
        cap = cv2.VideoCapture(str(args.video))
        n = 0
        while n < args.frames:
            ok, frame = cap.read()
            if not ok:
                break
            cv2.imwrite(str(frames / f"frame_{n:05d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
            n += 1
        cap.release()
        # lrformer-batch draws no legend unless asked: neither does lrformer-infer here (like for like)
        overlay = ["--output", None, "--no-legend"] if args.overlay else ["--no-overlay"]

        infer_frames = infer_wall = 0.0
        infer_rss = 0
        for name, src in (("folder", frames), ("video", args.video)):
            summary = work / f"infer-{name}.json"
            extra = list(overlay)
            if args.overlay:
                extra[1] = str(work / ("infer_overlays" if name == "folder" else "infer_video.mp4"))
            cmd = [sys.executable, "-m", "lrformer_deploy.cli.infer", str(src), "--model", model,
                   "--save-mask", str(work / "infer_masks"), "--json", str(summary), "--quiet", *extra]
            _, _, mem = run(cmd, env)
            data = json.loads(summary.read_text())
            infer_frames += data["frames"]
            infer_wall += data["wall_s"]
            infer_rss = max(infer_rss, mem.peak_rss)

        out = work / "batch"
        cmd = [sys.executable, "-m", "lrformer_deploy.cli.batch", str(frames), str(args.video), "--output", str(out),
               "--model", model, "--save-mask", "--quiet"] + (["--overlay"] if args.overlay else [])
        _, batch_total, mem = run(cmd, env)
        s = json.loads((out / "manifest.json").read_text())["summary"]

        a, b = work / "infer_masks", out / "masks"
        names = sorted(p.name for p in a.glob("*.png"))
        same = sum(np.array_equal(cv2.imread(str(a / x), -1), cv2.imread(str(b / x), -1)) for x in names)

    infer_fps = infer_frames / infer_wall
    batch_fps = s["frames"] / s["wall_s"]
    print(f"inputs: {n} images + {args.video.name}; model {Path(model).name}; overlays: {args.overlay}")
    print(f"load average (1/5/15 min) at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"lrformer-infer : {int(infer_frames)} frames in {infer_wall:.2f} s (pipeline time) = {infer_fps:.1f} frames/s; "
          f"peak RSS (sampled) {infer_rss / 1024:.0f} MiB")
    print(f"lrformer-batch : {s['frames']} frames in {s['wall_s']:.2f} s once Ray is up = {batch_fps:.1f} frames/s "
          f"({s['actors']} actor(s)); Ray start {s['ray_start_s']:.2f} s; whole command {batch_total:.1f} s")
    print(f"ratio batch / infer (frames/s once Ray is up): {batch_fps / infer_fps:.2f}")
    print(f"lrformer-batch peak memory, whole process tree ({mem.peak_procs} processes at most): "
          f"PSS {mem.peak_pss / 1024:.0f} MiB, RSS sum {mem.peak_rss / 1024:.0f} MiB")
    print(f"masks identical: {same} of {len(names)}")


if __name__ == "__main__":
    main()
