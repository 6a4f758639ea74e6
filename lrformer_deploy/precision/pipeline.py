"""One call for the export CLI: FP32 graph -> FP16 or INT8 graph + the manifest's precision_details.

    details = make_precision_graph("out/NAME.onnx", "fp16", calib="frames/")          # NAME-fp16.onnx
    details = make_precision_graph("out/NAME.onnx", "int8", calib="clip.mp4", calib_count=64)
    details = make_precision_graph("out/NAME.onnx", "int8", calib="clip.mp4", target="cpu", quiet=True)

Inputs: `calib` is a folder of images or a video file. The graph is converted/calibrated on
`calib_count` frames sampled evenly; its accuracy is then checked on `check_count` OTHER frames of the
same source (midpoints between calibration frames) so the check is not done on the data that set the
ranges; a source too short to hold frames back is checked on the calibration frames (recorded).
Without `calib`, FP16 measures on procedural synthetic scenes (lrformer_deploy.data.synthetic) and says so;
INT8 requires real calibration data.

Frames are decoded and measured one at a time (memory does not grow with calib_count). `target`
chooses the graph's form: "tensorrt" (default; float ops in FP16 where measured safe, also around the
INT8 Q/DQ pairs) or "cpu" (the INT8 graph keeps its float ops in FP32 for ONNX Runtime's CPU provider;
FP16 graphs are the same for both). The manifest records the target. "bf16" (target cpu only) writes no
graph: it is the FP32 graph computed by OpenVINO in bf16, and its accuracy check runs exactly that. Progress bars (tqdm) go to stderr
unless `quiet` or stderr is not a terminal; one summary line per graph goes to stderr unless quiet.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from lrformer_deploy.contract import (CPU_ONLY_PRECISIONS, IMAGENET_MEAN, IMAGENET_STD, REDUCED_PRECISIONS, TARGETS,
                                      graph_size)
from lrformer_deploy.errors import UserError
from lrformer_deploy.precision.accuracy import DEFAULT_MIN_AGREEMENT, AccuracyBelowThreshold, accuracy_report
from lrformer_deploy.precision.calibration import (
    count_calibration_frames,
    iter_calibration_frames,
    load_calibration_frames,
    preprocessor,
)
from lrformer_deploy.precision.fp16 import convert_fp16
from lrformer_deploy.precision.int8 import quantize_int8
from lrformer_deploy.precision.macs import census_line

def output_path(fp32_onnx: str | Path, precision: str) -> Path:
    """NAME.onnx -> NAME-fp16.onnx / NAME-int8.onnx (the contract's file names)."""
    p = Path(fp32_onnx)
    return p.with_name(f"{p.stem}-{precision}.onnx")


def graph_file_size(fp32_onnx: Path) -> tuple[int, int]:
    """Static (H, W) of the image input of the ONNX graph at `fp32_onnx` (weights are not loaded)."""
    import onnx

    return graph_size(onnx.load(str(fp32_onnx), load_external_data=False), fp32_onnx.name)


def _synthetic_frames(count: int, size, mean, std, start: int = 0) -> np.ndarray:
    from lrformer_deploy.data.synthetic import generate_scene

    prep = preprocessor(size, mean, std)
    return np.stack([prep(generate_scene(1000 + i, (max(size[0], 32), max(size[1], 32)))[0])
                     for i in range(start, start + count)])


def held_back_frames(calib, calib_count: int, check_count: int, size, mean=IMAGENET_MEAN,
                     std=IMAGENET_STD) -> tuple[np.ndarray, dict]:
    """(frames, description) the accuracy checks run on: frames of `calib` its calibration did not use
    (or the synthetic scenes after the calibration ones without `calib`). The reduced graphs' check and
    the engine's verification before publishing use this one selection."""
    if calib is None:
        frames = _synthetic_frames(check_count, size, mean, std, start=calib_count)
        return frames, {"source": "synthetic procedural scenes (no --calib given)", "calibration_frames": calib_count,
                        "check_frames": check_count, "check_held_back": True}
    held_back = True
    try:
        frames = load_calibration_frames(calib, check_count, size, mean, std, holdout_of=calib_count)
    except UserError:  # too few frames to hold any back
        held_back = False
        frames = load_calibration_frames(calib, min(check_count, calib_count), size, mean, std)
    return frames, {"source": str(calib), "calibration_frames": calib_count, "check_frames": int(len(frames)),
                    "check_held_back": held_back}


def make_precision_graph(
    fp32_onnx: str | Path,
    precision: str,
    *,
    calib: str | Path | None = None,
    calib_count: int = 32,
    calib_method: str = "entropy",
    check_count: int = 8,
    out_onnx: str | Path | None = None,
    cache_dir: str | Path | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    min_agreement: float | None = None,
    target: str = "tensorrt",
    quiet: bool = False,
    bf16_graph: str | Path | None = None,
) -> dict:
    """Write NAME-fp16.onnx or NAME-int8.onnx beside `fp32_onnx`; return the precision_details dict.

    bf16 writes no graph: it checks `bf16_graph` (default the FP32 graph; an INT8 Q/DQ graph for INT8
    convolutions with bf16 float ops) as OpenVINO runs it with bf16 inference precision.

    Raises UserError (AccuracyBelowThreshold, with `.report` and `.details`) when mask agreement with
    FP32 is under min_agreement (default DEFAULT_MIN_AGREEMENT[precision]); the graph file is left in
    place for inspection.
    """
    fp32_onnx = Path(fp32_onnx)
    if precision in CPU_ONLY_PRECISIONS and target != "cpu":
        raise UserError(f"{precision} is a CPU precision (OpenVINO): use target cpu.")
    if precision not in REDUCED_PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(REDUCED_PRECISIONS)}, got {precision!r}.")
    if target not in TARGETS:
        raise UserError(f"target must be one of {', '.join(TARGETS)}, got {target!r}.")
    if not fp32_onnx.is_file():
        raise UserError(f"FP32 ONNX {fp32_onnx} does not exist.")
    out = Path(out_onnx) if out_onnx is not None else output_path(fp32_onnx, precision)
    size = graph_file_size(fp32_onnx)
    graph_precision = "int8" if precision == "bf16" and bf16_graph is not None else precision
    threshold = DEFAULT_MIN_AGREEMENT[graph_precision] if min_agreement is None else float(min_agreement)

    if calib is None:
        if precision == "int8":
            raise UserError("INT8 needs calibration data: pass --calib with a folder of images or a video.")
        calib_frames = _synthetic_frames(calib_count, size, mean, std)
    else:
        calib_frames = None if precision != "fp16" else iter_calibration_frames(calib, calib_count, size, mean, std)
    check_frames, data = held_back_frames(calib, calib_count, check_count, size, mean, std)

    if precision == "bf16":
        return _bf16_details(fp32_onnx, Path(bf16_graph or fp32_onnx), check_frames, data, threshold, quiet)
    if precision == "fp16":
        count = count_calibration_frames(calib, calib_count) if calib is not None else len(calib_frames)
        conversion = convert_fp16(fp32_onnx, out, calib_frames, count=count, quiet=quiet)
    else:
        conversion = quantize_int8(fp32_onnx, out, calib, count=calib_count, method=calib_method,
                                   cache_dir=cache_dir, size=size, mean=mean, std=std, target=target, quiet=quiet)
    details = {"precision": precision, "target": target, "data": data, "conversion": conversion,
               "compute": conversion["compute"]}
    details["onnx"] = out.name
    if not quiet:
        print(f"{out.name}: {census_line(conversion['compute'])}", file=sys.stderr)
    try:
        details["accuracy"] = accuracy_report(fp32_onnx, out, check_frames, precision=precision,
                                              min_agreement=threshold, quiet=quiet)
        if precision == "int8" and target == "cpu":
            _choose_cpu_backend(details, fp32_onnx, out, check_frames, threshold, quiet)
    except AccuracyBelowThreshold as exc:
        details["accuracy"] = exc.report
        exc.details = details  # the CLI may still record what was measured
        raise
    return details


