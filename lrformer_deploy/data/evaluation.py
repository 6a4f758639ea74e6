"""Segmentation accuracy: a confusion matrix with mmseg's metrics, and readers for evaluation folders.

Metrics follow mmsegmentation's IoUMetric:
- pixels whose label is the ignore index (255) are skipped, as are labels outside 0..num_classes-1;
- IoU_c = |pred=c and gt=c| / (|pred=c| + |gt=c| - |pred=c and gt=c|), NaN when the class appears in
  neither prediction nor ground truth, and mIoU is the mean over the non-NaN classes;
- aAcc = correctly labelled pixels / labelled pixels; Acc_c = |pred=c and gt=c| / |gt=c|, mAcc its nanmean.
A predicted id outside 0..num_classes-1 is simply wrong (it counts against the true class, for no class).

Folder layouts (`detect_layout` picks one, or pass it explicitly):
- synthetic:  ROOT/images/<split>/NAME.png + ROOT/annotations/<split>/NAME.png (what
              lrformer_deploy.data.synthetic.write_dataset writes; any folder of image/label pairs in this shape
              works, which is mmseg's generic layout); default split "val".
- ade20k:     ADEChallengeData2016/images/validation/*.jpg + annotations/validation/*.png; label 0 is
              "other" and is ignored, the remaining ids are shifted down by one (reduce_zero_label).
- cityscapes: leftImg8bit/val/<city>/*_leftImg8bit.png + gtFine/val/<city>/*_gtFine_labelTrainIds.png
              (*_gtFine_labelIds.png is converted to train ids when the train-id files are missing).
- coco-stuff: images/val2017/*.jpg + annotations/val2017/*_labelTrainIds.png (COCO-Stuff-164k after
              mmseg's converter, ids 0..170, 255 ignore).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import cv2
import numpy as np

from lrformer_deploy.errors import UserError

IGNORE_INDEX = 255
LAYOUTS = ("synthetic", "ade20k", "cityscapes", "coco-stuff")
RESIZE_MODES = ("stretch", "keep-ratio", "official")


# ------------------------------------------------------------------------------------------- metrics
def reduce_zero_label(label: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """ADE20K-style labels: 0 (unlabelled) becomes ignore, every other id moves down by one."""
    label = np.asarray(label)
    out = label.astype(np.int64) - 1
    out[(label == 0) | (label == ignore_index)] = ignore_index
    return out.astype(label.dtype if label.dtype != np.bool_ else np.uint8)


@dataclass
class Metrics:
    class_names: tuple[str, ...]
    iou: np.ndarray  # per class, NaN where the class is in neither prediction nor ground truth
    acc: np.ndarray  # per class, NaN where the class is absent from the ground truth
    miou: float
    macc: float
    aacc: float
    labelled_pixels: int

    def per_class(self) -> dict[str, dict[str, float | None]]:
        def clean(v: float) -> float | None:
            return None if math.isnan(v) else float(v)
        return {name: {"iou": clean(i), "acc": clean(a)}
                for name, i, a in zip(self.class_names, self.iou, self.acc)}

    def to_dict(self) -> dict:
        return {"mIoU": _none_if_nan(self.miou), "mAcc": _none_if_nan(self.macc), "aAcc": _none_if_nan(self.aacc),
                "labelled_pixels": self.labelled_pixels, "per_class": self.per_class()}


def _none_if_nan(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


class ConfusionMatrix:
    """Accumulates (ground truth, prediction) pixel counts. Rows: ground-truth class; columns: predicted
    class, plus one last column for predictions outside 0..num_classes-1."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX,
                 class_names: Sequence[str] | None = None):
        if num_classes < 1:
            raise ValueError("num_classes must be positive")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.class_names = tuple(class_names) if class_names else tuple(str(i) for i in range(num_classes))
        if len(self.class_names) != self.num_classes:
            raise ValueError("class_names must have num_classes entries")
        self.matrix = np.zeros((self.num_classes, self.num_classes + 1), np.int64)
        # Labelled pixels whose id is not a class of the model: skipped like mmseg, but counted so a
        # dataset/model mismatch is visible.
        self.unknown_label_pixels = 0

    def update(self, pred: np.ndarray, label: np.ndarray) -> None:
        pred = np.asarray(pred)
        label = np.asarray(label)
        if pred.shape != label.shape:
            raise ValueError(f"prediction {pred.shape} and label {label.shape} differ in shape")
        label = label.astype(np.int64).ravel()
        pred = pred.astype(np.int64).ravel()
        keep = label != self.ignore_index
        in_range = (label >= 0) & (label < self.num_classes)
        self.unknown_label_pixels += int((keep & ~in_range).sum())
        keep &= in_range
        label, pred = label[keep], pred[keep]
        pred = np.where((pred >= 0) & (pred < self.num_classes), pred, self.num_classes)
        c1 = self.num_classes + 1
        self.matrix += np.bincount(label * c1 + pred, minlength=self.num_classes * c1).reshape(self.num_classes, c1)

    def merge(self, other: "ConfusionMatrix") -> None:
        self.matrix += other.matrix
        self.unknown_label_pixels += other.unknown_label_pixels

    def metrics(self) -> Metrics:
        m = self.matrix.astype(np.float64)
        intersect = np.diag(m[:, : self.num_classes])
        area_label = m.sum(axis=1)
        area_pred = m[:, : self.num_classes].sum(axis=0)
        union = area_pred + area_label - intersect
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, intersect / union, np.nan)
            acc = np.where(area_label > 0, intersect / area_label, np.nan)
        labelled = area_label.sum()
        return Metrics(
            class_names=self.class_names, iou=iou, acc=acc,
            miou=float(np.nanmean(iou)) if not np.isnan(iou).all() else math.nan,
            macc=float(np.nanmean(acc)) if not np.isnan(acc).all() else math.nan,
            aacc=float(intersect.sum() / labelled) if labelled > 0 else math.nan,
            labelled_pixels=int(labelled),
        )


