"""lrformer-batch: segment folders, image lists and videos with Ray Data, locally or on a Ray cluster.

    lrformer-batch frames/ clips/*.mp4 --output out/                  # masks -> out/masks/
    lrformer-batch list.txt --output out/ --save-mask --overlay       # + out/overlays/
    lrformer-batch archive/ --output out/ --address auto --gpus-per-actor 1 --model m.json
    lrformer-batch archive/ --output out/ --resume                    # after a crash or Ctrl-C

Exit status: 0 all inputs done; 1 when some inputs could not be read (named on stderr and in
out/manifest.json; the others are done) or the Ray job failed; 2 for a user mistake (one "error: ..."
line, before Ray starts); 130/143 when interrupted (the manifest records what was finished).
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import socket
import sys
from pathlib import Path

from lrformer_deploy.contract import BACKENDS, MAX_PIXELS_FILES
from lrformer_deploy.cli.common import (OneLineParser, opacity, parse_pixels, parse_size, quiet_decoders,
                                        writable_folder)
from lrformer_deploy.errors import UserError, cli_entry


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _fraction(allow_zero: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (value >= 0 if allow_zero else value > 0) or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be {'zero or ' if allow_zero else ''}positive, got {text}")
        return value
    return parse


def _address(text: str) -> str:
    if text == "auto" or re.fullmatch(r"(ray://)?[\w.\-\[\]:]+:\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"expected 'auto', HOST:PORT or ray://HOST:PORT, got {text!r}")


def _check_address(address: str) -> None:
    """A HOST:PORT that does not answer is refused now: ray.init would retry it for minutes."""
    if address == "auto":
        return
    hostport = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = hostport.rpartition(":")
    host = host.strip("[]")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="lrformer-batch",
        description="Segment many images and videos with Ray Data (locally, or on a Ray cluster with --address).",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image or video file, folder, glob ('imgs/*.jpg'), a .txt list of paths, or a file:// URI")
    p.add_argument("--output", "-o", required=True, metavar="DIR",
                   help="output folder: masks/, overlays/ and manifest.json")
    p.add_argument("--model", help="model: .engine, .onnx, manifest .json or .pth checkpoint (default: the demo model)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="auto = TensorRT engine if usable, else ONNX Runtime CUDA, else ONNX Runtime CPU")
    p.add_argument("--device", default=None, help="auto, cpu, cuda; with onnxruntime also 'tensorrt'")
    p.add_argument("--resize", default="stretch", choices=("stretch", "keep-ratio"),
                   help="fit frames to the model input by stretching, or keep the aspect ratio and pad")
    p.add_argument("--input-size", type=parse_size, default=None, metavar="HxW",
                   help="model input size for .pth checkpoints (default 512x512)")
    p.add_argument("--save-mask", action="store_true",
                   help="write class-id PNG masks to DIR/masks (stem.png, stem_000123.png for video); "
                        "the default when --overlay is not given")
    p.add_argument("--overlay", action="store_true",
                   help="write overlays to DIR/overlays (stem_seg.png, and stem_seg.mp4 per video)")
    p.add_argument("--opacity", type=opacity, default=0.5, help="mask opacity in the overlay (0..1, default 0.5)")
    p.add_argument("--legend", action="store_true",
                   help="add a strip below each overlay naming the colours of the classes present "
                        "(as lrformer-infer does by default; the overlay is taller than the input)")
    p.add_argument("--address", type=_address, default=None,
                   help="Ray cluster to join: auto, HOST:PORT or ray://HOST:PORT (default: start Ray on this machine)")
    p.add_argument("--actors", type=_positive_int, default=None, metavar="N",
                   help="segmenting actors (default: GPUs / --gpus-per-actor, or the CPUs left after reading)")
    p.add_argument("--gpus-per-actor", type=_fraction(True), default=0.0, metavar="F",
                   help="GPUs each actor asks Ray for (0 = run on CPUs; default 0)")
    p.add_argument("--cpus-per-actor", type=_fraction(False), default=None, metavar="F",
                   help="CPUs each actor asks Ray for (default 1)")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="ONNX Runtime threads per actor on the CPU (default: this machine's cores / actors; "
                        "on a cluster, --cpus-per-actor)")
    p.add_argument("--batch-size", type=_positive_int, default=16, metavar="B",
                   help="frames per actor call (default 16)")
    p.add_argument("--frames-per-task", type=_positive_int, default=None, metavar="N",
                   help="video frames decoded per task (default: about 64 MB of frames, 8..256)")
    p.add_argument("--max-pixels", type=parse_pixels, default=MAX_PIXELS_FILES, metavar="N",
                   help=f"fail images whose header declares more pixels than this, without decoding them "
                        f"(N or WxH; default {MAX_PIXELS_FILES}; 0 = no limit)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run recorded in DIR/manifest.json: skip inputs whose outputs are complete")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars and no summary line")
    return p


def _check_output(root: Path, resume: bool) -> None:
    writable_folder(root, "--output")
    from lrformer_deploy.batch.outputs import MANIFEST

    if (root / MANIFEST).exists() and not resume:
        raise UserError(f"{root} holds an earlier run ({MANIFEST}): pass --resume to continue it, "
                        "or choose another --output")


def _model(args: argparse.Namespace) -> tuple[str, object]:
    """The model file the actors load and its spec; the demo model is exported here, once, if needed."""
    from lrformer_deploy.runtime.segmenter import default_model_path
    from lrformer_deploy.runtime.spec import resolve_model

    path = Path(args.model).expanduser().resolve() if args.model else default_model_path()
    resolved = resolve_model(path)
    return str(path), resolved.spec


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # find_spec("ray.data") would import ray, which must wait until start_ray has set its environment.
    if importlib.util.find_spec("ray") is None:
        raise UserError("lrformer-batch needs Ray Data: pip install 'lrformer-deploy[batch]'")
    if args.gpus_per_actor == 0 and args.backend == "tensorrt":
        raise UserError("--backend tensorrt needs GPUs: pass --gpus-per-actor")
    from lrformer_deploy.batch.inputs import plan_inputs
    from lrformer_deploy.batch.job import JobFailed, JobOptions, plan_resources, run_job
    from lrformer_deploy.batch.outputs import Layout
    from lrformer_deploy.batch.run_manifest import RunManifest, finished, load_previous
    from lrformer_deploy.cpus import usable_cpus
    from lrformer_deploy.runtime.spec import default_palette

    if args.address is None and args.gpus_per_actor == 0:
        # Refuse actor settings that would starve Ray's read tasks (and hang) before anything starts.
        plan_resources(usable_cpus(), 0.0, JobOptions(model="", actors=args.actors,
                                                     cpus_per_actor=args.cpus_per_actor), local=True)
    if args.address:
        _check_address(args.address)
    quiet_decoders()
    root = Path(args.output).expanduser().resolve()
    items = plan_inputs(args.inputs, args.frames_per_task)
    _check_output(root, args.resume)  # before the model: a first-use demo export takes a while
    model, spec = _model(args)
    save_mask = args.save_mask or not args.overlay
    layout = Layout(root, save_mask, args.overlay)
    layout.make_dirs()
    if args.resume:
        layout.remove_stale_temporaries()
    previous = load_previous(layout.manifest) if args.resume else {}

    palette = tuple(spec.palette) if spec is not None else ()
    names = tuple(spec.class_names) if spec is not None else ()
    if spec is None and args.overlay:
        palette = default_palette(256)
    header = {"model": model, "options": {"save_mask": save_mask, "overlay": args.overlay, "resize": args.resize,
                                          "opacity": args.opacity, "legend": args.legend}}
    manifest = RunManifest(layout, items, header)
    todo, skipped = [], 0
    for item in items:
        old = previous.get(item.path)
        if args.resume and finished(item, old, layout):
            frames = int(old.get("frames") or 1) if old else 1
            manifest.set(item, "done", frames, resumed=True)
            skipped += 1
        elif item.error:
            manifest.set(item, "failed", 0, item.error)
        else:
            todo.append(item)
    bad = [it for it in items if it.error]
    for item in bad:
        print(f"error: {item.path}: {item.error}", file=sys.stderr)
    progress = not args.quiet and sys.stderr.isatty()
    opts = JobOptions(model=model, backend=args.backend, device=args.device, resize=args.resize,
                      input_size=args.input_size, address=args.address, actors=args.actors,
                      gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor, threads=args.threads,
                      batch_size=args.batch_size, opacity=args.opacity, legend=args.legend, progress=progress,
                      palette=palette, class_names=names, max_pixels=args.max_pixels)
    result = None
    if todo:
        try:
            result = run_job(todo, layout, manifest, opts)
        except JobFailed as exc:
            print(f"error: {exc} (finished inputs are recorded in {layout.manifest}; "
                  "--resume continues)", file=sys.stderr)
            return 1
    else:
        manifest.save()
    failed = len(bad) + (len(result.failed) if result else 0)
    frames = result.frames if result else 0
    wall = result.wall_s if result else 0.0
    manifest.summary = {"inputs": len(items), "skipped": skipped, "processed": len(todo), "failed": failed,
                        "frames": frames, "wall_s": round(wall, 3),
                        "frames_per_s": round(frames / wall, 3) if wall > 0 else None,
                        "ray_start_s": round(result.ray_start_s, 3) if result else None,
                        "actors": result.sizing.actors if result and result.sizing else None}
    manifest.save()
    if not args.quiet:
        fps = f" ({frames / wall:.1f} frames/s)" if wall > 0 else ""
        print(f"{len(items)} inputs: {len(todo) - (len(result.failed) if result else 0)} done, {skipped} already done, "
              f"{failed} failed; {frames} frames in {wall:.1f}s{fps} -> {root}", file=sys.stderr)
    if failed:
        print(f"error: {failed} of {len(items)} inputs failed (see {layout.manifest})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