TIMING_ROUNDS = 5


def time_cpu_backends(fp32_onnx: Path, int8_onnx: Path, frame: np.ndarray, openvino: bool) -> dict[str, float]:
    """Median ms of ONNX Runtime FP32, ONNX Runtime INT8 and (when installed) OpenVINO INT8 on one frame,
    through the runtime's own runners, in interleaved rounds (a neighbour's load hits them all alike), with
    a pause before each run (SETTLE_S: ONNX Runtime's spinning threads would slow the run after theirs)."""
    import time

    from lrformer_deploy.cpus import SETTLE_S
    from lrformer_deploy.runtime.backends.ort import OnnxRuntimeRunner

    runners = {"onnxruntime fp32": OnnxRuntimeRunner(fp32_onnx, device="cpu"),
               "onnxruntime int8": OnnxRuntimeRunner(int8_onnx, device="cpu")}
    if openvino:
        from lrformer_deploy.runtime.backends.openvino import OpenVINORunner

        runners["openvino int8"] = OpenVINORunner(int8_onnx, precision="int8", cache=False)
    times: dict[str, list[float]] = {name: [] for name in runners}
    try:
        for runner in runners.values():
            runner.activate()
        (input_name, shape), = runners["onnxruntime fp32"].io_info()[0][:1]
        if isinstance(shape[0], int) and shape[0] > len(frame):  # a static batch: fill it
            frame = np.repeat(frame[:1], shape[0], axis=0)
        for runner in runners.values():
            runner.infer({input_name: frame})  # warm-up: first runs allocate and pick kernels
        names = list(runners)
        for r in range(TIMING_ROUNDS):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                runner = runners[name]
                time.sleep(SETTLE_S)
                t0 = time.perf_counter()
                runner.infer({input_name: frame})
                times[name].append((time.perf_counter() - t0) * 1000)
    finally:
        for runner in runners.values():
            runner.deactivate()
    return {name: round(float(np.median(v)), 2) for name, v in times.items()}


