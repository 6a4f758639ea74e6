"""lrformer-export: checkpoint -> static FP32 ONNX (+ FP16 / INT8 graphs) -> TensorRT engine.

Argument parsing only: lrformer_deploy.build validates the request and makes every artifact (each one
verified before it replaces an earlier export, its manifest written last); a missing TensorRT or GPU
only skips the engine.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lrformer_deploy.contract import CALIB_METHODS, HARDWARE_COMPATIBILITY, HEADS, TARGETS
from lrformer_deploy.errors import UserError, cli_entry
from lrformer_deploy.cli.common import OneLineParser, parse_size

_REPO_EXPORT_DIR = Path(__file__).resolve().parents[2] / "export"


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="lrformer-export", description=__doc__.splitlines()[0])
    src = p.add_argument_group("model")
    src.add_argument("--ckpt", help="LRFormer checkpoint (mmseg layout, bare state dict or module.-prefixed)")
    src.add_argument("--variant", help="T, S, B, L, XL or demo; detected from the checkpoint when omitted. "
                                       "Without --ckpt: export random weights (graph structure and speed only)")
    src.add_argument("--num-classes", type=int, help="classes (detected from the checkpoint)")
    src.add_argument("--dataset", help="ade20k, coco-stuff, cityscapes or synthetic (class names, palette)")
    src.add_argument("--preset", help="export preset: a name in export/ (ade20k, cityscapes, ...) or a JSON path")
    g = p.add_argument_group("graph")
    g.add_argument("--size", type=parse_size, help="static input size HxW, multiples of 32 (default: preset or 512x512)")
    g.add_argument("--batch", type=parse_batch, default=1,
                   help="static batch size (default 1), or dynamic:MAX for a batch dim 1..MAX (Triton batching)")
    g.add_argument("--opset", type=int, default=17, help="ONNX opset, >= 17 (default 17)")
    g.add_argument("--head", choices=HEADS, help="mask: class ids at input size (default); logits: stride-8 scores")
    g.add_argument("--input", dest="input_dtype", choices=("float32", "uint8"), default="float32",
                   help="uint8: the graph takes frames as uint8 N x H x W x 3 in the manifest's colour order and "
                        "casts, normalises and transposes them itself (4x fewer bytes to the model)")
    g.add_argument("--mask-dtype", choices=("int32", "uint8"), default="int32",
                   help="uint8: the mask head returns uint8 class ids (at most 256 classes)")
    g.add_argument("--output-dir", default="engines", help="where artifacts go (default engines/)")
    g.add_argument("--name", help="artifact stem (default lrformer-<variant>-<dataset>-<H>x<W>)")
    q = p.add_argument_group("precision (decided in the graph, checked with ONNX Runtime on the CPU)")
    q.add_argument("--fp16", action="store_true", help="also write a mixed FP16 graph (sensitive ops stay FP32)")
    q.add_argument("--int8", action="store_true", help="also write an explicit Q/DQ INT8 graph (needs --calib)")
    q.add_argument("--bf16", action="store_true",
                   help="with --target cpu: also write NAME-bf16.json, the FP32 graph run by OpenVINO in bf16 "
                        "(CPUs with AVX512-BF16 or AMX; refused elsewhere), checked against FP32 like FP16/INT8; "
                        "with --int8 also NAME-int8-bf16.json, the INT8 graph with its float ops in bf16")
    q.add_argument("--calib", help="calibration data: a folder of images or a video file")
    q.add_argument("--calib-count", type=int, default=32, help="calibration frames (default 32)")
    q.add_argument("--calib-method", choices=CALIB_METHODS, default="entropy")
    q.add_argument("--min-agreement", type=float,
                   help="fail when the reduced-precision mask agrees with FP32 on fewer pixels than this fraction")
    e = p.add_argument_group("TensorRT engine")
    e.add_argument("--workspace", type=float, default=4.0, help="builder workspace limit in GiB (default 4)")
    e.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=None,
                   help="let TensorRT run FP32 layers in TF32 (Ampere+); default off: FP32 layers, e.g. those "
                        "the FP16 pass kept in FP32, stay true FP32")
    e.add_argument("--version-compatible", action="store_true",
                   help="an engine later TensorRT releases of the same major version can run (larger plan)")
    e.add_argument("--hardware-compatible", choices=HARDWARE_COMPATIBILITY, default="none",
                   help="ampere+: runs on any Ampere or newer GPU; same-cc: on any GPU of this compute capability "
                        "(TensorRT >= 10.1); default none: this GPU model (fastest)")
    e.add_argument("--allow-plugins", action="store_true",
                   help="accept a network with TensorRT plugin layers (their library must be loaded at run time)")
    ex = e.add_mutually_exclusive_group()
    ex.add_argument("--engine", action="store_true", help="fail unless the engine is built")
    ex.add_argument("--no-engine", action="store_true", help="write ONNX artifacts only")
    p.add_argument("--target", choices=TARGETS, default="tensorrt",
                   help="what the graphs are shaped for: tensorrt (default; GPU) or cpu (ONNX Runtime on a CPU); "
                        "recorded in the manifest")
    p.add_argument("--triton", metavar="DIR", help="also write a Triton model repository into DIR (see lrformer-triton)")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-artifact lines")
    return p


def parse_batch(text: str):
    """'4' -> 4 (static); 'dynamic:8' -> ('dynamic', 8)."""
    import argparse

    kind, _, top = text.partition(":")
    try:
        return ("dynamic", int(top)) if kind == "dynamic" else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch {text!r} is not N or dynamic:MAX") from None


def load_preset(name: str) -> dict:
    path = Path(name)
    candidates = [path] if path.suffix == ".json" else [Path("export") / f"{name}.json", _REPO_EXPORT_DIR / f"{name}.json"]
    for c in candidates:
        if c.is_file():
            try:
                return json.loads(c.read_text())
            except json.JSONDecodeError as exc:
                raise UserError(f"export preset {c} is not valid JSON ({exc})") from None
    raise UserError(f"export preset {name!r} not found (looked for {', '.join(map(str, candidates))})")


def request_from_args(args):
    """The parsed arguments as a lrformer_deploy.build.BuildRequest."""
    from lrformer_deploy.build import BuildRequest

    preset = load_preset(args.preset) if args.preset else None
    precisions = tuple(p for p, on in (("fp16", args.fp16), ("int8", args.int8), ("bf16", args.bf16)) if on)
    max_batch = args.batch[1] if isinstance(args.batch, tuple) else None
    export_options, engine_options = {}, {} if args.tf32 is None else {"tf32": args.tf32}
    # Only options the user changed are passed on, so build_engine's defaults stay in one place.
    for key, value in (("version_compatible", args.version_compatible),
                       ("hardware_compatible", args.hardware_compatible if args.hardware_compatible != "none" else None),
                       ("allow_plugins", args.allow_plugins)):
        if value:
            engine_options[key] = value
    if args.input_dtype != "float32":
        export_options["input_dtype"] = args.input_dtype
    if args.mask_dtype != "int32":
        export_options["mask_dtype"] = args.mask_dtype
    if max_batch is not None:
        if max_batch < 2:
            raise UserError(f"--batch dynamic:MAX needs MAX >= 2, got {max_batch}")
        export_options["max_batch"] = max_batch
        engine_options["batch_range"] = (1, max_batch, max_batch)  # the profile Triton batches into
    return BuildRequest(
        checkpoint=args.ckpt, variant=args.variant, num_classes=args.num_classes, dataset=args.dataset,
        preset=preset, size=args.size, batch=1 if max_batch else args.batch, head=args.head, opset=args.opset, precisions=precisions,
        calib=args.calib, calib_count=args.calib_count, calib_method=args.calib_method,
        min_agreement=args.min_agreement, target=args.target,
        engine="off" if args.no_engine else ("require" if args.engine else "auto"),
        workspace_gib=args.workspace,
        engine_options=engine_options, export_options=export_options, output_dir=args.output_dir, name=args.name, quiet=args.quiet)


@cli_entry
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from lrformer_deploy.build import build

    request = request_from_args(args)
    if args.triton:
        from lrformer_deploy.triton.repository import check_repository_dir

        check_repository_dir(Path(args.triton))
    result = build(request)  # validates everything before loading the model

    fp32 = result["fp32"]
    summary = {"fp32": {"onnx": str(fp32.onnx), "manifest": str(fp32.manifest_path),
                        "verification": fp32.manifest.get("verification")}}
    if not args.quiet:
        print(f"onnx: {fp32.onnx} ({fp32.manifest['export']['nodes']} nodes, {fp32.seconds:.1f} s)")
    for precision in ("fp16", "int8", "bf16", "int8-bf16"):
        if precision not in result.artifacts:
            continue
        art = result[precision]
        acc = art.manifest["precision_details"].get("accuracy", {})
        if not args.quiet:
            where = f"{art.manifest_path} -> {art.onnx.name}" if "bf16" in precision else str(art.onnx)
            print(f"{precision}: {where} ({art.seconds:.1f} s); vs fp32: mask agreement "
                  f"{acc.get('mask_agreement', float('nan')):.4f}, logits relative error "
                  f"{acc.get('logits_rel_error', float('nan')):.3g}")
        summary[precision] = {"onnx": str(art.onnx), "manifest": str(art.manifest_path), "accuracy": acc}
        if art.manifest["precision_details"].get("cpu_backends"):
            summary[precision]["cpu_backends"] = art.manifest["precision_details"]["cpu_backends"]
    skipped: dict[str, list[str]] = {}  # one line per reason, not one per graph (they share it)
    for art in result.artifacts.values():
        if art.engine is not None:
            line = f"engine: {art.engine}"
            if not args.quiet:
                print(line)
            summary.setdefault("engines", []).append(line)
        elif art.engine_skipped is not None:
            skipped.setdefault(art.engine_skipped, []).append(art.precision)
    for reason, precisions in skipped.items():
        line = f"engine step skipped ({', '.join(precisions)}): {reason}"
        print(line, file=sys.stderr)
        summary.setdefault("engines", []).append(line)
    if args.triton:
        from lrformer_deploy.triton.repository import write_repository

        last = result[next(p for p in ("int8", "fp16", "fp32") if p in result.artifacts)]
        repo = write_repository(last.manifest_path, Path(args.triton))
        if not args.quiet:
            print(f"triton: {repo.models_line()}")
        summary["triton"] = repo.as_dict()
    summary["target"] = args.target
    summary["seconds"] = round(result.seconds, 2)
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
