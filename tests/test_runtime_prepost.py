"""Pre/post-processing: normalisation, keep-ratio padding and the mapping of masks/logits back to frames."""
from __future__ import annotations

import numpy as np
import pytest

from lrformer_deploy.errors import UserError
from lrformer_deploy.runtime.overlay import blend, legend_strip_height, palette_lut, with_legend_strip
from lrformer_deploy.runtime.postprocess import logits_to_frame, mask_to_frame
from lrformer_deploy.runtime.preprocess import Preprocessor, compute_geometry, preprocess_image

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def bilinear_reference(logits: np.ndarray, out_h: int, out_w: int, src_h: float, src_w: float) -> np.ndarray:
    """Independent align_corners=False bilinear sampling of C x h x w logits.

    The output spans the first src_h x src_w logit cells (fractional for keep-ratio content).
    """
    c, h, w = logits.shape

    def taps(n_out: int, span: float, n_in: int):
        x = (np.arange(n_out) + 0.5) * span / n_out - 0.5
        x = np.clip(x, 0, n_in - 1)
        x0 = np.floor(x).astype(int)
        x1 = np.minimum(x0 + 1, n_in - 1)
        return x0, x1, x - x0

    y0, y1, wy = taps(out_h, src_h, h)
    x0, x1, wx = taps(out_w, src_w, w)
    rows = logits[:, y0, :] * (1 - wy)[None, :, None] + logits[:, y1, :] * wy[None, :, None]
    return rows[:, :, x0] * (1 - wx)[None, None, :] + rows[:, :, x1] * wx[None, None, :]


def test_geometry_stretch_and_keep_ratio():
    assert compute_geometry((432, 768), (64, 64), "stretch").content_size == (64, 64)
    geo = compute_geometry((432, 768), (64, 64), "keep-ratio")
    assert geo.content_size == (36, 64)  # 432 * 64 / 768 = 36
    tall = compute_geometry((300, 100), (64, 64), "keep-ratio")
    assert tall.content_size == (64, 21)
    with pytest.raises(UserError):
        compute_geometry((10, 10), (64, 64), "squash")


def test_normalisation_colour_order_and_layout():
    frame = np.zeros((4, 6, 3), dtype=np.uint8)
    frame[:, :] = (10, 20, 200)  # BGR
    chw, geo = Preprocessor((4, 6), MEAN, STD, "RGB", "stretch")(frame)
    assert chw.shape == (3, 4, 6) and chw.dtype == np.float32
    expected_rgb = [(200 - MEAN[0]) / STD[0], (20 - MEAN[1]) / STD[1], (10 - MEAN[2]) / STD[2]]
    np.testing.assert_allclose(chw[:, 0, 0], expected_rgb, rtol=1e-5)
    bgr, _ = Preprocessor((4, 6), MEAN, STD, "BGR", "stretch")(frame)
    expected_bgr = [(10 - MEAN[0]) / STD[0], (20 - MEAN[1]) / STD[1], (200 - MEAN[2]) / STD[2]]
    np.testing.assert_allclose(bgr[:, 0, 0], expected_bgr, rtol=1e-5)


def test_keep_ratio_pads_bottom_right_with_the_mean():
    frame = np.full((50, 200, 3), 255, dtype=np.uint8)
    batch, geo = preprocess_image(frame, (64, 64), MEAN, STD, "RGB", "keep-ratio")
    assert batch.shape == (1, 3, 64, 64)
    ch, cw = geo.content_size
    assert (ch, cw) == (16, 64)
    assert np.all(batch[0, :, ch:, :] == 0.0)  # padding = mean colour after normalisation
    assert np.all(batch[0, :, :ch, :] > 1.0)  # white content is far above the mean


def test_batch_pads_with_zeros_and_reports_geometries():
    pre = Preprocessor((32, 32), MEAN, STD)
    frames = [np.full((20, 40, 3), v, np.uint8) for v in (0, 255)]
    tensor, geos = pre.batch(frames, batch_size=4)
    assert tensor.shape == (4, 3, 32, 32)
    assert len(geos) == 2 and np.all(tensor[2:] == 0)
    assert tensor[0].mean() < 0 < tensor[1].mean()


def test_grey_and_bgra_frames_are_accepted():
    pre = Preprocessor((8, 8), MEAN, STD)
    grey = np.full((8, 8), 128, np.uint8)
    bgra = np.dstack([np.full((8, 8, 3), 128, np.uint8), np.zeros((8, 8), np.uint8)])
    np.testing.assert_allclose(pre(grey)[0], pre(bgra)[0])
    with pytest.raises(UserError):
        pre(np.zeros((8, 8, 3), np.float32))