def _choose_cpu_backend(details: dict, fp32_onnx: Path, out: Path, check_frames: np.ndarray, threshold: float,
                        quiet: bool) -> None:
    """Which CPU backend runs this INT8 graph fast, measured on the check frames, into details["cpu_backends"].

    ONNX Runtime keeps most of our Q/DQ graph's Convs in FP32 (a DequantizeLinear feeding a Conv without a
    QuantizeLinear after it is not fused into QLinearConv), so there INT8 is often slower than FP32;
    OpenVINO runs the same graph with u8 convolutions. When OpenVINO is the faster form, the reported
    accuracy is OpenVINO's (what `auto` will run), ONNX Runtime's is kept beside it.
    """
    from lrformer_deploy.cpus import cpu_name
    from lrformer_deploy.runtime.backends import openvino_missing

    ort_acc = details["accuracy"]
    choice: dict = {"cpu": cpu_name(), "method": f"median of {TIMING_ROUNDS} interleaved rounds on one check frame, "
                    "the graphs as the runtime runs them, all usable cores"}
    have_openvino = openvino_missing() is None
    ms = choice["median_ms"] = time_cpu_backends(fp32_onnx, out, check_frames[:1], openvino=have_openvino)
    if have_openvino:
        ov_acc = accuracy_report(fp32_onnx, out, check_frames, precision="int8", min_agreement=threshold,
                                 quiet=quiet, test_backend="openvino")
        if ms["openvino int8"] < ms["onnxruntime int8"]:
            choice["recommended"] = "openvino"
            details["accuracy"], details["accuracy_onnxruntime"] = ov_acc, ort_acc
        else:
            choice["recommended"] = "onnxruntime"
            details["accuracy_openvino"] = ov_acc
    else:
        choice["recommended"] = "onnxruntime"
        choice["openvino"] = openvino_missing()
    best = ms[f"{choice['recommended']} int8"]
    if best >= ms["onnxruntime fp32"]:
        hint = ("" if "openvino int8" in ms else "; OpenVINO runs it faster where installed "
                "(pip install 'lrformer-deploy[openvino]')")
        choice["note"] = (f"{out.name}: INT8 is slower than FP32 on this CPU with {choice['recommended']} "
                          f"({best:.0f} ms vs {ms['onnxruntime fp32']:.0f} ms per frame at export): the FP32 graph "
                          f"is faster here{hint}")
    details["cpu_backends"] = choice


def _bf16_details(fp32_onnx: Path, graph: Path, check_frames: np.ndarray, data: dict, threshold: float,
                  quiet: bool) -> dict:
    """bf16: no graph is written; `graph` (the FP32 graph, or an INT8 Q/DQ graph) is checked as OpenVINO runs
    it with bf16 inference precision."""
    if graph == fp32_onnx:
        method = ("none: the FP32 graph, run by OpenVINO with INFERENCE_PRECISION_HINT bf16 "
                  "(matmuls and convolutions in bf16 with FP32 accumulation)")
        why = "only OpenVINO computes in bf16; ONNX Runtime runs this graph in FP32"
    else:
        method = (f"none: the INT8 Q/DQ graph {graph.name}, run by OpenVINO with INFERENCE_PRECISION_HINT bf16 "
                  "(its quantized convolutions and matmuls in u8/i8, the float ops between them in bf16)")
        why = "only OpenVINO computes in bf16; ONNX Runtime runs this graph's float ops in FP32"
    details = {"precision": "bf16", "graph_precision": "fp32" if graph == fp32_onnx else "int8", "target": "cpu",
               "data": data, "onnx": graph.name, "conversion": {"method": method, "graph": graph.name},
               "cpu_backends": {"recommended": "openvino", "why": why}}
    try:
        details["accuracy"] = accuracy_report(fp32_onnx, graph, check_frames, precision="bf16",
                                              min_agreement=threshold, quiet=quiet, test_backend="openvino")
    except AccuracyBelowThreshold as exc:
        details["accuracy"] = exc.report
        exc.details = details
        raise
    return details
