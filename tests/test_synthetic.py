"""Procedural scenes: deterministic, learnable by shape/texture (not colour), and written in the evaluator's layout."""
import json

import cv2
import numpy as np
import pytest

from lrformer_deploy.data import synthetic as S
from lrformer_deploy.data.datasets import get_dataset


def test_same_seed_same_scene_and_different_seed_differs():
    a_img, a_lbl = S.generate_scene(7)
    b_img, b_lbl = S.generate_scene(7)
    c_img, c_lbl = S.generate_scene(8)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lbl, b_lbl)
    assert not np.array_equal(a_lbl, c_lbl)


@pytest.mark.parametrize("size", [(256, 256), (96, 160)])
def test_scene_types_and_label_values(size):
    image, label = S.generate_scene(3, size)
    assert image.shape == size + (3,) and image.dtype == np.uint8
    assert label.shape == size and label.dtype == np.uint8
    assert set(np.unique(label)) <= set(range(S.NUM_CLASSES))


def test_every_class_appears_and_objects_are_big_enough():
    pixel_counts = np.zeros(S.NUM_CLASSES)
    for seed in range(30):
        _, label = S.generate_scene(seed)
        pixel_counts += np.bincount(label.ravel(), minlength=S.NUM_CLASSES)
    share = pixel_counts / pixel_counts.sum()
    # Each object class covers a few percent of all pixels; background stays the majority.
    assert all(share[c] > 0.015 for c in range(1, S.NUM_CLASSES)), share
    assert 0.4 < share[S.BACKGROUND] < 0.9


def test_colour_is_not_the_cue():
    # The mean colour of a class differs a lot between scenes: a model cannot segment by colour.
    means = {c: [] for c in range(1, S.NUM_CLASSES)}
    for seed in range(40):
        image, label = S.generate_scene(seed)
        for c in means:
            if (label == c).sum() > 200:
                means[c].append(image[label == c].mean(axis=0))
    for c, values in means.items():
        assert len(values) >= 5, S.CLASS_NAMES[c]
        assert np.asarray(values).std(axis=0).max() > 25, S.CLASS_NAMES[c]


def test_textures_differ_by_class():
    # Inside one object, box (checkerboard) pixels vary strongly; ring pixels are a flat colour plus grain.
    spread = {S.BOX: [], S.RING: []}
    for seed in range(30):
        image, label = S.generate_scene(seed)
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
        for c in spread:
            inner = cv2.erode((label == c).astype(np.uint8), np.ones((5, 5), np.uint8))
            n, parts = cv2.connectedComponents(inner)
            for k in range(1, n):  # one object (instance) at a time: instances have different colours
                if (parts == k).sum() > 150:
                    spread[c].append(grey[parts == k].std())
    assert len(spread[S.BOX]) >= 5 and len(spread[S.RING]) >= 5
    assert np.median(spread[S.BOX]) > 2 * np.median(spread[S.RING])


def test_scene_too_small_is_rejected():
    with pytest.raises(ValueError):
        S.generate_scene(0, (16, 16))


def test_write_dataset_layout_and_contents(tmp_path):
    root = S.write_dataset(tmp_path / "synth", n_train=3, n_val=2, size=(64, 96), seed=5)
    for split, count in (("train", 3), ("val", 2)):
        images = sorted((root / "images" / split).glob("*.png"))
        labels = sorted((root / "annotations" / split).glob("*.png"))
        assert len(images) == count and [p.name for p in images] == [p.name for p in labels]
    image = cv2.imread(str(root / "images" / "val" / "scene_000001.png"), cv2.IMREAD_UNCHANGED)
    label = cv2.imread(str(root / "annotations" / "val" / "scene_000001.png"), cv2.IMREAD_UNCHANGED)
    expect_image, expect_label = S.generate_scene([5, 2, 1], (64, 96))
    assert np.array_equal(image, expect_image)  # png is lossless
    assert label.ndim == 2 and np.array_equal(label, expect_label)
    # train and val scenes are different draws
    train0 = cv2.imread(str(root / "annotations" / "train" / "scene_000000.png"), cv2.IMREAD_UNCHANGED)
    val0 = cv2.imread(str(root / "annotations" / "val" / "scene_000000.png"), cv2.IMREAD_UNCHANGED)
    assert not np.array_equal(train0, val0)
    meta = json.loads((root / S.META_FILE).read_text())
    assert meta["class_names"] == list(get_dataset("synthetic").class_names)
    assert meta["counts"] == {"train": 3, "val": 2} and meta["size"] == [64, 96]


def test_video_frames_move_smoothly():
    frames = list(S.scene_frames(12, (128, 224), seed=1))
    labels = [lbl for _, lbl in frames]
    present = set(np.unique(labels[0]))
    assert {S.DISC, S.BOX, S.TRIANGLE, S.RING, S.BAND} <= present  # the demo layout shows every class
    for a, b in zip(labels, labels[1:]):
        fg_a, fg_b = a > 0, b > 0
        iou = (fg_a & fg_b).sum() / max((fg_a | fg_b).sum(), 1)
        assert iou > 0.8  # consecutive frames overlap: motion is smooth
    assert not np.array_equal(labels[0], labels[-1])  # but things do move


def test_render_video_writes_readable_mp4(tmp_path):
    path = S.render_video(tmp_path / "clip.mp4", n_frames=6, size=(64, 96), fps=10, seed=0)
    cap = cv2.VideoCapture(str(path))
    count = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (64, 96, 3)
        count += 1
    cap.release()
    assert count == 6


def test_colorize_uses_palette():
    label = np.array([[0, 1], [5, 255]], np.uint8)
    out = S.colorize(label)
    palette = get_dataset("synthetic").palette
    assert tuple(out[0, 1][::-1]) == palette[1]
    assert tuple(out[1, 0][::-1]) == palette[5]
    assert tuple(out[1, 1]) == (0, 0, 0)