def test_keep_ratio_mask_maps_back_to_the_right_region():
    # A wide frame lands in the top 16 rows of a 64x64 input. Label the content by column and the
    # padding with class 7: the frame-size mask must show only the content labels, in the right place.
    geo = compute_geometry((100, 400), (64, 64), "keep-ratio")
    ch, cw = geo.content_size
    assert (ch, cw) == (16, 64)
    mask = np.full((64, 64), 7, dtype=np.int32)
    mask[:ch, : cw // 4] = 1
    mask[:ch, cw // 4:] = 2
    out = mask_to_frame(mask, geo, num_classes=8)
    assert out.shape == (100, 400) and out.dtype == np.uint8
    assert 7 not in np.unique(out)
    assert np.all(out[:, :100] == 1) and np.all(out[:, 100:] == 2)


def test_tall_keep_ratio_mask_and_stretch():
    geo = compute_geometry((300, 90), (60, 60), "keep-ratio")
    assert geo.content_size == (60, 18)
    mask = np.full((60, 60), 5, dtype=np.int32)
    mask[:30, :18] = 0
    mask[30:, :18] = 3
    out = mask_to_frame(mask, geo, num_classes=6)
    assert out.shape == (300, 90)
    assert np.all(out[:150] == 0) and np.all(out[150:] == 3)
    stretch = compute_geometry((30, 30), (60, 60), "stretch")
    checker = (np.indices((60, 60)).sum(0) // 2 % 2).astype(np.int32)
    # Pixel centres: frame pixel i (centre i + 0.5) sits at input 2i + 1, so every odd input pixel.
    np.testing.assert_array_equal(mask_to_frame(checker, stretch, 2), checker[1::2, 1::2])


def smooth_logits(rng: np.random.Generator, classes: int, size: int) -> np.ndarray:
    """Spatially smooth scores, like a real segmentation head: few classes compete inside a cell."""
    coarse = rng.normal(size=(classes, 3, 3)) * 3
    t = np.linspace(0, 2, size)
    # Bilinear blow-up of a 3x3 grid: separable, written out to keep the reference independent of cv2.
    i0 = np.minimum(np.floor(t).astype(int), 1)
    f = t - i0
    rows = coarse[:, i0, :] * (1 - f)[None, :, None] + coarse[:, i0 + 1, :] * f[None, :, None]
    return (rows[:, :, i0] * (1 - f) + rows[:, :, i0 + 1] * f).astype(np.float32)


@pytest.mark.parametrize("kind", ["noise", "smooth"])
@pytest.mark.parametrize("resize", ["stretch", "keep-ratio"])
def test_logits_upsampled_bilinearly_to_the_frame_then_argmax(resize, kind):
    rng = np.random.default_rng(0)
    frame_size, input_size = (90, 200), (96, 96)
    geo = compute_geometry(frame_size, input_size, resize)
    # Noise: every cell has many possible winners (full scoring); smooth: the candidate-pruned path.
    logits = (rng.normal(size=(40, 12, 12)).astype(np.float32) if kind == "noise"
              else smooth_logits(rng, 40, 12))
    got = logits_to_frame(logits, geo)
    ch, cw = geo.content_size
    ref = bilinear_reference(logits.astype(np.float64), *frame_size, src_h=ch / 8, src_w=cw / 8)
    expected = ref.argmax(axis=0)
    agree = (got == expected).mean()
    assert got.shape == frame_size
    assert agree > 0.999, agree  # only float near-ties may differ


def test_logits_keep_ratio_ignores_padding_cells():
    # Padding rows of the logit grid hold a class that must never appear in the frame.
    geo = compute_geometry((64, 256), (64, 64), "keep-ratio")  # content 16 x 64 -> logit rows 0..1
    logits = np.zeros((3, 8, 8), np.float32)
    logits[1, :2, :] = 5.0  # content: class 1
    logits[2, 2:, :] = 9.0  # padding: class 2
    out = logits_to_frame(logits, geo)
    # Bilinear taps reach half a cell into the padding only at the very bottom edge.
    assert np.mean(out == 1) > 0.9 and np.all(out[: 64 * 3 // 4] == 1)


def test_overlay_blend():
    frame = np.zeros((40, 60, 3), np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[:, 30:] = 1
    lut = palette_lut([(255, 0, 0), (0, 0, 255)])
    out = blend(frame, mask, lut, opacity=1.0)
    assert tuple(out[0, 0]) == (0, 0, 255) and tuple(out[0, 59]) == (255, 0, 0)  # RGB palette -> BGR image
    half = blend(frame, mask, lut, opacity=0.5)
    assert 120 <= half[0, 0, 2] <= 135
    np.testing.assert_array_equal(blend(frame, mask, lut, 0.0), frame)


def test_legend_strip_names_present_colours_below_an_untouched_frame():
    lut = palette_lut([(200, 10, 10), (10, 200, 10), (10, 10, 200), (250, 250, 0)])
    frame = np.random.default_rng(0).integers(0, 256, (120, 400, 3), dtype=np.uint8)
    mask = np.zeros((120, 400), np.uint8)
    mask[:, 200:] = 2  # classes 0 and 2 present; 1 and 3 absent
    out = with_legend_strip(frame, mask, ["red", "green", "blue", "yellow"], lut)
    strip_h = legend_strip_height(120, 400)
    assert out.shape == (120 + strip_h, 400, 3) and strip_h % 2 == 0
    np.testing.assert_array_equal(out[:120], frame)  # no scene pixel covered
    strip = out[120:].reshape(-1, 3)
    colours = {tuple(int(v) for v in px) for px in strip}
    assert tuple(int(v) for v in lut[0]) in colours and tuple(int(v) for v in lut[2]) in colours
    assert tuple(int(v) for v in lut[1]) not in colours and tuple(int(v) for v in lut[3]) not in colours
    # The strip's height depends on the frame size only: every frame of a video has the same size.
    other = with_legend_strip(frame, np.full((120, 400), 3, np.uint8), ["red", "green", "blue", "yellow"], lut)
    assert other.shape == out.shape
    # Too many classes for the width: the largest areas are kept, and the rest counted, not drawn over.
    narrow_mask = np.zeros((60, 120), np.uint8)
    narrow_mask[:, 80:] = 3
    narrow = with_legend_strip(np.zeros((60, 120, 3), np.uint8), narrow_mask,
                               ["a", "b", "c", "a-class-name-too-long-for-the-width"], lut)
    narrow_colours = {tuple(int(v) for v in px) for px in narrow[60:].reshape(-1, 3)}
    assert tuple(int(v) for v in lut[0]) in narrow_colours  # 2/3 of the area
    assert tuple(int(v) for v in lut[3]) not in narrow_colours
    np.testing.assert_array_equal(narrow[:60], 0)
