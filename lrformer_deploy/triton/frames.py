"""Frames in, masks out: the request handling behind both Triton front ends (torch-free).

The `NAME_frames` Python-backend model and `lrformer-serve` expose the same tensors, so one client works
with both:

| tensor | Triton type | shape (after the batch dim) | meaning |
|---|---|---|---|
| `frame` (input, optional) | UINT8 | [-1, -1, 3] | BGR frames of any size (what OpenCV decodes) |
| `encoded` (input, optional) | BYTES | [1] | one JPEG/PNG file per batch item |
| `mask` (output) | UINT8 (UINT16 beyond 256 classes) | [-1, -1] | class id per frame pixel |

A request carries exactly one of the two inputs. Every frame of every request that the dynamic batcher
groups into one call goes through one `Segmenter.segment_batch` call, so a batched model runs them together.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from lrformer_deploy.runtime.sources import describe_pixels, header_size

FRAME_INPUT = "frame"
ENCODED_INPUT = "encoded"
MASK_OUTPUT = "mask"


class BadRequest(ValueError):
    """The request itself is wrong (what the client sent); other requests of the batch still run."""


def decode_request(frame: np.ndarray | None, encoded: np.ndarray | None,
                   max_pixels: int | None = None) -> list[np.ndarray]:
    """The BGR frames of one request: its `frame` batch, or its `encoded` images decoded.

    With `max_pixels`, a frame larger than that is refused from the tensor's shape, and an encoded image
    from its header, before anything is decoded: a 1 MB PNG can declare 20000x20000 pixels (1.2 GB decoded,
    plus its mask), so one request could otherwise take the server's memory."""
    if (frame is None) == (encoded is None):
        raise BadRequest(f"send exactly one of the inputs '{FRAME_INPUT}' (uint8 BGR frames) or "
                         f"'{ENCODED_INPUT}' (JPEG/PNG bytes)")
    if frame is not None:
        if frame.dtype != np.uint8 or frame.ndim != 4 or frame.shape[-1] != 3 or 0 in frame.shape:
            raise BadRequest(f"'{FRAME_INPUT}' must be uint8 [batch, height, width, 3] BGR, got "
                             f"{frame.dtype} {list(frame.shape)}")
        if max_pixels and frame.shape[1] * frame.shape[2] > max_pixels:
            raise BadRequest(f"'{FRAME_INPUT}' frames of {frame.shape[2]}x{frame.shape[1]} pixels are over the "
                             f"server's limit of {max_pixels} pixels per frame (lrformer-serve --max-pixels)")
        return list(frame)
    frames = []
    for i, blob in enumerate(np.asarray(encoded, dtype=object).reshape(-1)):
        raw = bytes(blob)
        if max_pixels and raw:
            size = header_size(raw)
            if size is None:
                raise BadRequest(f"'{ENCODED_INPUT}' item {i}: no image size in its header (send PNG, JPEG, BMP, "
                                 "TIFF or WebP), so it is not decoded under the server's pixel limit")
            if size[0] * size[1] > max_pixels:
                raise BadRequest(f"'{ENCODED_INPUT}' item {i} declares {describe_pixels(*size)}, over the server's limit of "
                                 f"{max_pixels} pixels per image (lrformer-serve --max-pixels); not decoded")
        data = np.frombuffer(raw, dtype=np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        if image is None:
            raise BadRequest(f"'{ENCODED_INPUT}' item {i} is not an image OpenCV can decode (JPEG/PNG)")
        frames.append(image)
    return frames


def stack_masks(masks: Sequence[np.ndarray]) -> np.ndarray:
    if len({m.shape for m in masks}) > 1:
        raise BadRequest("the images of one request decode to different sizes: send them as separate requests")
    return np.stack(masks)


def segment_requests(segmenter, requests: Sequence[tuple[np.ndarray | None, np.ndarray | None]],
                     max_pixels: int | None = None) -> list[np.ndarray | BadRequest]:
    """Masks ([batch, h, w]) for each (frame, encoded) request, or the BadRequest that request earned."""
    results: list[np.ndarray | BadRequest | None] = [None] * len(requests)
    decoded: list[tuple[int, list[np.ndarray]]] = []
    for i, (frame, encoded) in enumerate(requests):
        try:
            decoded.append((i, decode_request(frame, encoded, max_pixels)))
        except BadRequest as exc:
            results[i] = exc
    masks = segmenter.segment_batch([f for _, frames in decoded for f in frames])
    start = 0
    for i, frames in decoded:
        try:
            results[i] = stack_masks(masks[start:start + len(frames)])
        except BadRequest as exc:
            results[i] = exc
        start += len(frames)
    return results  # type: ignore[return-value]
