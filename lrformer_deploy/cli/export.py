"""lrformer-export: checkpoint -> static FP32 ONNX (+ FP16 / INT8 graphs) -> TensorRT engine.

Each step writes its artifact beside a manifest; a missing TensorRT or GPU only skips the engine.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..errors import UserError, cli_entry
from .common import OneLineParser, parse_size

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
    g.add_argument("--batch", type=int, default=1, help="static batch size (default 1)")
    g.add_argument("--opset", type=int, default=17, help="ONNX opset, >= 17 (default 17)")
    g.add_argument("--head", choices=("mask", "logits"), help="mask: class ids at input size (default); logits: stride-8 scores")
    g.add_argument("--output-dir", default="engines", help="where artifacts go (default engines/)")
    g.add_argument("--name", help="artifact stem (default lrformer-<variant>-<dataset>-<H>x<W>)")
    q = p.add_argument_group("precision (decided in the graph, checked with ONNX Runtime on the CPU)")
    q.add_argument("--fp16", action="store_true", help="also write a mixed FP16 graph (sensitive ops stay FP32)")
    q.add_argument("--int8", action="store_true", help="also write an explicit Q/DQ INT8 graph (needs --calib)")
    q.add_argument("--calib", help="calibration data: a folder of images or a video file")
    q.add_argument("--calib-count", type=int, default=32, help="calibration frames (default 32)")
    q.add_argument("--calib-method", choices=("entropy", "percentile", "minmax"), default="entropy")
    q.add_argument("--min-agreement", type=float,
                   help="fail when the reduced-precision mask agrees with FP32 on fewer pixels than this fraction")
    e = p.add_argument_group("TensorRT engine")
    e.add_argument("--workspace", type=float, default=4.0, help="builder workspace limit in GiB (default 4)")
    ex = e.add_mutually_exclusive_group()
    ex.add_argument("--engine", action="store_true", help="fail unless the engine is built")
    ex.add_argument("--no-engine", action="store_true", help="write ONNX artifacts only")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    return p


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


def _resolve_dataset(name: str | None, num_classes: int):
    from ..datasets import dataset_for_num_classes, get_dataset

    if name is None:
        return dataset_for_num_classes(num_classes)
    preset = get_dataset(name)
    if preset.num_classes != num_classes:
        raise UserError(f"dataset {preset.name} has {preset.num_classes} classes but the model has {num_classes}")
    return preset


def _load_model(args):
    from ..checkpoint import load_checkpoint
    from ..manifest import sha256_file
    from ..model import build_model, get_config

    if args.ckpt:
        return load_checkpoint(args.ckpt, variant=args.variant, num_classes=args.num_classes), sha256_file(args.ckpt)
    if not args.variant:
        raise UserError("give --ckpt (a checkpoint) or --variant (random weights for structure/speed)")
    try:
        get_config(args.variant)
    except KeyError as exc:
        raise UserError(str(exc.args[0])) from None
    print(f"note: no --ckpt, exporting LRFormer-{args.variant} with RANDOM weights", file=sys.stderr)
    return build_model(args.variant, args.num_classes or 150), None


def _precision_manifest(fp32_manifest: dict, onnx_path: Path, precision: str, details: dict) -> dict:
    from .. import manifest as mf

    m = json.loads(json.dumps(fp32_manifest))
    m["name"] = onnx_path.stem
    m["precision"] = precision
    m["artifacts"] = {"onnx": mf.artifact_record(onnx_path, onnx_path.parent),
                      "fp32_reference": fp32_manifest["artifacts"]["onnx"]}
    cache = details.get("conversion", {}).get("calibration", {}).get("cache_file")
    if cache and (onnx_path.parent / cache).is_file():
        m["artifacts"]["calibration_cache"] = mf.artifact_record(onnx_path.parent / cache, onnx_path.parent)
    m["precision_details"] = details
    m.pop("verification", None)
    m["created"] = mf.now_iso()
    return m


def _build_engine(onnx_path: Path, manifest_path: Path, args) -> str:
    """Build the engine for one graph and record it; returns a one-line status."""
    from .. import manifest as mf
    from ..engine_build import EngineUnavailable, build_engine

    try:
        record = build_engine(onnx_path, workspace_gib=args.workspace)
    except EngineUnavailable as exc:
        if args.engine:
            raise UserError(f"--engine was demanded but cannot be built: {exc}") from None
        return f"engine step skipped: {exc}"
    manifest = mf.load_manifest(manifest_path)
    manifest["artifacts"]["engine"] = record
    mf.write_manifest(manifest_path, manifest)
    return f"engine: {onnx_path.parent / record['file']}"


@cli_entry
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.int8 and not args.calib:
        raise UserError("--int8 needs --calib (a folder of images or a video file)")
    if args.calib and not Path(args.calib).exists():
        raise UserError(f"calibration data not found: {args.calib}")
    if args.batch <= 0:
        raise UserError(f"--batch must be at least 1, got {args.batch}")
    if args.calib_count <= 0:
        raise UserError(f"--calib-count must be at least 1, got {args.calib_count}")
    preset = load_preset(args.preset) if args.preset else {}

    from ..export_onnx import check_export_size, export_onnx

    if args.size:
        check_export_size(args.size, args.batch)  # fail before loading anything heavy
    model, ckpt_sha = _load_model(args)
    variant = model.cfg.name
    dataset = _resolve_dataset(args.dataset or preset.get("dataset"), model.num_classes)
    size = args.size or tuple(preset.get("size", {}).get(variant, ())) or None
    if size is None:
        side = 640 if variant in ("L", "XL") else (dataset.short_side if dataset else 512)
        size = (side, side)
    head = args.head or preset.get("head", "mask")

    t0 = time.perf_counter()
    result = export_onnx(model, args.output_dir, args.name, size=tuple(size), batch=args.batch, opset=args.opset,
                         head=head, dataset=dataset, variant=variant, checkpoint_sha256=ckpt_sha)
    ops = result.manifest["export"]
    print(f"onnx: {result.onnx_path} ({ops['nodes']} nodes, {result.export_seconds:.1f} s)")
    summary = {"fp32": {"onnx": str(result.onnx_path), "manifest": str(result.manifest_path),
                        "verification": result.manifest.get("verification")}}
    targets = [(result.onnx_path, result.manifest_path)]

    min_agreement = args.min_agreement
    if ckpt_sha is None and min_agreement is None and (args.fp16 or args.int8):
        # Random weights give near-tied scores everywhere, so agreement measures nothing about accuracy.
        print("note: random weights: reduced-precision agreement is reported, not enforced", file=sys.stderr)
        min_agreement = 0.0
    for precision in [p for p, on in (("fp16", args.fp16), ("int8", args.int8)) if on]:
        from .. import manifest as mf
        from ..precision.pipeline import make_precision_graph

        t1 = time.perf_counter()
        details = make_precision_graph(result.onnx_path, precision, calib=args.calib, calib_count=args.calib_count,
                                       calib_method=args.calib_method, mean=result.manifest["input"]["mean"],
                                       std=result.manifest["input"]["std"], min_agreement=min_agreement,
                                       quiet=getattr(args, "quiet", False))
        out_onnx = result.onnx_path.with_name(f"{result.onnx_path.stem}-{precision}.onnx")
        m = _precision_manifest(result.manifest, out_onnx, precision, details)
        mpath = mf.write_manifest(mf.manifest_path_for(out_onnx), m)
        acc = details.get("accuracy", {})
        print(f"{precision}: {out_onnx} ({time.perf_counter() - t1:.1f} s); vs fp32: mask agreement "
              f"{acc.get('mask_agreement', float('nan')):.4f}, logits relative error "
              f"{acc.get('logits_rel_error', float('nan')):.3g}")
        summary[precision] = {"onnx": str(out_onnx), "manifest": str(mpath), "accuracy": acc}
        targets.append((out_onnx, mpath))

    if not args.no_engine:
        # Strongly typed engines: one per graph the user asked for (the reduced ones, else FP32).
        for onnx_path, mpath in (targets[1:] or targets[:1]):
            line = _build_engine(onnx_path, mpath, args)
            print(line, file=sys.stderr if line.startswith("engine step skipped") else sys.stdout)
            summary.setdefault("engines", []).append(line)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
