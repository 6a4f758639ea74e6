"""Wall time and peak RSS per export step (FP32 export + check, FP16, INT8, accuracy reports).

    python samples/bench_export.py --calib car-detection.mp4 --sizes 512x512 512x896 1024x2048
    python samples/bench_export.py --calib clip.mp4 --sizes 512x896 --calib-counts 4 32 --steps int8

Each size (and calibration count) runs in its own process, so peak memory is measured per run; within
a run a sampling thread (psutil, 50 ms) records the peak RSS of each step. The model is an
official-layout LRFormer (random weights with randomised layer scales and BatchNorm statistics, as in
tests/ckpt_factory.py) unless --ckpt is given. Prints one JSON line per run and a table, with the load
average: on a shared machine, compare only numbers of the same run.
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

REPO = Path(__file__).resolve().parents[1]


class PeakRSS:
    def __init__(self, interval: float = 0.05):
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def reset(self) -> None:
        self.peak = self.proc.memory_info().rss

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def one_run(args) -> dict:
    import numpy as np
    import torch

    from lrformer_deploy.build.export import export_onnx
    from lrformer_deploy.data.datasets import get_dataset
    from lrformer_deploy.precision import accuracy_report, convert_fp16, load_calibration_frames, quantize_int8
    from lrformer_deploy.precision.calibration import count_calibration_frames, iter_calibration_frames

    sys.path.insert(0, str(REPO / "tests"))
    from ckpt_factory import randomized_model

    h, w = (int(v) for v in args.one.split("x"))
    steps, rss = {}, PeakRSS()
    torch.set_num_threads(os.cpu_count() or 1)

    def step(name, fn):
        rss.reset()
        t = time.perf_counter()
        out = fn()
        steps[name] = {"seconds": round(time.perf_counter() - t, 1), "peak_rss_gib": round(rss.peak / 2**30, 2)}
        return out

    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        # Cityscapes users export at 1024x2048 (19 classes); the other sizes are ADE20K's (150)
        dataset = get_dataset("cityscapes" if (h, w) == (1024, 2048) else "ade20k")
        model = randomized_model(args.variant, len(dataset.class_names))
        res = step("fp32_export_and_check", lambda: export_onnx(model, tmp, "m", size=(h, w), head="mask",
                                                                 dataset=dataset, variant=args.variant,
                                                                 quiet=True))
        steps["fp32_export_and_check"]["export_seconds"] = round(res.export_seconds, 1)
        del model
        fp32 = res.onnx_path
        check = load_calibration_frames(args.calib, 8, (h, w), holdout_of=args.calib_count)
        acc = {}
        if "fp16" in args.steps:
            out = Path(tmp) / "m-fp16.onnx"
            n = count_calibration_frames(args.calib, args.calib_count)
            rec = step("fp16", lambda: convert_fp16(fp32, out, iter_calibration_frames(args.calib, args.calib_count, (h, w)),
                                                    count=n, quiet=True))
            r = step("fp16_accuracy", lambda: accuracy_report(fp32, out, check))
            acc["fp16"] = {"logits_rel_error": r["logits_rel_error"], "mask_agreement": r["mask_agreement"],
                           "logits_argmax_agreement": r["logits_argmax_agreement"],
                           "macs_share": rec["compute"]["macs_share"]}
        if "int8" in args.steps:
            for target in args.targets:
                out = Path(tmp) / f"m-int8-{target}.onnx"
                rec = step(f"int8_{target}", lambda: quantize_int8(fp32, out, args.calib, count=args.calib_count,
                                                                    method=args.calib_method, target=target,
                                                                    cache_dir=tmp, quiet=True))
                r = step(f"int8_{target}_accuracy", lambda: accuracy_report(fp32, out, check))
                acc[f"int8_{target}"] = {"logits_rel_error": r["logits_rel_error"], "mask_agreement": r["mask_agreement"],
                                         "logits_argmax_agreement": r["logits_argmax_agreement"],
                                         "macs_share": rec["compute"]["macs_share"],
                                         "ort_cpu_ms_median": r["ort_cpu_ms_median"],
                                         "tensors": rec["calibration"]["tensors"]}
    rss.stop()
    return {"size": args.one, "variant": args.variant, "classes": len(dataset.class_names),
            "calib_count": args.calib_count, "steps": steps,
            "accuracy": acc, "loadavg": [round(v, 2) for v in os.getloadavg()]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calib", required=True, help="calibration video or image folder")
    p.add_argument("--sizes", nargs="+", default=["512x512", "512x896", "1024x2048"])
    p.add_argument("--calib-counts", nargs="+", type=int, default=[32])
    p.add_argument("--variant", default="T")
    p.add_argument("--steps", nargs="+", default=["fp16", "int8"], choices=("fp16", "int8"))
    p.add_argument("--targets", nargs="+", default=["tensorrt"], choices=("tensorrt", "cpu"))
    p.add_argument("--calib-method", default="entropy")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--calib-count", type=int, default=32, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one_run(args)), flush=True)
        return 0
    rows = []
    for size in args.sizes:
        for count in args.calib_counts:
            cmd = [sys.executable, __file__, "--one", size, "--calib", args.calib, "--calib-count", str(count),
                   "--variant", args.variant, "--calib-method", args.calib_method, "--steps", *args.steps,
                   "--targets", *args.targets]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{size} x{count}: failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["process_seconds"] = round(time.perf_counter() - t, 1)
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"\n{'size':>10} {'calib':>5} {'step':<24} {'wall s':>8} {'peak RSS GiB':>13}")
    for row in rows:
        for name, s in row["steps"].items():
            print(f"{row['size']:>10} {row['calib_count']:>5} {name:<24} {s['seconds']:>8} {s['peak_rss_gib']:>13}")
        print(f"{'':>10} {'':>5} load average after the run: {row['loadavg']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
