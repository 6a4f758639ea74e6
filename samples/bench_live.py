"""Latency of a live source before and after stale-frame dropping (issue 20, item 6).

    python samples/bench_live.py                        # the demo model, a 25 fps fake camera, 15 s per mode
    python samples/bench_live.py --model m.onnx --fps 30 --seconds 20

A fake camera (no device, no network) delivers the sample video's frames in real time into a driver
buffer of 4 frames (oldest overwritten, as V4L2 does) whether or not the pipeline keeps up. Runs the same
pipeline twice:
- every frame (`--every-frame`, what live sources did before): the stages' queues fill up and each result
  is several inferences old;
- live (default for webcams and streams): one frame waits at most, stale ones are dropped and counted.
Prints p50/p95 latency (capture -> written) and frames segmented/dropped for each, and their ratio.
Not a test: nothing is asserted, numbers depend on the machine (the CPU is named).
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

from lrformer_deploy.cpus import cpu_name

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VIDEO = REPO.parent / "shared" / "data" / "car-detection.mp4"
sys.path.insert(0, str(REPO))


class FakeCamera:
    """Frames of a video at `fps` in real time; a reader that falls behind gets the oldest of the last
    `buffer` frames (a driver ring buffer), each stamped with its capture time."""

    kind = "webcam"
    description = "fake camera"
    frame_count = None
    stem = "camera"
    ended_early = None
    is_video = True
    is_live = True

    def __init__(self, frames, fps: float, seconds: float, buffer: int = 4) -> None:
        self.images, self.fps, self.seconds, self.buffer = frames, fps, seconds, buffer

    def frames(self):
        from lrformer_deploy.runtime.sources import Frame

        t0 = time.perf_counter()
        total = int(self.seconds * self.fps)
        ring: collections.deque = collections.deque(maxlen=self.buffer)
        next_capture = 0
        while True:
            now = time.perf_counter()
            while next_capture < total and t0 + next_capture / self.fps <= now:
                ring.append(next_capture)  # the driver captures whether or not anyone reads
                next_capture += 1
            if ring:
                i = ring.popleft()
                yield Frame(index=i, stem=self.stem, image=self.images[i % len(self.images)],
                            captured=t0 + i / self.fps)
            elif next_capture >= total:
                return
            else:
                time.sleep(max(0.0, t0 + next_capture / self.fps - time.perf_counter()))

    def close(self) -> None:
        pass


def main() -> None:
    import cv2

    from lrformer_deploy.runtime.pipeline import PipelineOptions, run_pipeline
    from lrformer_deploy.runtime.segmenter import Segmenter
    from lrformer_deploy.runtime.sinks import Outputs

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model (default: the demo model)")
    p.add_argument("--video", default=str(DEFAULT_VIDEO), help="frames for the fake camera")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--seconds", type=float, default=15.0, help="camera running time per mode")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    args = p.parse_args()

    cap = cv2.VideoCapture(args.video)
    frames = []
    while len(frames) < 100:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    if not frames:
        sys.exit(f"cannot read {args.video}")
    rows = []
    with Segmenter(args.model, intra_op_threads=args.threads) as seg, tempfile.TemporaryDirectory() as tmp:
        seg(frames[0])  # warm up
        for label, drop in (("every frame (before)", False), ("live: newest frame (after)", True)):
            outputs = Outputs(video_path=Path(tmp) / f"{drop}.mp4", fps=args.fps)
            result = run_pipeline(seg, FakeCamera(frames, args.fps, args.seconds), outputs,
                                  PipelineOptions(progress=False, drop_stale=drop))
            s = result.summary()
            rows.append((label, s["frames"], s["dropped"], s["latency_ms"]["p50"], s["latency_ms"]["p95"],
                         s["stage_ms_per_frame"]["infer"]))
        print(f"model {seg.model_path.name} on {seg.backend_name}, input {seg.input_size}, frames "
              f"{frames[0].shape[1]}x{frames[0].shape[0]}; camera {args.fps:g} fps for {args.seconds:g} s; "
              f"CPU: {cpu_name()}")
    print(f"{'mode':28s} {'segmented':>9s} {'dropped':>8s} {'p50 ms':>8s} {'p95 ms':>8s} {'infer ms':>9s}")
    for label, n, dropped, p50, p95, infer in rows:
        print(f"{label:28s} {n:9d} {dropped:8d} {p50:8.1f} {p95:8.1f} {infer:9.1f}")
    print(f"p50 before/after: {rows[0][3] / rows[1][3]:.1f}x; p95 before/after: {rows[0][4] / rows[1][4]:.1f}x")


if __name__ == "__main__":
    main()
