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

import cv2
import numpy as np

from lrformer_deploy.runtime.preprocess import Geometry

# Classes are upsampled in chunks: this bounds the memory of the full-resolution score planes
# (chunk x frame pixels x 4 bytes) and keeps cv2 on its exact paths: cv2.resize is exact for any
# channel count, but cv2.warpAffine (needed for keep-ratio's fractional crop) only for up to 4 channels
# (wider images take a lower-precision path in OpenCV 5), so warps are done 4 channels at a time.
_LOGIT_CHUNK = 32
_WARP_CHANNELS = 4


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
    return mask[rows[:, None], cols[None, :]].astype(mask_dtype(num_classes), copy=False)


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


def logits_to_frame(logits: np.ndarray, geo: Geometry) -> np.ndarray:
    """C x h_l x w_l scores -> class ids at the frame size (bilinear upsampling, then argmax)."""
    if logits.ndim != 3:
        raise ValueError(f"expected C x H x W logits, got shape {logits.shape}")
    num_classes = logits.shape[0]
    h, w = geo.frame_size
    matrix = logits_affine(geo, logits.shape[1:])
    hwc = np.ascontiguousarray(np.moveaxis(logits.astype(np.float32, copy=False), 0, -1))
    stretch = geo.content_size == geo.input_size
    best_score = None
    best_class = np.zeros((h, w), dtype=mask_dtype(num_classes))
    for start in range(0, num_classes, _LOGIT_CHUNK):
        chunk = hwc[:, :, start:start + _LOGIT_CHUNK]
        n = chunk.shape[2]
        if stretch:
            # Whole grid -> whole frame: cv2.resize's mapping is exactly the affine one above.
            up = cv2.resize(np.ascontiguousarray(chunk), (w, h), interpolation=cv2.INTER_LINEAR)
        else:
            up = np.empty((h, w, n), dtype=np.float32)
            for sub in range(0, n, _WARP_CHANNELS):
                part = cv2.warpAffine(np.ascontiguousarray(chunk[:, :, sub:sub + _WARP_CHANNELS]), matrix, (w, h),
                                      flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
                up[:, :, sub:sub + _WARP_CHANNELS] = part.reshape(h, w, -1)
        if up.ndim == 2:
            up = up[:, :, None]
        arg = up.argmax(axis=2)
        score = np.take_along_axis(up, arg[:, :, None], axis=2)[:, :, 0]
        if best_score is None:
            best_score, best_class[:] = score, arg
        else:
            # Strictly greater: ties keep the lower class id, as a single argmax would.
            better = score > best_score
            best_score = np.where(better, score, best_score)
            best_class[better] = (arg[better] + start)
    return best_class


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
