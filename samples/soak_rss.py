"""Hours of video: RSS of lrformer-infer and of the GStreamer element over 50,000 frames (issue 20, item 7).

    python samples/soak_rss.py                          # 50,000 frames, a tiny colour model, 64x48 frames
    python samples/soak_rss.py --frames 20000 --model engines/m.onnx --size 256x448

What runs:
- `lrformer-infer` on a generated video of N frames (a 100-frame clip looped), overlay video out, in a
  subprocess; its progress line gives the frame count, /proc gives its RSS;
- `gst-launch-1.0 videotestsrc num-buffers=N ! lrformerseg ! fakesink -m`, the element's per-frame bus
  messages give the frame count, /proc gives the RSS.
RSS is sampled every 1,000 frames; the slope (least squares over the samples after the first 5,000
frames, past the warm-up) is reported in KiB per 1,000 frames, with the first and last samples. A flat
pipeline shows a slope near 0 (allocator noise). The default model is the tests' tiny 64x64 colour
model, so 50,000 frames take minutes on a CPU: the point is the pipeline's memory, not the model's speed.
Not a test: nothing is asserted, numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def make_video(path: Path, frames: int, size: tuple[int, int]) -> None:
    import cv2
    import numpy as np

    from lrformer_deploy.data.synthetic import generate_scene

    clip = [generate_scene(100 + i, size)[0] for i in range(100)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (size[1], size[0]))
    for i in range(frames):
        writer.write(np.ascontiguousarray(clip[i % len(clip)]))
    writer.release()


def sample_process(cmd: list[str], env: dict, frames: int, count_re: re.Pattern, stream: str,
                   every: int = 1000, base: int = 0) -> tuple[list[tuple[int, int]], int, float]:
    """Run `cmd`; whenever the frame count read from its `stream` output crosses a multiple of `every`,
    record (frames, RSS KiB). Returns the samples, the exit code and the wall time."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE if stream == "stdout" else subprocess.DEVNULL,
                            stderr=subprocess.PIPE if stream == "stderr" else subprocess.DEVNULL)
    pipe = proc.stdout if stream == "stdout" else proc.stderr
    samples: list[tuple[int, int]] = []
    next_mark = every
    t0 = time.perf_counter()
    buf = b""
    while True:
        chunk = pipe.read1(65536) if hasattr(pipe, "read1") else pipe.read(65536)
        if not chunk:
            break
        buf = (buf + chunk)[-4096:]
        found = count_re.findall(buf.decode(errors="replace"))
        if found:
            done = int(found[-1]) + base
            while done >= next_mark:
                rss = rss_kib(proc.pid)
                if rss is not None:
                    samples.append((next_mark, rss))
                next_mark += every
    code = proc.wait()
    return samples, code, time.perf_counter() - t0


def slope(samples: list[tuple[int, int]], skip: int = 5000) -> float:
    """KiB per 1,000 frames, least squares over the samples past `skip` frames."""
    pts = [(f / 1000.0, r) for f, r in samples if f > skip] or [(f / 1000.0, r) for f, r in samples]
    if len(pts) < 2:
        return float("nan")
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else float("nan")


def report(name: str, samples: list[tuple[int, int]], code: int, wall: float) -> None:
    print(f"\n{name}: exit {code}, {wall:.0f} s, {len(samples)} samples")
    print("  frames   RSS MiB   (every 5,000 shown; the slope uses every 1,000)")
    for f, r in samples:
        if f % 5000 == 0 or f == samples[-1][0]:
            print(f"  {f:6d}  {r / 1024:8.1f}")
    if samples:
        print(f"  first {samples[0][1] / 1024:.1f} MiB, last {samples[-1][1] / 1024:.1f} MiB, "
              f"slope {slope(samples):+.1f} KiB per 1,000 frames (after 5,000)")


def main() -> None:
    from conftest import build_tiny_model

    from lrformer_deploy.gst import check

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=50_000)
    p.add_argument("--size", default="48x64", help="frame size HxW (default 48x64)")
    p.add_argument("--model", help="model (default: a tiny 64x64 colour model, as in the tests)")
    p.add_argument("--skip-infer", action="store_true")
    p.add_argument("--skip-gst", action="store_true")
    args = p.parse_args()
    h, w = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        tmp = Path(tmp)
        model = Path(args.model) if args.model else build_tiny_model(tmp / "model", size=(64, 64))
        env = dict(os.environ, PYTHONPATH=str(REPO))
        print(f"model {model.name}, {args.frames} frames of {w}x{h}")
        if not args.skip_infer:
            video = tmp / "long.mp4"
            t0 = time.perf_counter()
            make_video(video, args.frames, (h, w))
            print(f"video written in {time.perf_counter() - t0:.0f} s")
            base = [sys.executable, "-m", "lrformer_deploy.cli.infer", str(video), "--model", str(model)]
            # With an MP4 out, FFmpeg's muxer keeps each frame's index entry in memory until the file is closed
            # (the moov box goes at the end); without one, what is left is the pipeline's own memory.
            for label, extra in (("lrformer-infer -> overlay .mp4", ["--output", str(tmp / "out.mp4")]),
                                 ("lrformer-infer, no file output (--no-overlay --json)",
                                  ["--no-overlay", "--json", str(tmp / "r.json")])):
                samples, code, wall = sample_process(base + extra, env, args.frames,
                                                     re.compile(r"\r(\d+)/\d+ frames"), "stderr")
                report(label, samples, code, wall)
        if not args.skip_gst:
            genv = check.gst_environment(dict(env, GST_REGISTRY=str(tmp / "registry.bin")))
            cmd = ["gst-launch-1.0", "-m", "videotestsrc", f"num-buffers={args.frames}", "pattern=ball", "!",
                   f"video/x-raw,width={w},height={h},format=BGR", "!", "lrformerseg", f"model={model}",
                   "mode=mask", "!", "fakesink"]
            samples, code, wall = sample_process(cmd, genv, args.frames, re.compile(r"frame=\(guint64\)(\d+)"),
                                                 "stdout", base=1)  # the element numbers frames from 0
            report("GStreamer lrformerseg", samples, code, wall)


if __name__ == "__main__":
    main()
