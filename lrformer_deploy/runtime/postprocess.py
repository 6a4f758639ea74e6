"""Model output -> class-id mask at the frame's size.

Two output kinds (see the manifest's "output.kind"):
- "mask": class ids at the model input size. The part of the input that holds the frame is mapped back
  with nearest-neighbour sampling (pixel centres, like cv2.INTER_NEAREST_EXACT).
- "logits": N x C x H/s x W/s scores. They are upsampled bilinearly straight to the frame size
  (align_corners=False semantics, as mmseg evaluates), then argmax. The frame-to-logit mapping is one
  affine transform, so stretch and keep-ratio both take a single interpolation step.
Masks come back as uint8 (uint16 when a model has more than 256 classes) so they save as PNG directly.
"""
from __future__ import annotations

import numpy as np

from lrformer_deploy.runtime.preprocess import Geometry

# Mixed-corner pixels are scored in chunks to bound memory (pixels x classes x 4 bytes).
_PIXEL_CHUNK = 65536


def mask_dtype(num_classes: int) -> np.dtype:
    return np.dtype(np.uint8) if num_classes <= 256 else np.dtype(np.uint16)


def _nearest_indices(frame_len: int, content_len: int) -> np.ndarray:
    # Input pixel whose centre is closest to each frame pixel centre: floor((i + 0.5) * content / frame).
    idx = np.floor((np.arange(frame_len) + 0.5) * (content_len / frame_len)).astype(np.intp)
    return np.clip(idx, 0, content_len - 1)


def mask_to_frame(mask: np.ndarray, geo: Geometry, num_classes: int = 256) -> np.ndarray:
    """Class ids at the input size (H x W) -> class ids at the frame size (h x w)."""
    if mask.shape != tuple(geo.input_size):
        raise ValueError(f"mask shape {mask.shape} does not match the model input {geo.input_size}")
    (h, w), (ch, cw) = geo.frame_size, geo.content_size
    rows = _nearest_indices(h, ch)
    cols = _nearest_indices(w, cw)
    # Narrow the dtype on the small input-size mask, then two 1-D takes (much faster than 2-D fancy indexing).
    small = mask.astype(mask_dtype(num_classes), copy=False)
    return np.take(np.take(small, rows, axis=0), cols, axis=1)


def logits_affine(geo: Geometry, logits_size: tuple[int, int]) -> np.ndarray:
    """2 x 3 matrix mapping frame pixel (x, y) to logit coordinates, for cv2.WARP_INVERSE_MAP.

    frame -> input: x_in = (x + 0.5) * content_w / frame_w - 0.5 (the preprocessing resize);
    input -> logits: x_l = (x_in + 0.5) * logit_w / input_w - 0.5 (the stride-s feature grid).
    """
    (h, w), (ch, cw) = geo.frame_size, geo.content_size
    H, W = geo.input_size
    lh, lw = logits_size
    ax = cw / w * lw / W
    ay = ch / h * lh / H
    return np.array([[ax, 0.0, 0.5 * ax - 0.5], [0.0, ay, 0.5 * ay - 0.5]], dtype=np.float64)


