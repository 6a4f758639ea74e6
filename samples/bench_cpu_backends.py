"""Every CPU backend x precision on the same graphs and frame, in interleaved rounds: speed vs ONNX Runtime
FP32 and agreement with it, for the logits head and the mask head (and the cost of the mask tail).

    python samples/bench_cpu_backends.py --mask out/t.json --logits out/tl.json [--mask-before out/t-nhwc.json]
    python samples/bench_cpu_backends.py --mask out/t.json --logits out/tl.json --repeats 3 --rounds 8

Each manifest is an FP32 export made with `lrformer-export --target cpu` (`--int8` beside it adds the INT8
rows, read from NAME-int8.onnx). bf16 rows run the FP32 graph on OpenVINO with bf16 inference precision
(only on a CPU with AVX512-BF16 or AMX); int8+bf16 rows run the INT8 graph so (`--int8 --bf16`'s
NAME-int8-bf16.json). `--layout-ab` adds OpenVINO rows without the channel-LayerNorm
layout rewrite (runtime/backends/openvino.py), to show its effect in the same run. `--mask-before` is a mask graph with the previous (NHWC Resize)
tail, the "today" of the ratios. One frame of car-detection.mp4 (or --video), all backends in one process,
each round runs every row once in a rotated order, with a --settle-ms pause before each run (without it,
the row after an ONNX Runtime row shares the cores with ORT's spinning threads), repeated --repeats times: ranges are min..max over the
repeats of each repeat's median ratio. Not a test: nothing is asserted; name the CPU with the numbers.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("CI", "true")  # openvino-telemetry stays off


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mask", required=True, help="FP32 mask-head manifest exported with --target cpu")
    p.add_argument("--logits", help="FP32 logits-head manifest of the same model and size")
    p.add_argument("--mask-before", help="a mask-head manifest with the previous NHWC Resize tail")
    p.add_argument("--video", default=str(REPO.parent / "shared" / "data" / "car-detection.mp4"))
    p.add_argument("--threads", type=int, default=None, help="threads for every backend (default: all usable)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--settle-ms", type=float, default=50,
                   help="pause before each timed run so the previous row's spinning threads are idle (default 50)")
    p.add_argument("--layout-ab", action="store_true",
                   help="also run the mask head on OpenVINO without the channel-LayerNorm layout rewrite (rows 'ov-plain')")
    args = p.parse_args()

    import cv2

    from lrformer_deploy.cpus import bf16_missing, cpu_name, usable_cpus
    from lrformer_deploy.runtime.backends import openvino_missing
    from lrformer_deploy.runtime.backends.ort import OnnxRuntimeRunner
    from lrformer_deploy.runtime.preprocess import Preprocessor
    from lrformer_deploy.runtime.spec import resolve_model

    threads = args.threads or usable_cpus()
    heads = {"mask": args.mask, "logits": args.logits, "mask-before": args.mask_before}
    rows: dict[str, object] = {}
    spec = None
    for head, manifest in heads.items():
        if manifest is None:
            continue
        spec = resolve_model(manifest).spec
        fp32 = spec.onnx_path
        int8 = fp32.with_name(f"{fp32.stem}-int8.onnx")
        rows[f"{head} ort fp32"] = OnnxRuntimeRunner(fp32, device="cpu", intra_op_threads=threads)
        if int8.is_file():
            rows[f"{head} ort int8"] = OnnxRuntimeRunner(int8, device="cpu", intra_op_threads=threads)
        if openvino_missing() is None:
            from lrformer_deploy.runtime.backends.openvino import OpenVINORunner

            rows[f"{head} ov fp32"] = OpenVINORunner(fp32, precision="fp32", threads=threads)
            if bf16_missing() is None:
                rows[f"{head} ov bf16"] = OpenVINORunner(fp32, precision="bf16", threads=threads)
            if int8.is_file():
                rows[f"{head} ov int8"] = OpenVINORunner(int8, precision="int8", threads=threads)
                if bf16_missing() is None:  # NAME-int8-bf16.json: the INT8 graph, float ops in bf16
                    rows[f"{head} ov int8+bf16"] = OpenVINORunner(int8, precision="bf16", threads=threads)
            if args.layout_ab and head == "mask":
                rows[f"{head} ov-plain fp32"] = OpenVINORunner(fp32, precision="fp32", threads=threads,
                                                               layout_rewrite=False)
                if int8.is_file():
                    rows[f"{head} ov-plain int8"] = OpenVINORunner(int8, precision="int8", threads=threads,
                                                                   layout_rewrite=False)
    cap = cv2.VideoCapture(args.video)
    cap.set(cv2.CAP_PROP_POS_FRAMES, 100)
    ok, frame = cap.read()
    if not ok:
        raise SystemExit(f"cannot read a frame of {args.video}")
    prep = Preprocessor(spec.input_size, spec.mean, spec.std, spec.color_order, "stretch")
    x = prep(frame)[0][None].astype(np.float32)

    outputs = {}
    for name, runner in rows.items():
        runner.activate()
        outputs[name] = next(iter(runner.infer({"image": x}).values()))
        runner.infer({"image": x})  # warm-up
    names = list(rows)
    per_repeat: list[dict[str, float]] = []
    for _ in range(args.repeats):
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.rounds):
            shift = r % len(names)
            for n in names[shift:] + names[:shift]:
                time.sleep(args.settle_ms / 1000)  # see lrformer_deploy/bench/timing.py: ORT spins after a run
                t0 = time.perf_counter()
                rows[n].infer({"image": x})
                times[n].append((time.perf_counter() - t0) * 1000)
        per_repeat.append({n: statistics.median(v) for n, v in times.items()})

    def span(values: list[float], fmt: str = "{:.2f}") -> str:
        lo, hi = min(values), max(values)
        return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}-{fmt.format(hi)}"

    def classes(out):
        return out.argmax(1) if out.ndim == 4 else out

    print(f"CPU: {cpu_name()}, {threads} thread(s), load average {os.getloadavg()[0]:.1f}, "
          f"{args.repeats} repeats x {args.rounds} interleaved rounds, {args.settle_ms:g} ms pause before each run, "
          f"model input {spec.input_size}")
    base = {h: f"{h} ort fp32" for h in heads}
    today = "mask-before ort fp32" if "mask-before ort fp32" in rows else "mask ort fp32"
    print(f"{'row':<22} {'median ms':>14} {'vs ORT FP32 same head':>22} {'vs ' + today:>26} {'agree vs ORT FP32':>18} "
          f"{'mask/logits':>12}")
    for n in names:
        head, backend, precision = n.rsplit(" ", 2)
        med = [r[n] for r in per_repeat]
        vs_same = [r[base[head]] / r[n] for r in per_repeat]
        vs_today = [r[today] / r[n] for r in per_repeat] if head.startswith("mask") else None
        ref = outputs[base[head]]
        agree = float((classes(outputs[n]) == classes(ref)).mean())
        logits_row = f"logits {backend} {precision}"
        ratio = ([r[n] / r[logits_row] for r in per_repeat]
                 if head.startswith("mask") and logits_row in rows else None)
        print(f"{n:<22} {span(med, '{:.0f}'):>14} {span(vs_same):>22} {span(vs_today) if vs_today else '-':>26} "
              f"{agree:>18.4f} {span(ratio) if ratio else '-':>12}")
    if "mask ort fp32" in rows and "mask-before ort fp32" in rows:
        a, b = classes(outputs["mask ort fp32"]), classes(outputs["mask-before ort fp32"])
        print(f"top-K tail vs the previous tail, ORT FP32 masks: {float((a == b).mean()):.5f} of pixels equal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
