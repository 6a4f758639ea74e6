"""lrformer-infer: segment an image, a folder/glob of images, a video, a webcam or a stream.

    lrformer-infer video.mp4                       # -> video_seg.mp4 next to the input
    lrformer-infer photos/ --save-mask masks/      # -> photos_seg/<stem>_seg.png and masks/<stem>.png
    lrformer-infer 0 --model m.engine --show       # webcam 0 on TensorRT

Exit status: 0 success; 1 when some images of a folder/glob could not be read (the others are done and
each bad file is named on stderr); 2 for a user mistake (one "error: ..." line); 130 on Ctrl-C (the
partial video is finalised and playable).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from lrformer_deploy.cli.common import parse_size
from lrformer_deploy.errors import UserError, cli_entry


def _opacity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"opacity must be between 0 and 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lrformer-infer",
        description="Segment images, folders, videos, webcams or streams with an LRFormer model.",
    )
    p.add_argument("input", help="image, folder, glob ('imgs/*.jpg'), video file, webcam index (0) or stream URL")
    p.add_argument("--model", help="model: .engine, .onnx, manifest .json or .pth checkpoint (default: the demo model)")
    p.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "onnxruntime", "torch"),
                   help="auto = TensorRT engine if usable, else ONNX Runtime CUDA, else ONNX Runtime CPU")
    p.add_argument("--device", default=None,
                   help="auto, cpu, cuda, cuda:N; with onnxruntime also 'tensorrt' (its TensorRT provider)")
    p.add_argument("--resize", default="stretch", choices=("stretch", "keep-ratio"),
                   help="fit frames to the model input by stretching, or keep the aspect ratio and pad")
    p.add_argument("--input-size", type=parse_size, default=None, metavar="HxW",
                   help="model input size for .pth checkpoints (default 512x512)")
    p.add_argument("--output", "-o", help="overlay output: a file (image/video) or, for folders, a folder")
    p.add_argument("--no-overlay", action="store_true", help="do not write overlay images/videos")
    p.add_argument("--save-mask", metavar="DIR", help="write class-id PNG masks (stem.png, or stem_000123.png for video)")
    p.add_argument("--opacity", type=_opacity, default=0.5, help="mask opacity in the overlay (0..1, default 0.5)")
    p.add_argument("--legend", action="store_true", help="draw a legend of the classes present")
    p.add_argument("--show", action="store_true", help="show the overlay in a window (q/Esc stops)")
    p.add_argument("--json", metavar="PATH", help="write a JSON summary (timings, latency, FPS) to PATH, '-' for stdout")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N frames/images")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    return p


def plan_outputs(source, args: argparse.Namespace):
    """Default output names: <stem>_seg.mp4 / <stem>_seg.png next to the input; --output overrides."""
    from lrformer_deploy.runtime.sinks import Outputs

    out = Outputs(fps=getattr(source, "fps", 25.0))
    if args.save_mask:
        out.mask_dir = Path(args.save_mask).expanduser()
    if args.no_overlay:
        return out
    given = Path(args.output).expanduser() if args.output else None
    if source.kind == "image":
        src = source.paths[0]
        if given is not None and (given.is_dir() or args.output.endswith(("/", os.sep))):
            out.image_path = given / f"{src.stem}_seg.png"
        else:
            out.image_path = given or src.with_name(f"{src.stem}_seg.png")
        if out.image_path.resolve() == src.resolve():
            raise UserError(f"--output would overwrite the input image {src}")
    elif source.kind == "images":
        root = Path(source.description)
        out.image_dir = given or root.parent / f"{root.name}_seg"
    elif source.kind == "video":
        src = Path(source.description)
        out.video_path = given or src.with_name(f"{src.stem}_seg.mp4")
        if out.video_path.resolve() == src.resolve():
            raise UserError(f"--output would overwrite the input video {src}")
    else:  # webcam / stream: into the current folder
        out.video_path = given or Path(f"{source.stem}_seg.mp4")
    return out


def _quiet_decoders() -> None:
    # FFmpeg and OpenCV print their own warnings for broken inputs; ours are clearer and one line each.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_decoders()
    from lrformer_deploy.runtime.pipeline import PipelineOptions, run_pipeline
    from lrformer_deploy.runtime.segmenter import Segmenter
    from lrformer_deploy.runtime.sources import open_source

    if args.max_frames is not None and args.max_frames <= 0:
        raise UserError("--max-frames must be a positive number")
    source = open_source(args.input, max_frames=args.max_frames)
    try:
        outputs = plan_outputs(source, args)
        if not outputs.needs_overlay and outputs.mask_dir is None and not args.show and not args.json:
            raise UserError("nothing to do: --no-overlay without --save-mask, --show or --json")
        segmenter = Segmenter(args.model, backend=args.backend, device=args.device, resize=args.resize,
                              input_size=args.input_size)
    except BaseException:
        source.close()
        raise
    options = PipelineOptions(opacity=args.opacity, legend=args.legend, show=args.show, progress=not args.quiet)
    summary_base = {
        "input": str(args.input),
        "source": source.kind,
        "model": str(segmenter.model_path),
        "backend": segmenter.backend_name,
        "batch": segmenter.batch_size,
        "input_size": list(segmenter.input_size),
        "resize": args.resize,
        "outputs": {
            "overlay": str(outputs.video_path or outputs.image_path or outputs.image_dir or "") or None,
            "masks": str(outputs.mask_dir) if outputs.mask_dir else None,
        },
    }
    try:
        result = run_pipeline(segmenter, source, outputs, options)
    except KeyboardInterrupt as exc:
        partial = getattr(exc, "result", None)
        if partial is not None:
            _write_json(args.json, {**summary_base, **partial.summary()})
            where = summary_base["outputs"]["overlay"]
            print(f"interrupted after {partial.frames} frames" + (f"; partial output in {where}" if where else ""),
                  file=sys.stderr)
        raise
    finally:
        segmenter.close()
    summary = {**summary_base, **result.summary()}
    _write_json(args.json, summary)
    if not args.quiet:
        where = summary["outputs"]["overlay"] or summary["outputs"]["masks"]
        print(f"{result.frames} frames in {result.wall_s:.1f}s ({result.fps:.1f} fps) on {segmenter.backend_name}"
              + (f" -> {where}" if where else ""), file=sys.stderr)
    if result.failed:
        for name, err in result.failed:
            print(f"error: cannot read image {name}: {err}", file=sys.stderr)
        print(f"error: {len(result.failed)} of {len(result.failed) + result.frames} inputs failed", file=sys.stderr)
        return 1
    if result.frames == 0:
        raise UserError(f"no frames could be read from {args.input}")
    return 0


def _write_json(target: str | None, data: dict) -> None:
    if not target:
        return
    text = json.dumps(data, indent=2)
    if target == "-":
        print(text)
        return
    try:
        Path(target).expanduser().write_text(text + "\n")
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror or exc}") from None


if __name__ == "__main__":
    sys.exit(main())
