"""lrformer-eval: mIoU / aAcc of one or more exported models on a labelled image folder.

    lrformer-eval --model m.onnx --data ADEChallengeData2016
    lrformer-eval --compare m.onnx m-fp16.onnx m-int8.onnx --data cityscapes --resize official --limit 100
    lrformer-eval                      # the demo model on freshly generated synthetic scenes

Several models are run on the same images (each image is read once) and reported in one table, with
the mIoU difference to the first model: the way to check what FP16 or INT8 cost.

--resize official follows mmseg's single-scale test (short side 512, 640 for L/XL; long side capped;
both sides rounded up to multiples of 32). The graphs are static, so this is exact only for images
whose official size equals the graph's input size (e.g. Cityscapes 1024x2048 with a 512x1024 graph);
other images are stretched to the graph's size and the run warns how many were.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lrformer_deploy.contract import BACKENDS
from lrformer_deploy.cli.common import OneLineParser
from lrformer_deploy.errors import UserError, cli_entry, has_package, missing_package
from lrformer_deploy.runtime.backends import openvino_missing, tensorrt_missing
from lrformer_deploy.data.evaluation import (
    LAYOUTS, RESIZE_MODES, ModelReport, evaluate, official_test_size, open_eval_folder,
)

DEFAULT_SYNTHETIC_SCENES = 64


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="lrformer-eval",
        description="Evaluate segmentation models (mIoU, aAcc, mAcc) on a labelled dataset folder.")
    p.add_argument("--model", action="append", default=[], metavar="MODEL",
                   help="model file (.onnx, .json manifest, .engine, .pth); repeat to compare several. "
                        "Default: the demo model")
    p.add_argument("--compare", nargs="+", default=[], metavar="MODEL",
                   help="several models on the same images, one table with the mIoU change vs the first")
    p.add_argument("--data", type=Path,
                   help="dataset folder (synthetic, ADE20K, Cityscapes or COCO-Stuff layout). Default: "
                        f"{DEFAULT_SYNTHETIC_SCENES} synthetic validation scenes, generated into a temporary folder "
                        "at the (first) model's input size, the size the demo model was trained and exported for")
    p.add_argument("--layout", default="auto", choices=("auto",) + LAYOUTS, help="folder layout (default: detect)")
    p.add_argument("--split", help="split folder name (default: val, validation for ADE20K, val2017 for COCO-Stuff)")
    p.add_argument("--limit", type=int, help="evaluate only the first N images (sorted by name)")
    p.add_argument("--resize", default="stretch", choices=RESIZE_MODES,
                   help="how images reach the model's fixed input size (default: stretch)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="auto, onnxruntime, openvino, tensorrt or torch")
    p.add_argument("--device", help="backend device, e.g. cuda:0 (default: the backend's choice)")
    p.add_argument("--num-classes", type=int,
                   help="number of classes, for a folder and a model that do not say it themselves")
    p.add_argument("--per-class", action="store_true", help="print per-class IoU")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    return p


def _open_segmenter(model: str | None, backend: str, device: str | None, resize: str):
    """The runtime's Segmenter (a separate function so tests can substitute a stand-in)."""
    from lrformer_deploy.runtime import Segmenter

    kwargs: dict[str, Any] = {"backend": backend, "resize": resize}
    if device:
        kwargs["device"] = device
    return Segmenter(model, **kwargs)


def _known_classes(seg) -> int | None:
    """The model's class count when it really knows it (manifest, or a logits output), else None."""
    spec = getattr(seg, "spec", None)
    if spec is not None and not getattr(spec, "manifest", None) and getattr(spec, "output_kind", "") == "mask":
        return None  # a bare mask graph: the runtime only guessed 256 ids
    names = getattr(seg, "class_names", None)
    return len(names) if names else None


def _official_scale(seg, short_side: int, long_side: int) -> tuple[int, int]:
    # The large variants were tested at 640 / 2560 (REFERENCE: test resize of the official configs).
    variant = str(((getattr(seg, "manifest", None) or {}).get("model") or {}).get("variant", "")).upper()
    if variant in ("L", "XL"):
        return 640, 2560
    return short_side, long_side


def _model_label(path: str | None, seg, used: set[str]) -> str:
    name = Path(path).name if path else f"{Path(getattr(seg, 'model_path', None) or 'demo').name} (demo)"
    if name in used and path:
        name = str(path)
    used.add(name)
    return name


def _progress_printer(enabled: bool) -> Callable[[int, int], None] | None:
    if not enabled:
        return None

    def show(done: int, total: int) -> None:
        end = "\n" if done == total else ""
        print(f"\r{done}/{total} images", end=end, file=sys.stderr, flush=True)
    return show


