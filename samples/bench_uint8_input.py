"""Float32 NCHW input vs uint8 NHWC input (lrformer-export --input uint8): bytes and ONNX Runtime CPU time.

    python samples/bench_uint8_input.py                          # LRFormer-T 512x896, random weights
    python samples/bench_uint8_input.py --variant demo --size 256x448 --rounds 10

Exports the same model twice through build() (seeded random weights: identical weights), once with the
float input and once with `--input uint8 --mask-dtype uint8`, then on real frames of car-detection.mp4
(beside the checkout; else the sample video):
- bytes per frame host -> model (the tensor the runtime hands the runner) and model -> host;
- the host preprocessing time per frame (Preprocessor: resize + normalise + NCHW, vs resize + channel order);
- ONNX Runtime CPU time of each graph, interleaved rounds, median;
- that the masks are identical.
Ratios come from one run on one machine; the CPU is named from /proc/cpuinfo. Not a test: nothing is
asserted about speed (give `uptime`'s load average with the numbers).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lrformer_deploy.cpus import cpu_name

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
VIDEO = REPO.parent / "shared" / "data" / "car-detection.mp4"


def read_frames(path: Path, count: int) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or count
    frames = []
    for i in range(count):
        cap.set(cv2.CAP_PROP_POS_FRAMES, i * max(1, total // count))
        ok, frame = cap.read()
        if ok:
            frames.append(frame)
    cap.release()
    return frames


def main() -> int:
    from lrformer_deploy.cli.common import parse_size

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="T")
    p.add_argument("--size", type=parse_size, default=(512, 896))
    p.add_argument("--rounds", type=int, default=6, help="interleaved timing rounds per graph (default 6)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="ONNX Runtime intra-op threads")
    p.add_argument("--video", type=Path, default=VIDEO if VIDEO.is_file() else REPO / "samples" / "synthetic-scenes.mp4")
    args = p.parse_args()

    from lrformer_deploy.build import BuildRequest, build
    from lrformer_deploy.runtime.backends.ort import OnnxRuntimeRunner
    from lrformer_deploy.runtime.preprocess import Preprocessor

    frames = read_frames(args.video, args.rounds)
    with tempfile.TemporaryDirectory(prefix="bench-uint8-") as tmp:
        common = dict(variant=args.variant, size=args.size, engine="off", quiet=True, output_dir=tmp, target="cpu")
        t0 = time.perf_counter()
        graphs = {"float32": build(BuildRequest(name="float", **common))["fp32"],
                  "uint8": build(BuildRequest(name="uint8", export_options={"input_dtype": "uint8", "mask_dtype": "uint8"},
                                              **common))["fp32"]}
        print(f"exported both graphs in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        inp = graphs["float32"].manifest["input"]
        preps = {kind: Preprocessor(tuple(args.size), tuple(inp["mean"]), tuple(inp["std"]), "RGB", "stretch", kind)
                 for kind in graphs}
        runners = {kind: OnnxRuntimeRunner(art.onnx, device="cpu", intra_op_threads=args.threads).activate()
                   for kind, art in graphs.items()}
        times = {k: [] for k in graphs}
        prep_times = {k: [] for k in graphs}
        bytes_in, bytes_out, same = {}, {}, True
        for kind in graphs:  # warm-up
            runners[kind].infer({"image": preps[kind].batch(frames[:1], 1)[0]})
        for frame in frames:
            masks = {}
            for kind in graphs:
                t = time.perf_counter()
                tensor = preps[kind].batch([frame], 1)[0]
                prep_times[kind].append(time.perf_counter() - t)
                t = time.perf_counter()
                out = runners[kind].infer({"image": tensor})["mask"]
                times[kind].append(time.perf_counter() - t)
                bytes_in[kind], bytes_out[kind] = tensor.nbytes, out.nbytes
                masks[kind] = out
            same = same and np.array_equal(masks["float32"].astype(np.int64), masks["uint8"].astype(np.int64))
        for r in runners.values():
            r.deactivate()

    med = {k: 1000 * statistics.median(v) for k, v in times.items()}
    pre = {k: 1000 * statistics.median(v) for k, v in prep_times.items()}
    print(f"LRFormer-{args.variant} {args.size[0]}x{args.size[1]} (random weights), ONNX Runtime CPU, "
          f"{args.threads} threads, {len(frames)} frames of {args.video.name}; CPU: {cpu_name()}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'input':8} {'bytes in':>10} {'bytes out':>10} {'preprocess ms':>14} {'ORT ms (median)':>16}")
    for k in graphs:
        print(f"{k:8} {bytes_in[k]:>10,} {bytes_out[k]:>10,} {pre[k]:>14.2f} {med[k]:>16.1f}")
    print(f"ratios float32/uint8: bytes in {bytes_in['float32'] / bytes_in['uint8']:.2f}x, bytes out "
          f"{bytes_out['float32'] / bytes_out['uint8']:.2f}x, preprocess {pre['float32'] / pre['uint8']:.2f}x, "
          f"ORT time {med['float32'] / med['uint8']:.3f}x; masks identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
