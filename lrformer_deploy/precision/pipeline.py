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
FP16 graphs are the same for both). The manifest records the target. Progress bars (tqdm) go to stderr
unless `quiet` or stderr is not a terminal; one summary line per graph goes to stderr unless quiet.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from lrformer_deploy.contract import IMAGENET_MEAN, IMAGENET_STD, REDUCED_PRECISIONS, TARGETS, graph_size
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


def _graph_size(fp32_onnx: Path) -> tuple[int, int]:
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
) -> dict:
    """Write NAME-fp16.onnx or NAME-int8.onnx beside `fp32_onnx`; return the precision_details dict.

    Raises UserError (AccuracyBelowThreshold, with `.report` and `.details`) when mask agreement with
    FP32 is under min_agreement (default DEFAULT_MIN_AGREEMENT[precision]); the graph file is left in
    place for inspection.
    """
    fp32_onnx = Path(fp32_onnx)
    if precision not in REDUCED_PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(REDUCED_PRECISIONS)}, got {precision!r}.")
    if target not in TARGETS:
        raise UserError(f"target must be one of {', '.join(TARGETS)}, got {target!r}.")
    if not fp32_onnx.is_file():
        raise UserError(f"FP32 ONNX {fp32_onnx} does not exist.")
    out = Path(out_onnx) if out_onnx is not None else output_path(fp32_onnx, precision)
    size = _graph_size(fp32_onnx)
    threshold = DEFAULT_MIN_AGREEMENT[precision] if min_agreement is None else float(min_agreement)

    if calib is None:
        if precision == "int8":
            raise UserError("INT8 needs calibration data: pass --calib with a folder of images or a video.")
        calib_frames = _synthetic_frames(calib_count, size, mean, std)
    else:
        calib_frames = None if precision == "int8" else iter_calibration_frames(calib, calib_count, size, mean, std)
    check_frames, data = held_back_frames(calib, calib_count, check_count, size, mean, std)

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
    except AccuracyBelowThreshold as exc:
        details["accuracy"] = exc.report
        exc.details = details  # the CLI may still record what was measured
        raise
    return details
