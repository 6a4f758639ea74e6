"""GPU check: everything this project runs on an NVIDIA GPU, in one short script with one summary table.

    python samples/gpu_check.py                      # about 2-4 minutes
    python samples/gpu_check.py --skip-bench --frames 4 --video clip.mp4

Needs an NVIDIA GPU and torch with CUDA; TensorRT and pycuda are optional (their rows say "skipped").
On the shipped demo model and real video frames (car-detection.mp4 beside the checkout, CC BY 4.0, Intel
IoT DevKit sample videos; else samples/synthetic-scenes.mp4) it checks:
- torch on CUDA, FP32 and FP16 (autocast), against ONNX Runtime on the CPU: mask agreement;
- the TensorRT runner's CUDA memory providers (torch.cuda; pycuda when installed): device and pinned
  buffers, a host -> device -> host round trip on a stream, and a consumer stream ordered after a
  producer stream with `stream_wait` (what the runner does for GPU-resident inputs), plus the
  producer stream the runner derives for a torch CUDA tensor;
- `lrformer-bench --compare` on the demo model: the GPU rows (torch-cuda, tensorrt);
- with TensorRT: an FP32 engine (NCHW mask tail, TF32 off) built, run from host frames and from CUDA
  tensors made on a producer stream, compared with ONNX Runtime; its median latency;
- with TensorRT: FP16 and INT8 engines made through build() (reduced graph, engine, verification against
  ONNX Runtime before publishing, manifest) and run by Segmenter(backend="tensorrt"), one row each.
Exit status 0 when every check that ran passed, 1 when one failed, 2 with one line when no GPU is usable.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED_VIDEO = REPO.parent / "shared" / "data" / "car-detection.mp4"
SAMPLE_VIDEO = REPO / "samples" / "synthetic-scenes.mp4"
MIN_AGREEMENT = {"fp32": 0.999, "fp16": 0.99}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.splitlines()[0])
    p.add_argument("--video", type=Path, help="frames to check on (default: car-detection.mp4, else the sample video)")
    p.add_argument("--frames", type=int, default=8, help="frames taken evenly from the video (default 8)")
    p.add_argument("--device", type=int, default=0, help="CUDA device index (default 0)")
    p.add_argument("--skip-bench", action="store_true", help="leave out the lrformer-bench --compare run")
    p.add_argument("--bench-timeout", type=int, default=150, help="seconds allowed for lrformer-bench (default 150)")
    args = p.parse_args(argv)
    if args.frames < 1:
        p.error("--frames must be at least 1")
    if args.video is None:
        args.video = SHARED_VIDEO if SHARED_VIDEO.is_file() else SAMPLE_VIDEO
    if not args.video.is_file():
        p.error(f"video not found: {args.video}")
    return args


def gpu_reason() -> str | None:
    """None when torch can use a CUDA GPU, else why not (one line)."""
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed (install a CUDA build of torch)"
    import torch

    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA GPU (CPU-only build, no driver, or CUDA_VISIBLE_DEVICES empty)"
    return None


class Checks:
    """Runs named checks, keeps one row each: (check, result, detail, seconds)."""

    def __init__(self):
        self.rows: list[tuple[str, str, str, float]] = []

    @contextlib.contextmanager
    def check(self, name: str):
        t0 = time.perf_counter()
        box = {"detail": "", "result": "ok"}
        try:
            yield box
        except Skip as exc:
            box.update(result="skipped", detail=str(exc))
        except Exception as exc:  # a failed check is a row, and the others still run
            box.update(result="FAIL", detail=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            traceback.print_exc(file=sys.stderr)
        self.rows.append((name, box["result"], box["detail"], time.perf_counter() - t0))

    def table(self) -> str:
        w = max(len(r[0]) for r in self.rows)
        lines = [f"{'check':<{w}}  {'result':<7}  {'s':>6}  detail", "-" * (w + 60)]
        lines += [f"{n:<{w}}  {r:<7}  {s:>6.1f}  {d}" for n, r, d, s in self.rows]
        return "\n".join(lines)


class Skip(Exception):
    pass


def read_frames(video: Path, count: int) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(video))
    total = max(1, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
    frames = []
    for index in np.linspace(0, total - 1, count).astype(int):
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(index))
        ok, frame = cap.read()
        if ok:
            frames.append(frame)
    cap.release()
    if not frames:
        raise RuntimeError(f"no frames could be read from {video}")
    return frames


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.asarray(a) == np.asarray(b)).mean())


def check_memory_provider(kind: str, device: int) -> str:
    """Buffers, pinned copies, streams and producer -> consumer ordering through one provider."""
    from lrformer_deploy.runtime.backends.cuda import device_pointer, make_memory

    mem = make_memory(device, kind)
    mem.push()
    try:
        src = mem.pinned((16, 1 << 20), np.float32)  # 64 MiB: a copy long enough to race with
        src[:] = np.random.default_rng(0).standard_normal(src.shape, dtype=np.float32)
        dst = mem.pinned(src.shape, np.float32)
        ptr = mem.alloc(src.nbytes)
        producer, consumer = mem.new_stream(), mem.new_stream()
        mem.htod(ptr, src, producer)
        # The consumer reads what the producer is still writing: only the wait orders the two.
        mem.stream_wait(mem.stream_handle(consumer), mem.stream_handle(producer))
        mem.dtoh(dst, ptr, consumer)
        mem.synchronize(consumer)
        if not np.array_equal(src, dst):
            raise RuntimeError("the consumer stream read the buffer before the producer stream had written it")
        detail = f"{mem.gpu()[0]}: 64 MiB round trip, producer->consumer wait ok"
        if kind == "torch":
            import torch

            side = torch.cuda.Stream()
            with torch.cuda.stream(side):
                x = torch.ones((1, 3, 256, 448), device=f"cuda:{device}")
                _, _, stream = device_pointer(x, np.dtype(np.float32), (1, 3, 256, 448))
            if stream != side.cuda_stream:
                raise RuntimeError(f"producer stream of a torch tensor read as {stream}, made on {side.cuda_stream}")
            detail += "; torch tensor's producer stream found"
        mem.release()
        return detail
    finally:
        mem.pop()


def run_bench(work: Path, timeout: int) -> str:
    cmd = [sys.executable, "-m", "lrformer_deploy.cli.bench", "--compare", "--variant", "demo", "--num-classes", "6",
           "--size", "256x448", "--iterations", "10", "--warmup", "3", "--json", "--work-dir", str(work / "bench")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"lrformer-bench exited {out.returncode}: {(out.stderr.strip().splitlines() or [''])[-1]}")
    rows = [r for r in json.loads(out.stdout)["rows"] if r["device"] == "cuda"]
    if not rows:
        raise RuntimeError("lrformer-bench --compare printed no GPU rows")
    parts = []
    for r in rows:
        if r["status"] == "ok":
            parts.append(f"{r['name']} {r['median_ms']:.2f} ms, x{r.get('speedup_vs_torch') or 0:.1f} vs CPU eager, "
                         f"agree {r.get('agreement_vs_torch') or 0:.4f}")
        else:
            parts.append(f"{r['name']} skipped ({r.get('reason')})")
    if not any(r["status"] == "ok" for r in rows):
        raise RuntimeError("; ".join(parts))
    return "; ".join(parts)


def check_engine_through_build(precision: str, args, work: Path, size, batch: np.ndarray, reference) -> str:
    """An FP16 / INT8 engine made the way users make one: build() (graph, accuracy check, engine, verification
    before publish, manifest), then run by Segmenter(backend="tensorrt") and compared with ONNX Runtime."""
    if importlib.util.find_spec("tensorrt") is None:
        raise Skip("TensorRT is not installed")
    if reference is None:
        raise Skip("no ONNX Runtime reference")
    from lrformer_deploy.build import BuildRequest, build, demo
    from lrformer_deploy.runtime import Segmenter

    result = build(BuildRequest(checkpoint=demo.CHECKPOINT, size=size, precisions=(precision,), calib=str(args.video),
                                calib_count=8, check_count=4, engine="require", output_dir=work / "build",
                                name="demo-gpu", quiet=True, engine_options={"device_id": args.device}))
    art = result[precision]
    record = art.engine_record
    check = record["verification"]
    with Segmenter(art.manifest_path, backend="tensorrt", device=f"cuda:{args.device}") as seg:
        # The preprocessed frames ORT's reference ran on: masks at the input size, compared pixel by pixel.
        masks = np.concatenate([seg.infer(x[None]) for x in batch])
    agree = agreement(masks, reference)
    layers = record.get("layers", {})
    return (f"TensorRT {record['tensorrt']}: verification before publish {check['mask_agreement']:.5f} "
            f"(min {check['min_agreement']}) on {check['frames']} held-back frames; Segmenter vs ORT FP32 {agree:.5f}; "
            f"{layers.get('total', '?')} layers {layers.get('by_precision', {})}")


def main(argv=None) -> int:
    args = parse_args(argv)
    reason = gpu_reason()
    if reason is not None:
        print(f"error: gpu_check needs an NVIDIA GPU usable from torch: {reason}; nothing was checked", file=sys.stderr)
        return 2
    os.environ.setdefault("LRFORMER_DEPLOY_CACHE", str(Path(tempfile.gettempdir()) / "lrformer-gpu-check-cache"))

    import torch

    from lrformer_deploy.build import demo
    from lrformer_deploy.model.checkpoint import load_checkpoint
    from lrformer_deploy.data.datasets import get_dataset
    from lrformer_deploy.build.export import export_onnx
    from lrformer_deploy.model.lrformer import MaskHead
    from lrformer_deploy.runtime.backends.ort import OnnxRuntimeRunner
    from lrformer_deploy.runtime.preprocess import preprocess_image

    checks = Checks()
    size = demo.PRESET["size"]
    preset = get_dataset(demo.PRESET["dataset"])
    cuda = torch.device("cuda", args.device)
    print(f"GPU {torch.cuda.get_device_name(cuda)} (cc {'.'.join(map(str, torch.cuda.get_device_capability(cuda)))}), "
          f"torch {torch.__version__}, video {args.video.name}", file=sys.stderr)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        frames = read_frames(args.video, args.frames)
        batch = np.concatenate([preprocess_image(f, size, preset.mean, preset.std, "RGB", "stretch")[0] for f in frames])
        model = load_checkpoint(demo.CHECKPOINT, verbose=False)
        reference = None
        with checks.check("export + onnxruntime cpu (reference)") as row:
            # NCHW tail: the graph an engine is built from (and ORT gives the same masks on it).
            graph = export_onnx(model, work, "demo-nchw", size=size, head="mask", dataset=preset, quiet=True,
                                mask_tail="nchw").onnx_path
            with OnnxRuntimeRunner(graph, device="cpu") as ort_cpu:
                reference = np.concatenate([ort_cpu.infer({"image": x[None]})["mask"] for x in batch])
            row["detail"] = f"{len(frames)} frames at {size[0]}x{size[1]}, {len(np.unique(reference))} classes seen"

        head = MaskHead(model).to(cuda).eval()
        for precision in ("fp32", "fp16"):
            with checks.check(f"torch cuda {precision} vs ort cpu") as row:
                if reference is None:
                    raise Skip("no ONNX Runtime reference")
                x = torch.from_numpy(batch).to(cuda)
                with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=precision == "fp16"):
                    masks = head(x).cpu().numpy()
                agree = agreement(masks, reference)
                row["detail"] = f"mask agreement {agree:.5f} (min {MIN_AGREEMENT[precision]})"
                if agree < MIN_AGREEMENT[precision]:
                    raise RuntimeError(row["detail"])

        for kind in ("torch", "pycuda"):
            with checks.check(f"memory provider {kind}") as row:
                if kind == "pycuda" and importlib.util.find_spec("pycuda") is None:
                    raise Skip("pycuda is not installed")
                row["detail"] = check_memory_provider(kind, args.device)

        with checks.check("lrformer-bench --compare (GPU rows)") as row:
            if args.skip_bench:
                raise Skip("--skip-bench")
            row["detail"] = run_bench(work, args.bench_timeout)

        with checks.check("tensorrt engine fp32 vs ort cpu") as row:
            if importlib.util.find_spec("tensorrt") is None:
                raise Skip("TensorRT is not installed")
            if reference is None:
                raise Skip("no ONNX Runtime reference")
            import tensorrt as trt

            from lrformer_deploy.build.engine import build_engine
            from lrformer_deploy.runtime.backends.trt import TensorRTRunner

            record = build_engine(graph, work / "demo-nchw.engine", 2.0, tf32=False, device_id=args.device)
            runner = TensorRTRunner(work / "demo-nchw.engine", record, device_id=args.device).activate()
            try:
                host = np.concatenate([runner.infer({"image": x[None]})["mask"] for x in batch])
                producer = torch.cuda.Stream(cuda)
                gpu_masks = []
                for x in batch:
                    with torch.cuda.stream(producer):  # made on a producer stream the engine must wait for
                        t = torch.from_numpy(x[None]).pin_memory().to(cuda, non_blocking=True).clone()
                        gpu_masks.append(runner.infer({"image": t})["mask"])
                lat = []
                for _ in range(20):
                    t1 = time.perf_counter()
                    runner.infer({"image": batch[:1]})
                    lat.append((time.perf_counter() - t1) * 1000)
            finally:
                runner.deactivate()
            agree = agreement(host, reference)
            same = np.array_equal(host, np.concatenate(gpu_masks))
            row["detail"] = (f"TensorRT {trt.__version__} on {record['gpu']} ({record['gpu_source']}), build "
                             f"{record['build_seconds']} s; agreement {agree:.5f}; GPU-tensor inputs same masks: {same}; "
                             f"median {np.median(lat):.2f} ms/frame incl. copies")
            if agree < MIN_AGREEMENT["fp32"] or not same:
                raise RuntimeError(row["detail"])

        for precision in ("fp16", "int8"):
            with checks.check(f"tensorrt engine {precision} via build() + Segmenter") as row:
                row["detail"] = check_engine_through_build(precision, args, work, size, batch, reference)

    print(checks.table())
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 1 if any(r[1] == "FAIL" for r in checks.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
