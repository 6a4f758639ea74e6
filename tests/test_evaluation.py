"""Metrics with hand-computed answers, and the dataset folder readers on tiny folders made here."""
import math

import cv2
import numpy as np
import pytest

from lrformer_deploy.data import synthetic
from lrformer_deploy.errors import UserError
from lrformer_deploy.data.evaluation import (
    ConfusionMatrix, detect_layout, evaluate, official_test_size, open_eval_folder, reduce_zero_label,
)


def _halves():
    label = np.zeros((4, 4), np.uint8)
    label[:, 2:] = 1  # columns 0-1: class 0, columns 2-3: class 1
    return label


def test_perfect_prediction_scores_one():
    cm = ConfusionMatrix(2)
    cm.update(_halves(), _halves())
    m = cm.metrics()
    assert m.miou == 1.0 and m.aacc == 1.0 and m.macc == 1.0
    assert m.labelled_pixels == 16


def test_shifted_prediction_matches_hand_computation():
    label = _halves()
    pred = np.ones((4, 4), np.int32)
    pred[:, 0] = 0  # the class boundary moved one column left
    cm = ConfusionMatrix(2, class_names=["a", "b"])
    cm.update(pred, label)
    m = cm.metrics()
    # class 0: gt 8 px, pred 4 px, both 4 px -> IoU 4 / (4 + 8 - 4) = 0.5; Acc 4/8 = 0.5
    # class 1: gt 8 px, pred 12 px, both 8 px -> IoU 8 / (12 + 8 - 8) = 2/3; Acc 8/8 = 1
    # mIoU = (0.5 + 2/3) / 2 = 7/12; aAcc = (4 + 8) / 16 = 0.75; mAcc = 0.75
    assert m.iou == pytest.approx([0.5, 2 / 3])
    assert m.miou == pytest.approx(7 / 12)
    assert m.aacc == pytest.approx(0.75)
    assert m.macc == pytest.approx(0.75)
    assert m.per_class()["b"]["iou"] == pytest.approx(2 / 3)


def test_ignore_pixels_do_not_count():
    label = _halves()
    label[:, 1] = 255  # exactly the column the shifted prediction gets wrong
    pred = np.ones((4, 4), np.int32)
    pred[:, 0] = 0
    cm = ConfusionMatrix(2)
    cm.update(pred, label)
    m = cm.metrics()
    assert m.miou == 1.0 and m.aacc == 1.0
    assert m.labelled_pixels == 12


def test_absent_class_is_nan_and_excluded_but_false_positive_counts():
    label = _halves()
    cm = ConfusionMatrix(3)
    cm.update(label, label)
    m = cm.metrics()
    assert math.isnan(m.iou[2]) and m.miou == 1.0  # class 2 in neither: NaN, not in the mean
    pred = label.astype(np.int32).copy()
    pred[0, 0] = 2  # one false positive of class 2 makes its IoU 0 and pulls the mean down
    cm2 = ConfusionMatrix(3)
    cm2.update(pred, label)
    m2 = cm2.metrics()
    # class 0: 7 / (7 + 8 - 7) = 7/8; class 1: 1; class 2: 0 / 1 = 0 -> mIoU (7/8 + 1 + 0) / 3
    assert m2.iou[2] == 0.0
    assert m2.miou == pytest.approx((7 / 8 + 1 + 0) / 3)


def test_out_of_range_prediction_and_label():
    label = _halves()
    label[0, 0] = 9  # not a class of a 2-class model: skipped like mmseg, but counted
    pred = label.astype(np.int32).copy()
    pred[3, 3] = 77  # an impossible prediction is just wrong for the true class (1)
    cm = ConfusionMatrix(2)
    cm.update(pred, label)
    m = cm.metrics()
    assert cm.unknown_label_pixels == 1
    assert m.labelled_pixels == 15
    # class 0: 7/7 = 1; class 1: gt 8, pred 7, both 7 -> 7 / 8
    assert m.iou == pytest.approx([1.0, 7 / 8])
    assert m.aacc == pytest.approx(14 / 15)


