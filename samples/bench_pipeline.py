"""Benchmark the video pipeline against the bare model, and check that memory stays flat.

    python samples/bench_pipeline.py                       # the demo model on the sample video
    python samples/bench_pipeline.py --model engines/m.onnx --video clip.mp4
    python samples/bench_pipeline.py --synthetic           # a generated conv-stack model (no demo needed)
    python samples/bench_pipeline.py --run t.json:onnxruntime --run t-int8.json:openvino \
        --run t-bf16.json:openvino --frames 60             # end-to-end fps per backend/artifact, one table

Prints, for one model on one video:
- model-only throughput: frames/s of Segmenter.infer on frames preprocessed beforehand,
- end-to-end throughput: frames/s of `lrformer-infer` (decode, preprocess, infer, postprocess, draw,
  encode) on the whole video, in a subprocess,
- their ratio (the pipeline's overlap efficiency; the target on CPU with ONNX Runtime is >= 0.9),
- peak RSS of the pipeline on the first N frames vs the whole video (both subprocesses, ru_maxrss):
  a flat pipeline shows about the same peak for both.
With --run MODEL:BACKEND (repeatable) it prints one row per run instead: model-only fps, end-to-end fps
of `lrformer-infer --backend BACKEND` on the first --frames frames, their ratio, the end-to-end speed
relative to the first run, and peak RSS. Not a test: nothing is asserted, numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VIDEO = REPO.parent / "shared" / "data" / "car-detection.mp4"
sys.path.insert(0, str(REPO))


def build_synthetic_model(folder: Path, size=(256, 448), width=32, depth=4, classes=19) -> Path:
    """A conv stack with the exporter's I/O contract (image -> mask), heavy enough to time on a CPU."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    H, W = size
    nodes, inits, prev, cin = [], [], "image", 3
    for i in range(depth):
        w = rng.normal(scale=(2.0 / (9 * cin)) ** 0.5, size=(width, cin, 3, 3)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(width, np.float32), f"b{i}")]
        stride = 2 if i < 3 else 1  # down to stride 8, like the real head
        nodes += [helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1], strides=[stride] * 2),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev, cin = f"r{i}", width
    inits += [numpy_helper.from_array(rng.normal(size=(classes, width, 1, 1)).astype(np.float32), "wc"),
              numpy_helper.from_array(np.zeros(classes, np.float32), "bc"),
              numpy_helper.from_array(np.array([1, classes, H, W], np.int64), "sizes")]
    nodes += [helper.make_node("Conv", [prev, "wc", "bc"], ["logits"]),
              helper.make_node("Resize", ["logits", "", "", "sizes"], ["up"], mode="linear"),
              helper.make_node("ArgMax", ["up"], ["ids"], axis=1, keepdims=0),
              helper.make_node("Cast", ["ids"], ["mask"], to=TensorProto.INT32)]
    graph = helper.make_graph(nodes, "bench", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("mask", TensorProto.INT32, [1, H, W])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bench-synthetic.onnx"
    onnx.save(model, str(path))
    manifest = {
        "format": "lrformer-deploy-manifest", "schema_version": 1, "name": path.stem,
        "model": {"variant": "synthetic-bench", "num_classes": classes, "dataset": "none",
                  "class_names": [f"class {i}" for i in range(classes)],
                  "palette": [[(67 * i) % 256, (131 * i) % 256, (29 * i) % 256] for i in range(classes)]},
        "input": {"name": "image", "shape": [1, 3, H, W], "layout": "NCHW", "dtype": "float32", "color_order": "RGB",
                  "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]},
        "output": {"name": "mask", "kind": "mask", "shape": [1, H, W], "dtype": "int32", "stride": 1},
        "precision": "fp32", "opset": 17, "artifacts": {"onnx": {"file": path.name}},
    }
    path.with_suffix(".json").write_text(json.dumps(manifest))
    return path


def model_only_fps(model: str, video: Path, backend: str, device: str | None, frames: int) -> tuple[float, str]:
    import cv2

    from lrformer_deploy.runtime import Segmenter

    seg = Segmenter(model, backend=backend, device=device)
    cap = cv2.VideoCapture(str(video))
    batches = []
    pending = []
    while len(batches) * seg.batch_size < frames:
        ok, frame = cap.read()
        if not ok:
            break
        pending.append(frame)
        if len(pending) == seg.batch_size:
            batches.append(seg.preprocessor.batch(pending, seg.batch_size)[0])
            pending = []
    cap.release()
    for b in batches[:3]:
        seg.infer(b)  # warm-up: first runs allocate and pick kernels
    start = time.perf_counter()
    for b in batches:
        seg.infer(b)
    elapsed = time.perf_counter() - start
    name = seg.backend_name
    seg.close()
    return len(batches) * seg.batch_size / elapsed, name


def run_pipeline_subprocess(model: str, video: Path, backend: str, device: str | None, max_frames: int | None,
                            workdir: Path) -> tuple[dict, float]:
    """Run lrformer-infer in a child; return its JSON summary and its own peak RSS in MiB.

    Through /usr/bin/time where it exists: a child forked from this process inherits this process's peak
    RSS in ru_maxrss (the copied address space counts until exec), so with the model-only Segmenters
    loaded here every run would report at least this process's peak. /usr/bin/time is small, and its
    child's ru_maxrss is the pipeline's own."""
    summary = workdir / f"summary-{max_frames or 'all'}.json"
    cmd = [sys.executable, "-m", "lrformer_deploy.cli.infer", str(video), "--model", model, "--backend", backend,
           "--output", str(workdir / f"out-{max_frames or 'all'}.mp4"), "--json", str(summary), "--quiet"]
    if device:
        cmd += ["--device", device]
    if max_frames:
        cmd += ["--max-frames", str(max_frames)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    timer = Path("/usr/bin/time")
    peak_file = workdir / f"peak-{max_frames or 'all'}.txt"
    if timer.is_file():
        cmd = [str(timer), "-f", "%M", "-o", str(peak_file), *cmd]
    proc = subprocess.Popen(cmd, env=env, cwd=workdir)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"lrformer-infer failed with exit code {proc.returncode}")
    if timer.is_file():
        rss_mib = int(peak_file.read_text().split()[-1]) / 1024  # %M: KiB
    else:  # an upper bound: includes this process's peak (see above)
        rss_mib = usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)  # KiB on Linux
    return json.loads(summary.read_text()), rss_mib


def compare_runs(args) -> int:
    from lrformer_deploy.cpus import cpu_name

    rows = []
    with tempfile.TemporaryDirectory(prefix="lrformer-bench-") as tmp:
        for i, run in enumerate(args.run):
            model, _, backend = run.rpartition(":") if ":" in run else (run, "", "auto")
            model_fps, name = model_only_fps(model, args.video, backend or "auto", args.device, args.model_frames)
            workdir = Path(tmp) / str(i)
            workdir.mkdir()
            full, rss = run_pipeline_subprocess(model, args.video, backend or "auto", args.device, args.frames, workdir)
            rows.append((Path(model).name, name, model_fps, full["fps"], rss, full["frames"]))
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores), video {args.video.name}, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'model':<28} {'backend':<28} {'model fps':>9} {'e2e fps':>8} {'e2e/model':>9} {'e2e vs 1st':>10} "
          f"{'peak RSS MiB':>12} {'frames':>6}")
    for model, name, mfps, efps, rss, frames in rows:
        print(f"{model:<28} {name:<28} {mfps:>9.2f} {efps:>8.2f} {efps / mfps:>9.3f} {efps / rows[0][3]:>10.2f} "
              f"{rss:>12.0f} {frames:>6}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model file (.onnx, .json, .engine); default: the demo model")
    p.add_argument("--synthetic", action="store_true", help="use a generated conv-stack model instead")
    p.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    p.add_argument("--backend", default="auto")
    p.add_argument("--device", default=None)
    p.add_argument("--model-frames", type=int, default=100, help="frames for the model-only measurement")
    p.add_argument("--short", type=int, default=50, help="frames of the short run for the RSS comparison")
    p.add_argument("--run", action="append", metavar="MODEL[:BACKEND]",
                   help="compare runs: one table row per MODEL:BACKEND (backend default auto), the first is the base")
    p.add_argument("--frames", type=int, default=None, help="with --run: frames of each end-to-end run")
    args = p.parse_args()
    if not args.video.is_file():
        raise SystemExit(f"video not found: {args.video}")
    if args.run:
        return compare_runs(args)
    with tempfile.TemporaryDirectory(prefix="lrformer-bench-") as tmp:
        workdir = Path(tmp)
        if args.synthetic:
            model = str(build_synthetic_model(workdir / "model"))
        elif args.model:
            model = args.model
        else:
            from lrformer_deploy.errors import UserError
            from lrformer_deploy.runtime.segmenter import default_model_path

            try:
                model = str(default_model_path())
            except UserError as exc:
                raise SystemExit(f"error: {exc} (pass --model or --synthetic)")
        model_fps, backend_name = model_only_fps(model, args.video, args.backend, args.device, args.model_frames)
        full, rss_full = run_pipeline_subprocess(model, args.video, args.backend, args.device, None, workdir)
        short, rss_short = run_pipeline_subprocess(model, args.video, args.backend, args.device, args.short, workdir)
    e2e_fps = full["fps"]
    print(f"model:                {model}")
    print(f"backend:              {backend_name}   (cpu cores: {os.cpu_count()})")
    print(f"video:                {args.video.name}, {full['frames']} frames")
    print(f"model-only:           {model_fps:8.2f} frames/s  (Segmenter.infer on preprocessed frames)")
    print(f"end-to-end pipeline:  {e2e_fps:8.2f} frames/s  (decode -> infer -> overlay -> encode)")
    print(f"ratio e2e / model:    {e2e_fps / model_fps:8.3f}  (target >= 0.9 on CPU with ONNX Runtime)")
    stages = ", ".join(f"{k} {v:.1f}" for k, v in full["stage_ms_per_frame"].items())
    print(f"stage busy ms/frame:  {stages}")
    print(f"latency p50/p95 ms:   {full['latency_ms']['p50']:.1f} / {full['latency_ms']['p95']:.1f}")
    print(f"peak RSS:             {rss_short:8.1f} MiB for {short['frames']} frames, "
          f"{rss_full:8.1f} MiB for {full['frames']} frames (ratio {rss_full / rss_short:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