# ------------------------------------------------------------------------------------------ datasets
@dataclass(frozen=True)
class Sample:
    name: str
    image: Path
    label: Path


@dataclass
class EvalFolder:
    """Image/label pairs of one split, and how to read the labels."""

    layout: str
    root: Path
    split: str
    samples: list[Sample]
    reduce_zero_label: bool = False
    dataset: str | None = None  # name of the lrformer_deploy.data.datasets preset the labels belong to
    label_id_map: np.ndarray | None = field(default=None, repr=False)  # 256-entry lookup applied to raw labels
    missing_labels: list[Path] = field(default_factory=list)

    def read_label(self, sample: Sample) -> np.ndarray:
        return read_label(sample.label, self.reduce_zero_label, self.label_id_map)


def read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"cannot read image {path}")
    return image


def read_label(path: Path, reduce_zero: bool = False, id_map: np.ndarray | None = None) -> np.ndarray:
    """Label png -> HxW uint8 class ids (255 = ignore)."""
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise UserError(f"cannot read label {path}")
    if label.ndim != 2:
        raise UserError(f"label {path} has {label.shape[2]} channels; expected a single-channel png of class ids")
    if label.dtype != np.uint8:
        if label.max() > 255:
            raise UserError(f"label {path} holds ids above 255; expected 8-bit class ids")
        label = label.astype(np.uint8)
    if id_map is not None:
        label = id_map[label]
    if reduce_zero:
        label = reduce_zero_label(label)
    return label


# Cityscapes label ids -> train ids (the 19 evaluated classes), as cityscapesScripts' labels.py defines them.
_CITYSCAPES_ID_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                           25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def cityscapes_id_map() -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    for label_id, train_id in _CITYSCAPES_ID_TO_TRAIN.items():
        lut[label_id] = train_id
    return lut


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_DEFAULT_SPLIT = {"synthetic": "val", "ade20k": "validation", "cityscapes": "val", "coco-stuff": "val2017"}


def _ade_root(root: Path) -> Path | None:
    for candidate in (root, root / "ADEChallengeData2016", root / "ade" / "ADEChallengeData2016"):
        if (candidate / "images" / "validation").is_dir() or (candidate / "images" / "training").is_dir():
            return candidate
    return None


