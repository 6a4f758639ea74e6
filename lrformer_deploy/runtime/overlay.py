"""Drawing masks: palette colouring, blending over the frame and an optional legend of present classes."""
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


def draw_legend(
    image: np.ndarray,
    mask: np.ndarray,
    class_names: Sequence[str],
    lut: np.ndarray,
    max_entries: int = 12,
) -> np.ndarray:
    """Draw (in place) a box listing the classes present, largest area first, with their colours."""
    counts = np.bincount(mask.ravel(), minlength=1)
    present = [int(c) for c in np.argsort(-counts) if counts[c] > 0][:max_entries]
    if not present:
        return image
    h = image.shape[0]
    # Scale text with the image so the legend stays readable on 4K frames and fits on thumbnails.
    font_scale = max(0.35, min(1.0, h / 900))
    thickness = 1 if font_scale < 0.7 else 2
    line_h = int(22 * font_scale / 0.5 * 0.6) + 4
    swatch = line_h - 4
    labels = [class_names[c] if c < len(class_names) else f"class {c}" for c in present]
    text_w = max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)[0][0] for t in labels)
    box_w = min(image.shape[1], swatch + text_w + 16)
    box_h = min(h, line_h * len(present) + 8)
    region = image[:box_h, :box_w]
    region[:] = (region * 0.4).astype(np.uint8)  # darken behind the text
    for i, (cid, label) in enumerate(zip(present, labels)):
        y = 4 + i * line_h
        colour = tuple(int(v) for v in lut[cid])
        cv2.rectangle(image, (4, y), (4 + swatch, y + swatch), colour, thickness=-1)
        cv2.putText(image, label, (swatch + 10, y + swatch - 2), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (255, 255, 255), thickness, cv2.LINE_AA)
    return image
