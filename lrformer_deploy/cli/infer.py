"""lrformer-infer: segment an image, a folder/glob of images, a video, a webcam or a stream.

    lrformer-infer video.mp4                       # -> video_seg.mp4 next to the input
    lrformer-infer photos/ --save-mask masks/      # -> photos_seg/<stem>_seg.png and masks/<stem>.png
    lrformer-infer 0 --model m.engine --show       # webcam 0 on TensorRT

Exit status: 0 success; 1 when some images of a folder/glob could not be read (the others are done and
each bad file is named on stderr) or when a video ends before the frame count its container states
(truncated or damaged: every frame read is segmented and kept, one line says "read X of Y frames"); 2 for a user mistake (one "error: ..." line); 128 + signal on Ctrl-C
(130), SIGTERM (143) or SIGHUP (129): the partial video is finalised and playable, an earlier complete
output is never destroyed by it (the partial then goes to NAME.partial.mp4), and one line says what was kept.

Outputs are written to a temporary name beside the target and renamed into place when complete; a second
process writing the same output is refused ("... is being written by another process").
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from lrformer_deploy.contract import BACKENDS, DEFAULT_RECONNECT_S, MAX_PIXELS_FILES
from lrformer_deploy import atomic
from lrformer_deploy.cli.common import OneLineParser, opacity, parse_pixels, parse_size, quiet_decoders, writable_folder
from lrformer_deploy.errors import UserError, cli_entry, has_package, missing_package


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="lrformer-infer",
        description="Segment images, folders, videos, webcams or streams with an LRFormer model.",
    )
    p.add_argument("input", help="image, folder, glob ('imgs/*.jpg'), video file, webcam index (0) or stream URL")
    p.add_argument("--model", help="model: .engine, .onnx, manifest .json or .pth checkpoint (default: the demo model)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="auto = TensorRT engine if usable, else ONNX Runtime CUDA, else on a CPU OpenVINO for "
                        "int8/bf16 artifacts when installed, else ONNX Runtime CPU")
    p.add_argument("--device", default=None,
                   help="auto, cpu, cuda, cuda:N; with onnxruntime also 'tensorrt' (its TensorRT provider); with "
                        "openvino CPU (tested), GPU, NPU, AUTO (Intel hardware, passed through untested)")
    p.add_argument("--resize", default="stretch", choices=("stretch", "keep-ratio"),
                   help="fit frames to the model input by stretching, or keep the aspect ratio and pad")
    p.add_argument("--input-size", type=parse_size, default=None, metavar="HxW",
                   help="model input size for .pth checkpoints (default 512x512)")
    p.add_argument("--output", "-o", help="overlay output: a file (image/video) or, for folders, a folder")
    p.add_argument("--no-overlay", action="store_true", help="do not write overlay images/videos")
    p.add_argument("--save-mask", metavar="DIR", help="write class-id PNG masks (stem.png, or stem_000123.png for video)")
    p.add_argument("--opacity", type=opacity, default=0.5, help="mask opacity in the overlay (0..1, default 0.5)")
    p.add_argument("--legend", action=argparse.BooleanOptionalAction, default=True,
                   help="add a strip below each overlay naming the colours of the classes present (the default; "
                        "the frame itself is not covered, so the overlay is taller than the input); "
                        "--no-legend keeps the input's size")
    p.add_argument("--show", action="store_true", help="show the overlay in a window (q/Esc stops)")
    p.add_argument("--json", metavar="PATH", help="write a JSON summary (timings, latency, FPS) to PATH, '-' for stdout")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N frames/images")
    p.add_argument("--max-pixels", type=parse_pixels, default=MAX_PIXELS_FILES, metavar="N",
                   help=f"skip images whose header declares more pixels than this, without decoding them "
                        f"(N or WxH; default {MAX_PIXELS_FILES}; 0 = no limit)")
    p.add_argument("--reconnect", type=float, default=None, metavar="SECONDS",
                   help=f"live streams (rtsp/http without a length): when the stream stops or stalls, reopen it "
                        f"with backoff for up to SECONDS and keep writing the same output (default "
                        f"{DEFAULT_RECONNECT_S:g}; 0 = end at the first outage; files are never reconnected)")
    p.add_argument("--every-frame", action="store_true",
                   help="webcams and streams: segment every frame, however far behind that falls (default: the "
                        "newest frame, stale ones dropped and counted, so results stay about one inference old)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    return p


def _video_name_error(given: Path) -> UserError:
    return UserError(f"--output {given}: the input is a video, so the overlay is a video; use a video name such as "
                     f"{given.stem}.mp4 (for class-id PNGs per frame use --save-mask DIR)")


def plan_outputs(source, args: argparse.Namespace):
    """Default output names: <stem>_seg.mp4 / <stem>_seg.png next to the input; --output overrides.

    The file name must say what is written: a video input needs a video suffix, an image input an image
    suffix OpenCV can encode, a folder/glob input a folder."""
    import cv2

    from lrformer_deploy.runtime.sinks import VIDEO_SUFFIXES, Outputs

    out = Outputs(fps=getattr(source, "fps", 25.0))
    if args.save_mask:
        out.mask_dir = Path(args.save_mask).expanduser()
    if args.no_overlay:
        return out
    given = Path(args.output).expanduser() if args.output else None
    as_folder = given is not None and (given.is_dir() or args.output.endswith(("/", os.sep)))
    if source.kind == "image":
        src = source.paths[0]
        if as_folder:
            out.image_path = given / f"{src.stem}_seg.png"
        else:
            out.image_path = given or src.with_name(f"{src.stem}_seg.png")
            if given is not None and (given.suffix.lower() in VIDEO_SUFFIXES or not cv2.haveImageWriter(str(given))):
                raise UserError(f"--output {given}: the input is an image, so the overlay is an image; use an image "
                                f"name such as {given.stem}.png")
        if out.image_path.resolve() == src.resolve():
            raise UserError(f"--output would overwrite the input image {src}")
    elif source.kind == "images":
        root = Path(source.description)
        if given is not None and given.exists() and not given.is_dir():
            raise UserError(f"--output {given} is a file; for a folder or glob of images it must be a folder")
        out.image_dir = given or root.parent / f"{root.name}_seg"
    elif source.kind == "video":
        src = Path(source.description)
        if as_folder:
            out.video_path = given / f"{src.stem}_seg.mp4"
        else:
            out.video_path = given or src.with_name(f"{src.stem}_seg.mp4")
            if given is not None and given.suffix.lower() not in VIDEO_SUFFIXES:
                raise _video_name_error(given)
        if out.video_path.resolve() == src.resolve():
            raise UserError(f"--output would overwrite the input video {src}")
    else:  # webcam / stream: into the current folder
        out.video_path = (given / f"{source.stem}_seg.mp4") if as_folder else (given or Path(f"{source.stem}_seg.mp4"))
        if given is not None and not as_folder and given.suffix.lower() not in VIDEO_SUFFIXES:
            raise _video_name_error(given)
    return out


def _need(module: str, why: str) -> None:
    if not has_package(module):
        raise UserError(missing_package(module, why))


def _check_options(args: argparse.Namespace) -> None:
    """Arguments, the model file and the optional packages the options need, before anything is opened."""
    from lrformer_deploy.runtime.spec import resolve_model

    if args.max_frames is not None and args.max_frames <= 0:
        raise UserError("--max-frames must be a positive number")
    if args.reconnect is not None and not 0 <= args.reconnect < float("inf"):
        raise UserError("--reconnect must be a number of seconds, 0 or more")
    kind = resolve_model(args.model).kind if args.model else "onnx"  # the demo model is an ONNX graph
    if kind == "checkpoint":
        _need("torch", f"a .pth model ({Path(args.model).name})")
    elif args.backend == "torch":
        raise UserError("--backend torch runs .pth checkpoints; for .onnx/.engine models use onnxruntime, openvino "
                        "or tensorrt")
    if args.backend == "tensorrt":
        _need("tensorrt", "--backend tensorrt")
    elif args.backend == "openvino":
        _need("openvino", "--backend openvino")
    elif args.backend != "torch" and not (kind == "engine" and args.backend == "auto"):
        _need("onnxruntime", "running the model with ONNX Runtime")
    if args.input_size is not None and kind != "checkpoint":
        # An exported graph or engine has its input size built in; silently running at another size than
        # the user asked for is worse than saying so.
        what = f"{Path(args.model).name} is an exported model" if args.model else "the demo model is an exported graph"
        raise UserError(f"--input-size is for .pth checkpoints only; {what} with a fixed input size "
                        "(export again with lrformer-export --size to change it)")
    if args.input_size is not None and (args.input_size[0] % 32 or args.input_size[1] % 32):
        raise UserError(f"--input-size {args.input_size[0]}x{args.input_size[1]} must be a multiple of 32 on both sides")
    if args.show:
        from lrformer_deploy.runtime.pipeline import open_window

        open_window()


def _writable_file(path: Path, flag: str) -> None:
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; expected a file name")
    writable_folder(path.parent, flag)


def _check_outputs(outputs, json_target: str | None) -> list[Path]:
    """Every output location usable (folders created), before the model loads. Returns the paths to lock."""
    targets: list[Path] = []
    for path, flag in ((outputs.video_path, "--output"), (outputs.image_path, "--output")):
        if path is not None:
            _writable_file(path, flag)
            targets.append(path)
    for folder, flag in ((outputs.image_dir, "--output"), (outputs.mask_dir, "--save-mask")):
        if folder is not None:
            writable_folder(folder, flag)
            targets.append(folder)
    if json_target and json_target != "-":
        path = Path(json_target).expanduser()
        _writable_file(path, "--json")
        targets.append(path)
    return targets


def _kept_line(exc: KeyboardInterrupt, partial, outputs) -> str:
    """One line for an interrupted run: which signal, how far, and what is on disk now."""
    signame = exc.args[0] if exc.args and isinstance(exc.args[0], str) else "SIGINT"
    kept = []
    if outputs.kept_video is not None:
        note = "" if outputs.kept_video == outputs.video_path else f"; the earlier {outputs.video_path.name} is unchanged"
        kept.append(f"playable partial video {outputs.kept_video}{note}")
    elif outputs.video_path is not None:
        kept.append(f"no video written ({outputs.video_path} unchanged)")
    if outputs.image_dir is not None and outputs.written_frames:
        kept.append(f"{outputs.written_frames} overlays in {outputs.image_dir}")
    if outputs.mask_dir is not None and outputs.written_masks:
        kept.append(f"{outputs.written_masks} masks in {outputs.mask_dir}")
    return f"interrupted by {signame} after {partial.frames} frames; kept: " + (", ".join(kept) or "nothing")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_decoders()
    # One validation pass: options, model file, packages, input, every output location, locks. Only then
    # is the model loaded.
    _check_options(args)
    from lrformer_deploy.locks import OutputLocks
    from lrformer_deploy.runtime.segmenter import Segmenter
    from lrformer_deploy.runtime.sources import open_source

    source = open_source(args.input, max_frames=args.max_frames, max_pixels=args.max_pixels,
                         reconnect=args.reconnect)
    try:
        outputs = plan_outputs(source, args)
        if not outputs.needs_overlay and outputs.mask_dir is None and not args.show and not args.json:
            raise UserError("nothing to do: --no-overlay without --save-mask, --show or --json")
        locks = OutputLocks(_check_outputs(outputs, args.json)).acquire()
    except BaseException:
        source.close()
        raise
    with locks:
        try:
            segmenter = Segmenter(args.model, backend=args.backend, device=args.device, resize=args.resize,
                                  input_size=args.input_size)
        except BaseException:
            source.close()
            raise
        return _run(args, source, outputs, segmenter)


def _run(args, source, outputs, segmenter) -> int:
    from lrformer_deploy.runtime.pipeline import PipelineOptions, run_pipeline

    options = PipelineOptions(opacity=args.opacity, legend=args.legend, show=args.show, progress=not args.quiet,
                              drop_stale=False if args.every_frame else None)
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
            summary = {**summary_base, **partial.summary()}
            if outputs.kept_video is not None:
                summary["outputs"]["overlay"] = str(outputs.kept_video)
            _write_json(args.json, summary)
            print(_kept_line(exc, partial, outputs), file=sys.stderr)
            exc.reported = True  # type: ignore[attr-defined]  # cli_entry prints no second line
        raise
    finally:
        segmenter.close()
    summary = {**summary_base, **result.summary()}
    _write_json(args.json, summary)
    if not args.quiet:
        where = summary["outputs"]["overlay"] or summary["outputs"]["masks"]
        print(f"{result.frames} frames in {result.wall_s:.1f}s ({result.fps:.1f} fps) on {segmenter.backend_name}"
              + (f", {result.dropped} stale frames dropped (live source)" if result.dropped else "")
              + (f", {result.gaps} stream outages bridged" if result.gaps else "")
              + (f" -> {where}" if where else ""), file=sys.stderr)
    if result.failed:
        for name, err in result.failed:
            print(f"error: cannot read image {name}: {err}", file=sys.stderr)
        print(f"error: {len(result.failed)} of {len(result.failed) + result.frames} inputs failed", file=sys.stderr)
        return 1
    if result.stream_lost:
        print(f"note: the stream stopped and did not come back within {source.reconnect:g} s (--reconnect); "
              f"kept the {result.frames} frames segmented so far", file=sys.stderr)
    if result.ended_early:
        read, expected = result.ended_early
        print(f"error: read {read} of {expected} frames of {args.input}: the video ends before its stated length "
              f"(truncated or damaged); the {read} frames read were segmented and kept", file=sys.stderr)
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
        atomic.write_text(Path(target).expanduser(), text + "\n")
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror or exc}") from None


if __name__ == "__main__":
    sys.exit(main())