def _cityscapes_root(root: Path) -> Path | None:
    for candidate in (root, root / "cityscapes"):
        if (candidate / "leftImg8bit").is_dir() and (candidate / "gtFine").is_dir():
            return candidate
    return None


def _coco_root(root: Path) -> Path | None:
    for candidate in (root, root / "coco_stuff164k", root / "coco-stuff"):
        if (candidate / "images" / "val2017").is_dir() or (candidate / "images" / "train2017").is_dir():
            return candidate
    return None


def detect_layout(root: str | Path) -> str:
    """Which of LAYOUTS the folder `root` holds; UserError when none fits."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset folder {root} does not exist")
    from lrformer_deploy.data.synthetic import META_FILE

    if (root / META_FILE).is_file():
        return "synthetic"
    if _cityscapes_root(root):
        return "cityscapes"
    if _coco_root(root):
        return "coco-stuff"
    if _ade_root(root):
        return "ade20k"
    if (root / "images").is_dir() and (root / "annotations").is_dir():
        return "synthetic"  # the generic images/<split> + annotations/<split> layout
    raise UserError(
        f"cannot tell the dataset layout of {root}: expected images/ + annotations/ (synthetic, ADE20K, "
        "COCO-Stuff) or leftImg8bit/ + gtFine/ (Cityscapes); pass --layout to say which")


def _pairs(image_dir: Path, label_dir: Path, image_glob: str, label_name: Callable[[Path], str]
           ) -> tuple[list[Sample], list[Path]]:
    samples, missing = [], []
    for image in sorted(image_dir.glob(image_glob)):
        if image.suffix.lower() not in _IMAGE_SUFFIXES or not image.is_file():
            continue
        label = label_dir / image.relative_to(image_dir).parent / label_name(image)
        if label.is_file():
            samples.append(Sample(image.stem, image, label))
        else:
            missing.append(image)
    return samples, missing


def open_eval_folder(root: str | Path, layout: str = "auto", split: str | None = None) -> EvalFolder:
    """Find the image/label pairs of one split under `root`. Raises UserError when there are none."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset folder {root} does not exist")
    if layout == "auto":
        layout = detect_layout(root)
    if layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r}; choose auto or one of {', '.join(LAYOUTS)}")
    split = split or _DEFAULT_SPLIT[layout]
    id_map = None
    reduce_zero = False
    dataset: str | None = layout
    if layout == "synthetic":
        base = root
        image_dir, label_dir = base / "images" / split, base / "annotations" / split
        from lrformer_deploy.data.synthetic import META_FILE

        meta_path = base / META_FILE
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            dataset = meta.get("dataset", "synthetic")
            reduce_zero = bool(meta.get("reduce_zero_label", False))
        else:
            dataset = None  # a generic folder: the classes are whatever the model says
        samples, missing = _pairs(image_dir, label_dir, "*", lambda p: p.stem + ".png")
    elif layout == "ade20k":
        base = _ade_root(root) or root
        image_dir, label_dir = base / "images" / split, base / "annotations" / split
        reduce_zero = True
        samples, missing = _pairs(image_dir, label_dir, "*", lambda p: p.stem + ".png")
    elif layout == "cityscapes":
        base = _cityscapes_root(root) or root
        image_dir, label_dir = base / "leftImg8bit" / split, base / "gtFine" / split
        suffix = "_leftImg8bit"

        def stem(p: Path) -> str:
            return p.stem[: -len(suffix)] if p.stem.endswith(suffix) else p.stem

        samples, missing = _pairs(image_dir, label_dir, f"*/*{suffix}.png",
                                  lambda p: stem(p) + "_gtFine_labelTrainIds.png")
        if not samples and missing:
            # Raw Cityscapes ships label ids; the train ids are normally made by cityscapesScripts.
            samples, missing = _pairs(image_dir, label_dir, f"*/*{suffix}.png",
                                      lambda p: stem(p) + "_gtFine_labelIds.png")
            id_map = cityscapes_id_map() if samples else None
        samples = [Sample(stem(s.image), s.image, s.label) for s in samples]
    else:  # coco-stuff
        base = _coco_root(root) or root
        image_dir, label_dir = base / "images" / split, base / "annotations" / split
        samples, missing = _pairs(image_dir, label_dir, "*", lambda p: p.stem + "_labelTrainIds.png")
        if not samples and missing and any(label_dir.glob("*.png")):
            raise UserError(
                f"{label_dir} has no *_labelTrainIds.png files: convert the COCO-Stuff-164k labels to the 171 "
                "train ids first (mmsegmentation's tools/dataset_converters/coco_stuff164k.py)")

    if not image_dir.is_dir():
        raise UserError(f"{layout} layout: image folder {image_dir} does not exist (split {split!r})")
    if not samples:
        if missing:
            raise UserError(f"no label files found for the {len(missing)} images in {image_dir} "
                            f"(looked in {label_dir})")
        raise UserError(f"no images found in {image_dir}")
    return EvalFolder(layout, root, split, samples, reduce_zero, dataset, id_map, missing)


