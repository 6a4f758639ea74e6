"""Drawing masks: palette colouring, blending over the frame, and legends of the classes present.

The legend (`with_legend_strip`, lrformer-infer's default, lrformer-batch's --legend) is a strip added
*below* the frame, so no scene pixel is hidden; its height depends only on the frame's size, so every
frame of a video gets the same output size.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def palette_lut(palette: Sequence[Sequence[int]], size: int | None = None) -> np.ndarray:
    """RGB palette -> BGR lookup table; ids beyond the palette (e.g. ignore 255) draw black."""
    n = max(size or 0, len(palette), 256)
    lut = np.zeros((n, 3), dtype=np.uint8)
    if len(palette):
        lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)[:, ::-1]
    return lut


def colorize(mask: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Class ids (h x w) -> BGR colour image (h x w x 3)."""
    if mask.dtype == np.uint8:
        # cv2.LUT is several times faster than numpy fancy indexing on full frames.
        return cv2.LUT(cv2.merge([mask, mask, mask]), lut[:256].reshape(256, 1, 3))
    return lut[mask]


def blend(frame_bgr: np.ndarray, mask: np.ndarray, lut: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """Frame with the coloured mask laid over it; opacity 0 = frame only, 1 = mask colours only."""
    colour = colorize(mask, lut)
    if opacity >= 1.0:
        return colour
    if opacity <= 0.0:
        return frame_bgr.copy()
    return cv2.addWeighted(frame_bgr, 1.0 - opacity, colour, opacity, 0.0)


_FONT = cv2.FONT_HERSHEY_SIMPLEX
_STRIP_BG = (32, 32, 32)


def _strip_font(width: int) -> tuple[float, int]:
    # Scale text with the frame so the strip stays readable on 4K frames and fits on thumbnails.
    scale = max(0.4, min(1.2, width / 1100))
    return scale, 1 if scale < 0.8 else 2


def legend_strip_height(height: int, width: int) -> int:
    """Rows the legend strip adds below a `height` x `width` frame: one line of text and its margins,
    an even number so that a video's frame size keeps its parity (some encoders need even sizes)."""
    scale, thickness = _strip_font(width)
    (_, text_h), base = cv2.getTextSize("Ag", _FONT, scale, thickness)
    rows = text_h + base + 10
    return rows + rows % 2


def with_legend_strip(
    image: np.ndarray,
    mask: np.ndarray,
    class_names: Sequence[str],
    lut: np.ndarray,
) -> np.ndarray:
    """`image` with a strip below it naming the colours of the classes present in `mask`: a swatch and a
    name each, in class-id order (stable from frame to frame). When not all fit the width, the largest
    areas are kept and "+N" says how many were left out. The image above the strip is unchanged."""
    h, w = image.shape[:2]
    strip_h = legend_strip_height(h, w)
    out = np.empty((h + strip_h, w, 3), dtype=np.uint8)
    out[:h] = image
    out[h:] = _STRIP_BG
    counts = np.bincount(mask.ravel().astype(np.int64, copy=False), minlength=1)
    by_area = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    scale, thickness = _strip_font(w)
    (_, text_h), base = cv2.getTextSize("Ag", _FONT, scale, thickness)
    swatch = text_h + base
    labels = {c: class_names[c] if c < len(class_names) else f"class {c}" for c in by_area}

    def entry_w(c: int) -> int:
        return swatch + 4 + cv2.getTextSize(labels[c], _FONT, scale, thickness)[0][0] + 12

    more_w = cv2.getTextSize(f"+{len(by_area)}", _FONT, scale, thickness)[0][0] + 8
    shown, used = [], 6
    for i, c in enumerate(by_area):
        need = entry_w(c) + (more_w if i < len(by_area) - 1 else 0)
        if used + need > w:
            break
        shown.append(c)
        used += entry_w(c)
    top = h + (strip_h - swatch) // 2
    x = 6
    for c in sorted(shown):
        colour = tuple(int(v) for v in lut[c])
        cv2.rectangle(out, (x, top), (x + swatch - 1, top + swatch - 1), colour, thickness=-1)
        # an outline, so a dark class colour still reads against the dark strip
        cv2.rectangle(out, (x - 1, top - 1), (x + swatch, top + swatch), (160, 160, 160), thickness=1)
        cv2.putText(out, labels[c], (x + swatch + 4, top + text_h), _FONT, scale, (255, 255, 255), thickness,
                    cv2.LINE_AA)
        x += entry_w(c)
    if len(shown) < len(by_area):
        cv2.putText(out, f"+{len(by_area) - len(shown)}", (x, top + text_h), _FONT, scale, (200, 200, 200),
                    thickness, cv2.LINE_AA)
    return out