def test_accumulates_over_images():
    cm = ConfusionMatrix(2)
    cm.update(_halves(), _halves())
    cm.update(np.zeros((4, 4), np.int32), _halves())
    # class 0: gt 16, pred 24, both 16 -> 2/3; class 1: gt 16, pred 8, both 8 -> 1/2
    assert cm.metrics().iou == pytest.approx([2 / 3, 1 / 2])


def test_reduce_zero_label_mapping():
    raw = np.array([[0, 1, 2], [150, 255, 3]], np.uint8)
    assert reduce_zero_label(raw).tolist() == [[255, 0, 1], [149, 255, 2]]
    assert reduce_zero_label(raw).dtype == np.uint8


def test_official_test_size():
    assert official_test_size(512, 683) == (512, 704)  # ADE-like: short side kept, 683 -> 704
    assert official_test_size(1024, 2048) == (512, 1024)  # Cityscapes
    assert official_test_size(100, 2000) == (128, 2048)  # long side capped at 2048 first
    assert official_test_size(300, 400) == (512, 704)  # 300x400 * 512/300 = 512 x 682.7 -> 683 -> 704


# ------------------------------------------------------------------------------------ folder layouts
def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def _jpg(path, h=8, w=12):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((h, w, 3), 100, np.uint8))


def test_synthetic_layout(tmp_path):
    root = synthetic.write_dataset(tmp_path / "synth", 1, 3, size=(48, 64), seed=1)
    assert detect_layout(root) == "synthetic"
    folder = open_eval_folder(root)
    assert folder.split == "val" and len(folder.samples) == 3 and not folder.reduce_zero_label
    assert folder.dataset == "synthetic"
    _, expected = synthetic.generate_scene([1, 2, 0], (48, 64))
    assert np.array_equal(folder.read_label(folder.samples[0]), expected)
    assert len(open_eval_folder(root, split="train").samples) == 1


def test_ade20k_layout_reduces_zero_label(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    _jpg(base / "images" / "validation" / "ADE_val_00000001.jpg")
    _png(base / "annotations" / "validation" / "ADE_val_00000001.png", np.array([[0, 1], [2, 150]], np.uint8))
    _jpg(base / "images" / "validation" / "ADE_val_00000002.jpg")  # no label: reported as missing
    assert detect_layout(tmp_path) == "ade20k"
    folder = open_eval_folder(tmp_path)
    assert folder.layout == "ade20k" and folder.reduce_zero_label
    assert [s.name for s in folder.samples] == ["ADE_val_00000001"] and len(folder.missing_labels) == 1
    assert folder.read_label(folder.samples[0]).tolist() == [[255, 0], [1, 149]]


def test_cityscapes_layout_train_ids_and_label_ids_fallback(tmp_path):
    for city in ("frankfurt", "lindau"):
        _png(tmp_path / "leftImg8bit" / "val" / city / f"{city}_000000_000019_leftImg8bit.png",
             np.zeros((8, 16, 3), np.uint8))
        _png(tmp_path / "gtFine" / "val" / city / f"{city}_000000_000019_gtFine_labelTrainIds.png",
             np.full((8, 16), 13, np.uint8))
    assert detect_layout(tmp_path) == "cityscapes"
    folder = open_eval_folder(tmp_path)
    assert [s.name for s in folder.samples] == ["frankfurt_000000_000019", "lindau_000000_000019"]
    assert (folder.read_label(folder.samples[0]) == 13).all()

    raw = tmp_path / "raw"
    _png(raw / "leftImg8bit" / "val" / "bonn" / "bonn_000001_leftImg8bit.png", np.zeros((2, 2, 3), np.uint8))
    _png(raw / "gtFine" / "val" / "bonn" / "bonn_000001_gtFine_labelIds.png", np.array([[7, 26], [0, 33]], np.uint8))
    folder = open_eval_folder(raw, layout="cityscapes")
    # label ids 7 road, 26 car, 0 unlabeled, 33 bicycle -> train ids 0, 13, 255, 18
    assert folder.read_label(folder.samples[0]).tolist() == [[0, 13], [255, 18]]


def test_coco_stuff_layout(tmp_path):
    base = tmp_path / "coco_stuff164k"
    _jpg(base / "images" / "val2017" / "000000000139.jpg")
    _png(base / "annotations" / "val2017" / "000000000139_labelTrainIds.png", np.full((8, 12), 170, np.uint8))
    assert detect_layout(tmp_path) == "coco-stuff"
    folder = open_eval_folder(tmp_path)
    assert folder.split == "val2017" and not folder.reduce_zero_label
    assert (folder.read_label(folder.samples[0]) == 170).all()


def test_coco_stuff_unconverted_labels_are_explained(tmp_path):
    _jpg(tmp_path / "images" / "val2017" / "000000000139.jpg")
    _png(tmp_path / "annotations" / "val2017" / "000000000139.png", np.zeros((8, 12), np.uint8))
    with pytest.raises(UserError, match="labelTrainIds"):
        open_eval_folder(tmp_path)


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "cannot tell the dataset layout"),
    (lambda p: ((p / "images" / "val").mkdir(parents=True), (p / "annotations" / "val").mkdir(parents=True)),
     "no images found"),
    (lambda p: _jpg(p / "images" / "val" / "a.jpg") or (p / "annotations" / "val").mkdir(parents=True),
     "no label files found"),
])
def test_bad_folders_are_user_errors(tmp_path, make, message):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(UserError, match=message):
        open_eval_folder(root)


