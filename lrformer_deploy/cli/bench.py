"""lrformer-bench: latency (median, p95, mean, min) and throughput per backend, precision and batch size.

    lrformer-bench --variant T --size 512x512                    # ONNX Runtime FP32, random weights
    lrformer-bench --model out/lrformer-t-ade20k-512x512.onnx --precision int8 --calib clip.mp4
    lrformer-bench --compare --variant T --size 512x512          # torch eager vs ORT FP32/FP16/INT8 (+ GPU rows)
"""
from __future__ import annotations

import json
import sys

from lrformer_deploy.contract import HEADS
from lrformer_deploy.errors import cli_entry
from lrformer_deploy.cli.common import OneLineParser, parse_size


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="lrformer-bench", description=__doc__.splitlines()[0])
    src = p.add_argument_group("model (one of)")
    src.add_argument("--model", help="an exported .onnx, its manifest .json, a TensorRT .engine, or a .pth checkpoint")
    src.add_argument("--variant", help="T, S, B, L, XL or demo: random weights, exported on the fly")
    p.add_argument("--num-classes", type=int, default=150, help="classes for --variant (default 150)")
    p.add_argument("--size", type=parse_size, help="input HxW, multiples of 32 (default 512x512 for --variant/.pth)")
    p.add_argument("--head", choices=HEADS, default="mask",
                   help="graph output for --variant/.pth exports (default mask: upsample + argmax in the graph)")
    p.add_argument("--batch", type=int, help="batch size (default 1; an exported graph's batch is fixed)")
    p.add_argument("--backend", default="auto", help="onnxruntime, openvino, torch, tensorrt or auto (default)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda when available)")
    p.add_argument("--precision", default="fp32",
                   help="fp32 (default), fp16 or int8 (graphs made on the fly), bf16 (OpenVINO, CPUs with bf16)")
    p.add_argument("--compare", action="store_true",
                   help="torch eager vs ONNX Runtime FP32/FP16/INT8 and OpenVINO FP32/INT8 (when installed) on one "
                        "input (+ torch CUDA, TensorRT on a GPU)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per backend first (default 5)")
    timing = p.add_mutually_exclusive_group()
    timing.add_argument("--iterations", type=int, default=20, help="timed runs per backend (default 20)")
    timing.add_argument("--duration", type=float, help="instead: about this many seconds of timed runs per backend")
    p.add_argument("--threads", type=int,
                   help="CPU threads for every backend (ORT intra-op and torch; default: all cores)")
    p.add_argument("--calib", help="INT8 calibration images folder or video (default: synthetic scenes)")
    p.add_argument("--calib-count", type=int, default=8, help="calibration frames for FP16/INT8 (default 8)")
    p.add_argument("--engine", help="a TensorRT engine to time (GPU machines)")
    p.add_argument("--work-dir", help="keep exported graphs here and reuse them next time (default: a temp folder)")
    p.add_argument("--spin-wait", choices=("on", "off"), default="on",
                   help="on (default): library defaults; off: idle threads sleep (OMP_WAIT_POLICY=PASSIVE, "
                        "ORT allow_spinning=0), fairer on a machine shared with other jobs")
    p.add_argument("--settle-ms", type=float, default=50,
                   help="with several rows, pause this long before each timed run so the previous backend's "
                        "spinning threads do not share the cores (default 50, 0: none)")
    p.add_argument("--seed", type=int, default=0, help="synthetic input scene seed (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p


@cli_entry
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from lrformer_deploy.bench.run import format_report, run_benchmark

    report = run_benchmark(
        model=args.model, variant=args.variant, num_classes=args.num_classes, size=args.size, batch=args.batch,
        head=args.head, backend=args.backend, device=args.device, precision=args.precision, compare=args.compare,
        warmup=args.warmup, iterations=args.iterations, duration=args.duration, threads=args.threads,
        calib=args.calib, calib_count=args.calib_count, engine=args.engine, work_dir=args.work_dir, seed=args.seed,
        spin_wait=args.spin_wait == "on", settle_ms=args.settle_ms)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