def _taps(frame_len: int, scale: float, offset: float, grid_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each frame pixel: the two neighbouring grid cells and the weight of the second one."""
    pos = np.arange(frame_len, dtype=np.float64) * scale + offset
    pos = np.clip(pos, 0.0, grid_len - 1)  # align_corners=False clamps at the borders
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, grid_len - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def _cell_candidates(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per grid cell (top-left node y, x): up to k classes that can win anywhere inside the cell.

    Inside a cell the score of class c is a convex combination of its four corner values, so it lies
    between min and max over the corners. A class whose corner max is below the best corner min of some
    other class can never win there. Returns (candidates lh x lw x k, fits lh x lw bool) where `fits`
    is False for cells with more than k possible winners (those are scored over all classes).
    """
    c, lh, lw = logits.shape
    down = np.concatenate([logits[:, 1:], logits[:, -1:]], axis=1)
    right = np.concatenate([logits[:, :, 1:], logits[:, :, -1:]], axis=2)
    diag = np.concatenate([down[:, :, 1:], down[:, :, -1:]], axis=2)
    corner_max = np.maximum(np.maximum(logits, down), np.maximum(right, diag))
    corner_min = np.minimum(np.minimum(logits, down), np.minimum(right, diag))
    floor = corner_min.max(axis=0)
    possible = corner_max >= floor[None]
    fits = possible.sum(axis=0) <= k
    kk = min(k, c)
    order = np.argpartition(-corner_max, kk - 1, axis=0)[:kk] if kk < c else np.broadcast_to(
        np.arange(c)[:, None, None], (c, lh, lw))
    return np.moveaxis(order, 0, -1).astype(np.intp), fits


def logits_to_frame(logits: np.ndarray, geo: Geometry, max_candidates: int = 8) -> np.ndarray:
    """C x h_l x w_l scores -> class ids at the frame size: bilinear upsampling, then argmax.

    Exact, without materialising C full-resolution planes: a frame pixel's score vector is a convex
    combination of its four neighbouring grid cells, so where all four cells have the same argmax,
    that class wins the interpolated argmax too. Only pixels whose four cells disagree (class
    boundaries) are scored, and only over the few classes that can win in their cell.
    """
    if logits.ndim != 3:
        raise ValueError(f"expected C x H x W logits, got shape {logits.shape}")
    logits = np.asarray(logits, dtype=np.float32)
    num_classes, lh, lw = logits.shape
    h, w = geo.frame_size
    matrix = logits_affine(geo, (lh, lw))
    y0, y1, wy = _taps(h, matrix[1, 1], matrix[1, 2], lh)
    x0, x1, wx = _taps(w, matrix[0, 0], matrix[0, 2], lw)
    cell_class = logits.argmax(axis=0).astype(mask_dtype(num_classes))
    c00 = cell_class[y0[:, None], x0[None, :]]
    agree = c00 == cell_class[y0[:, None], x1[None, :]]
    agree &= c00 == cell_class[y1[:, None], x0[None, :]]
    agree &= c00 == cell_class[y1[:, None], x1[None, :]]
    out = c00
    rows, cols = np.nonzero(~agree)
    if not rows.size:
        return out
    flat = np.ascontiguousarray(logits.reshape(num_classes, lh * lw).T)  # (nodes, C)
    candidates, fits = _cell_candidates(logits, max_candidates)
    for start in range(0, rows.size, _PIXEL_CHUNK):
        r, c = rows[start:start + _PIXEL_CHUNK], cols[start:start + _PIXEL_CHUNK]
        ya, yb, fy = y0[r], y1[r], wy[r][:, None]
        xa, xb, fx = x0[c], x1[c], wx[c][:, None]
        nodes = (ya * lw + xa, ya * lw + xb, yb * lw + xa, yb * lw + xb)
        few = fits[ya, xa]
        if few.any():
            cand = candidates[ya[few], xa[few]]  # (m, k) class ids
            v = [flat[n[few][:, None], cand] for n in nodes]
            gx, gy = fx[few], fy[few]
            score = (v[0] * (1 - gx) + v[1] * gx) * (1 - gy) + (v[2] * (1 - gx) + v[3] * gx) * gy
            out[r[few], c[few]] = np.take_along_axis(cand, score.argmax(axis=1)[:, None], axis=1)[:, 0]
        many = ~few
        if many.any():
            v = [flat[n[many]] for n in nodes]
            gx, gy = fx[many], fy[many]
            score = (v[0] * (1 - gx) + v[1] * gx) * (1 - gy) + (v[2] * (1 - gx) + v[3] * gx) * gy
            out[r[many], c[many]] = score.argmax(axis=1)
    return out


class Postprocessor:
    """Maps one model output (for one frame) back to the frame, whatever the output kind."""

    def __init__(self, output_kind: str, num_classes: int) -> None:
        if output_kind not in ("mask", "logits"):
            raise ValueError(f"unknown output kind {output_kind!r}")
        self.output_kind = output_kind
        self.num_classes = num_classes

    def __call__(self, output: np.ndarray, geo: Geometry) -> np.ndarray:
        if self.output_kind == "mask":
            return mask_to_frame(output, geo, self.num_classes)
        return logits_to_frame(output, geo)