def test_multichannel_label_is_rejected(tmp_path):
    _jpg(tmp_path / "images" / "val" / "a.jpg")
    _png(tmp_path / "annotations" / "val" / "a.png", np.zeros((8, 12, 3), np.uint8))
    folder = open_eval_folder(tmp_path)
    with pytest.raises(UserError, match="single-channel"):
        folder.read_label(folder.samples[0])


# ---------------------------------------------------------------------------------------- evaluate()
def test_evaluate_scores_several_predictors_on_the_same_images(tmp_path):
    root = synthetic.write_dataset(tmp_path / "s", 0, 4, size=(48, 64), seed=3)
    folder = open_eval_folder(root)
    truth = {}
    for sample in folder.samples:
        image = cv2.imread(str(sample.image))
        truth[image.tobytes()] = folder.read_label(sample)

    def perfect(image):
        return truth[image.tobytes()].astype(np.int32)

    def all_background(image):
        return np.zeros(image.shape[:2], np.int32)

    def half_size(image):  # wrong size: evaluate resizes it to the label
        return cv2.resize(perfect(image), (32, 24), interpolation=cv2.INTER_NEAREST)

    reports = evaluate({"perfect": perfect, "bg": all_background, "half": half_size}, folder,
                       synthetic.NUM_CLASSES, synthetic.CLASS_NAMES, limit=3)
    by_name = {r.name: r for r in reports}
    assert by_name["perfect"].images == 3 and by_name["perfect"].metrics.miou == 1.0
    # all-background: IoU of background = background share; every other present class scores 0
    labels = np.stack([folder.read_label(s) for s in folder.samples[:3]])
    bg_share = (labels == 0).mean()
    n_present = len(np.unique(labels))
    assert by_name["bg"].metrics.aacc == pytest.approx(bg_share)
    assert by_name["bg"].metrics.miou == pytest.approx(bg_share / n_present)
    assert by_name["half"].resized_predictions == 3
    assert 0.5 < by_name["half"].metrics.miou < 1.0
    with pytest.raises(UserError):
        evaluate({"p": perfect}, folder, synthetic.NUM_CLASSES, limit=0)