def _pct(v: float | None) -> str:
    return "-" if v is None or v != v else f"{100 * v:.2f}"


def _print_tables(reports: list[ModelReport], extras: list[dict], header: str, per_class: bool) -> None:
    print(header)
    width = max(len("model"), *(len(r.name) for r in reports))
    bw = max(len("backend"), *(len(e["backend"]) for e in extras))
    print(f"{'model':<{width}}  {'backend':<{bw}} {'mIoU':>7} {'aAcc':>7} {'mAcc':>7} {'dmIoU':>7} {'ms/img':>8}")
    base = reports[0].metrics.miou
    for i, (r, extra) in enumerate(zip(reports, extras)):
        delta = "-" if i == 0 else f"{100 * (r.metrics.miou - base):+.2f}"
        ms = 1000 * r.seconds / max(r.images, 1)
        print(f"{r.name:<{width}}  {extra['backend']:<{bw}} {_pct(r.metrics.miou):>7} {_pct(r.metrics.aacc):>7} "
              f"{_pct(r.metrics.macc):>7} {delta:>7} {ms:>8.1f}")
    print("(mIoU, aAcc, mAcc in %; dmIoU in points vs the first model)")
    if per_class:
        names = reports[0].metrics.class_names
        cw = max(len("class"), *(len(n) for n in names))
        print()
        print(f"{'class':<{cw}}  " + " ".join(f"{'IoU#' + str(i + 1):>7}" for i in range(len(reports))))
        for c, name in enumerate(names):
            row = " ".join(f"{_pct(float(r.metrics.iou[c])):>7}" for r in reports)
            print(f"{name:<{cw}}  {row}")
        if len(reports) > 1:
            print("(IoU#k: model k in the table above; '-' = class in neither prediction nor labels)")


def _check_options(args, models: list[str | None]):
    """One validation pass before any model is loaded: numbers, the dataset folder, model files, packages."""
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    if args.num_classes is not None and args.num_classes < 1:
        raise UserError(f"--num-classes must be positive, got {args.num_classes}")
    folder = open_eval_folder(args.data, args.layout, args.split) if args.data is not None else None
    from lrformer_deploy.runtime.spec import resolve_model

    kinds = set()
    for m in models:
        if m is None:
            kinds.add("onnx")  # the demo model
            continue
        if not Path(m).exists():
            raise UserError(f"model file {m} does not exist")
        kinds.add(resolve_model(m).kind)
    if "checkpoint" in kinds and not has_package("torch"):
        raise UserError(missing_package("torch", "a .pth model"))
    if args.backend == "tensorrt" and tensorrt_missing("run") is not None:
        raise UserError(f"--backend tensorrt cannot run here: {tensorrt_missing('run')}")
    if args.backend == "openvino" and openvino_missing() is not None:
        raise UserError(f"--backend openvino cannot run here: {openvino_missing()}")
    if args.backend in ("auto", "onnxruntime") and importlib.util.find_spec("onnxruntime") is None \
            and kinds - {"engine"}:
        raise UserError(missing_package("onnxruntime", "running the model with ONNX Runtime"))
    return folder


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    models: list[str | None] = [str(m) for m in args.model] + [str(m) for m in args.compare]
    if not models:
        models = [None]  # the runtime resolves the demo model
    folder = _check_options(args, models)

    with tempfile.TemporaryDirectory(prefix="lrformer-eval-") as tmp:
        # The graphs are run at their own size; "official" only changes which images count as exact.
        runtime_resize = "stretch" if args.resize == "official" else args.resize
        segs = []
        try:
            for m in models:
                segs.append(_open_segmenter(m, args.backend, args.device, runtime_resize))
            return _evaluate(args, models, segs, folder, Path(tmp))
        finally:
            for seg in segs:
                close = getattr(seg, "close", None)
                if close:
                    close()