# ----------------------------------------------------------------------------------------- resizing
def official_test_size(height: int, width: int, short_side: int = 512, max_long_side: int = 2048,
                       divisor: int = 32) -> tuple[int, int]:
    """mmseg's single-scale test size: keep the aspect ratio with the short side at `short_side` unless
    the long side would exceed `max_long_side`, then round both sides up to multiples of `divisor`."""
    scale = min(short_side / min(height, width), max_long_side / max(height, width))
    h = int(height * scale + 0.5)
    w = int(width * scale + 0.5)
    return (math.ceil(h / divisor) * divisor, math.ceil(w / divisor) * divisor)


# --------------------------------------------------------------------------------------- evaluation
Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass
class ModelReport:
    name: str
    metrics: Metrics
    seconds: float  # time spent inside the predictor
    images: int
    resized_predictions: int = 0  # predictions whose size differed from the label's (nearest-resized)
    unknown_label_pixels: int = 0

    def to_dict(self) -> dict:
        d = {"model": self.name, "images": self.images, "seconds": round(self.seconds, 3),
             "unknown_label_pixels": self.unknown_label_pixels}
        d.update(self.metrics.to_dict())
        return d


def evaluate(predictors: Mapping[str, Predictor], folder: EvalFolder, num_classes: int,
             class_names: Sequence[str] | None = None, limit: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> list[ModelReport]:
    """Run every predictor on the same images (each image is read once) and score it against the labels.
    A predictor takes a BGR uint8 image and returns class ids at the image size."""
    if limit is not None and limit < 1:
        raise UserError("--limit must be at least 1")
    samples = folder.samples[:limit] if limit else folder.samples
    matrices = {name: ConfusionMatrix(num_classes, IGNORE_INDEX, class_names) for name in predictors}
    seconds = dict.fromkeys(predictors, 0.0)
    resized = dict.fromkeys(predictors, 0)
    for index, sample in enumerate(samples):
        image = read_image(sample.image)
        label = folder.read_label(sample)
        if label.shape != image.shape[:2]:
            # Scoring would have to resize one of them, which silently changes the result; mmseg would fail.
            raise UserError(f"label {sample.label} is {label.shape[0]}x{label.shape[1]} but its image {sample.image} "
                            f"is {image.shape[0]}x{image.shape[1]}: labels must have the size of their images")
        for name, predict in predictors.items():
            start = time.perf_counter()
            pred = np.asarray(predict(image))
            seconds[name] += time.perf_counter() - start
            if pred.shape != label.shape:
                # A predictor that returns another size than the image (a custom callable): score at the
                # label's size, and count it.
                pred = cv2.resize(pred.astype(np.int32), (label.shape[1], label.shape[0]),
                                  interpolation=cv2.INTER_NEAREST)
                resized[name] += 1
            matrices[name].update(pred, label)
        if progress:
            progress(index + 1, len(samples))
    return [ModelReport(name, matrices[name].metrics(), seconds[name], len(samples), resized[name],
                        matrices[name].unknown_label_pixels) for name in predictors]