def _evaluate(args, models, segs, folder, tmp: Path) -> int:
    generated = None
    if folder is None:
        from lrformer_deploy.data.synthetic import write_dataset

        # Scenes at the model's own input size: the demo model was trained and exported at 256x448, and
        # stretching scenes of another shape into its graph would measure the stretch, not the model.
        size = tuple(int(v) for v in getattr(segs[0], "input_size", (256, 448)))
        count = args.limit or DEFAULT_SYNTHETIC_SCENES
        data = write_dataset(tmp / "synthetic", 0, count, size=size)
        generated = list(size)
        if not args.json:
            print(f"no --data: evaluating on {count} generated synthetic validation scenes of {size[0]}x{size[1]} "
                  "(the model's input size)", file=sys.stderr)
        folder = open_eval_folder(data, args.layout, args.split)
    if folder.missing_labels:
        print(f"warning: {len(folder.missing_labels)} images have no label file and are skipped "
              f"(first: {folder.missing_labels[0]})", file=sys.stderr)

    preset = None
    if folder.dataset:
        from lrformer_deploy.data.datasets import get_dataset

        preset = get_dataset(folder.dataset)

    num_classes, class_names = _resolve_classes(segs, models, preset, args.num_classes, folder.layout)

    predictors: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    extras: list[dict] = []
    mismatched: dict[str, list[tuple[int, int]]] = {}
    used: set[str] = set()
    short, long_ = (preset.short_side, preset.max_long_side) if preset else (512, 2048)
    for path, seg in zip(models, segs):
        label = _model_label(path, seg, used)
        extras.append({"path": str(getattr(seg, "model_path", path)),
                       "backend": str(getattr(seg, "backend_name", args.backend)),
                       "input_size": list(getattr(seg, "input_size", ()))})
        if args.resize == "official":
            predictors[label] = _official_predictor(seg, *_official_scale(seg, short, long_),
                                                    mismatched.setdefault(label, []))
        else:
            predictors[label] = seg

    progress = _progress_printer(not args.json and sys.stderr.isatty())
    reports = evaluate(predictors, folder, num_classes, class_names, args.limit, progress)

    for r, extra in zip(reports, extras):
        if r.unknown_label_pixels:
            print(f"warning: {r.unknown_label_pixels} labelled pixels have ids >= {num_classes} and were "
                  "skipped: do the model and the dataset have the same classes?", file=sys.stderr)
        sizes = mismatched.get(r.name, [])
        extra["official_size_mismatch"] = len(sizes)
        if sizes:
            h, w = extra["input_size"]
            print(f"warning: --resize official: {len(sizes)} of {r.images} images have an official test size "
                  f"other than {r.name}'s input {h}x{w} (e.g. {sizes[0][0]}x{sizes[0][1]}); they were stretched "
                  "to the model's size. Export a graph at the official size for exact official numbers.",
                  file=sys.stderr)

    data_info = {"root": str(folder.root) if args.data else None, "layout": folder.layout, "split": folder.split,
                 "images": reports[0].images, "resize": args.resize, "num_classes": num_classes,
                 "reduce_zero_label": folder.reduce_zero_label, "generated_scene_size": generated}
    if args.json:
        out = []
        base = reports[0].metrics.miou
        for r, extra in zip(reports, extras):
            d = r.to_dict()
            d.update(extra)
            d["delta_mIoU"] = None if r is reports[0] else float(r.metrics.miou - base)
            out.append(d)
        print(json.dumps({"data": data_info, "models": out}, indent=2))
    else:
        where = args.data if args.data else "generated synthetic scenes"
        header = (f"{folder.layout} / {folder.split}: {reports[0].images} images from {where}; "
                  f"resize {args.resize}")
        _print_tables(reports, extras, header, args.per_class or (len(reports) == 1 and num_classes <= 20))
    return 0


def _resolve_classes(segs, models, preset, requested: int | None, layout: str) -> tuple[int, tuple[str, ...]]:
    """Number of classes and their names, checking that the models and the labels agree."""
    known = [(m, _known_classes(s), s) for m, s in zip(models, segs)]
    num_classes = requested or (preset.num_classes if preset else None)
    for model, n, _ in known:
        if n is None:
            continue
        if num_classes is None:
            num_classes = n
        elif n != num_classes:
            what = f"the {layout} labels have {num_classes}" if not requested else f"--num-classes is {num_classes}"
            raise UserError(f"model {model or 'demo'} predicts {n} classes but {what}")
    if num_classes is None:
        raise UserError("cannot tell the number of classes: the folder has no dataset description and the model "
                        "no manifest; pass --num-classes")
    if preset and preset.num_classes == num_classes:
        return num_classes, preset.class_names
    for _, n, seg in known:
        if n == num_classes and getattr(seg, "class_names", None):
            return num_classes, tuple(seg.class_names)
    return num_classes, tuple(f"class {i}" for i in range(num_classes))


def _official_predictor(seg, short_side: int, long_side: int, mismatched: list[tuple[int, int]]):
    """Stretch to the graph's size, recording every image whose official test size is different."""
    input_size = tuple(seg.input_size)

    def predict(image: np.ndarray) -> np.ndarray:
        size = official_test_size(image.shape[0], image.shape[1], short_side, long_side)
        if size != input_size:
            mismatched.append(size)
        return seg(image)
    return predict


if __name__ == "__main__":
    sys.exit(main())
