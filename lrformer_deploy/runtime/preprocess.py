"""Frame -> model input: colour order, resize (stretch or keep-ratio with padding) and normalisation.

This is the one implementation of LRFormer preprocessing in the package (numpy + cv2 only); the
exporter's own checks use it too, so a graph is verified with exactly what the runtime feeds it.

Keep-ratio resizing scales the frame to fit inside the model input and pads the bottom and right
edges (as mmseg's Pad does). The padding holds the normalised value 0, i.e. the mean colour.
`Geometry` records where the frame landed so that postprocessing can map a mask back onto the frame.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from lrformer_deploy.errors import UserError

RESIZE_MODES = ("stretch", "keep-ratio")


@dataclass(frozen=True)
class Geometry:
    """Where a frame sits inside the model input: it fills rows [0, content_h) and cols [0, content_w)."""

    frame_size: tuple[int, int]  # (h, w) of the original frame
    input_size: tuple[int, int]  # (H, W) of the model input
    content_size: tuple[int, int]  # (h', w') of the resized frame inside the input

    @property
    def scale(self) -> tuple[float, float]:
        """Input pixels per frame pixel, (sy, sx)."""
        return (self.content_size[0] / self.frame_size[0], self.content_size[1] / self.frame_size[1])


def compute_geometry(frame_size: tuple[int, int], input_size: tuple[int, int], resize: str = "stretch") -> Geometry:
    h, w = frame_size
    H, W = input_size
    if h <= 0 or w <= 0:
        raise UserError(f"cannot segment an empty image ({w}x{h})")
    if resize == "stretch":
        content = (H, W)
    elif resize == "keep-ratio":
        scale = min(H / h, W / w)
        # Never round a side down to zero, and never exceed the input because of rounding.
        content = (min(H, max(1, round(h * scale))), min(W, max(1, round(w * scale))))
    else:
        raise UserError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    return Geometry(frame_size=(h, w), input_size=(H, W), content_size=content)


def as_bgr(frame: np.ndarray) -> np.ndarray:
    """Accept grey, BGR or BGRA uint8 frames (what cv2.imread/VideoCapture give) and return BGR."""
    if not isinstance(frame, np.ndarray):
        raise UserError(f"expected an image as a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        if frame.dtype == np.uint16:
            frame = (frame >> 8).astype(np.uint8)  # 16-bit PNGs: keep the high byte
        else:
            raise UserError(f"expected a uint8 image, got dtype {frame.dtype}")
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if frame.ndim == 3 and frame.shape[2] == 1:
        return cv2.cvtColor(frame[:, :, 0], cv2.COLOR_GRAY2BGR)
    raise UserError(f"expected an H x W x 3 BGR image, got shape {frame.shape}")


class Preprocessor:
    """Turns BGR uint8 frames into normalised NCHW float32 tensors for one model input, or, for a graph
    that normalises itself (input_dtype "uint8"), into resized uint8 NHWC frames in the model's colour order."""

    def __init__(
        self,
        input_size: tuple[int, int],
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        color_order: str = "RGB",
        resize: str = "stretch",
        input_dtype: str = "float32",
    ) -> None:
        if input_dtype not in ("float32", "uint8"):
            raise UserError(f"input dtype must be float32 or uint8, got {input_dtype!r}")
        self.input_dtype = input_dtype
        if resize not in RESIZE_MODES:
            raise UserError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.resize = resize
        self.color_order = color_order.upper()
        # mean/std are given in the model's colour order; the frame is BGR, so index channels accordingly.
        order = (2, 1, 0) if self.color_order == "RGB" else (0, 1, 2)  # model channel c <- BGR channel order[c]
        self._src_channel = order
        self._scale = np.asarray([1.0 / s for s in std], dtype=np.float32)
        self._offset = np.asarray([-m / s for m, s in zip(mean, std)], dtype=np.float32)
        # uint8 padding: the mean colour rounded (the float path pads with exactly the mean).
        self._pad_uint8 = np.asarray(np.clip(np.rint(mean), 0, 255), dtype=np.uint8)

    def geometry(self, frame_size: tuple[int, int]) -> Geometry:
        return compute_geometry(frame_size, self.input_size, self.resize)

    def __call__(self, frame_bgr: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, Geometry]:
        """Preprocess one frame into `out` (3 x H x W float32, allocated when None)."""
        frame = as_bgr(frame_bgr)
        geo = self.geometry(frame.shape[:2])
        H, W = self.input_size
        ch, cw = geo.content_size
        if self.input_dtype == "uint8":
            return self._uint8(frame, geo, out), geo
        if out is None:
            out = np.empty((3, H, W), dtype=np.float32)
        if (ch, cw) != frame.shape[:2]:
            # Bilinear, as mmseg's test pipeline and the exporter's checks resize.
            frame = cv2.resize(frame, (cw, ch), interpolation=cv2.INTER_LINEAR)
        if (ch, cw) != (H, W):
            out[:, ch:, :] = 0.0  # padding = the mean colour after normalisation
            out[:, :ch, cw:] = 0.0
        for c in range(3):
            plane = out[c, :ch, :cw]
            np.multiply(frame[:, :, self._src_channel[c]], self._scale[c], out=plane, casting="unsafe")
            plane += self._offset[c]
        return out, geo

    def _uint8(self, frame: np.ndarray, geo: Geometry, out: np.ndarray | None) -> np.ndarray:
        H, W = self.input_size
        ch, cw = geo.content_size
        if out is None:
            out = np.empty((H, W, 3), dtype=np.uint8)
        if (ch, cw) != frame.shape[:2]:
            frame = cv2.resize(frame, (cw, ch), interpolation=cv2.INTER_LINEAR)
        if (ch, cw) != (H, W):
            out[ch:, :, :] = self._pad_uint8
            out[:ch, cw:, :] = self._pad_uint8
        if self._src_channel == (2, 1, 0):  # BGR -> RGB in OpenCV's one pass, not a numpy gather (3x faster)
            if (ch, cw) == (H, W):
                cv2.cvtColor(frame, cv2.COLOR_BGR2RGB, dst=out)
            else:
                out[:ch, :cw, :] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        else:
            out[:ch, :cw, :] = frame
        return out

    def batch(self, frames: list[np.ndarray], batch_size: int | None = None) -> tuple[np.ndarray, list[Geometry]]:
        """Preprocess frames into one N x 3 x H x W tensor (N x H x W x 3 uint8 for a uint8-input graph);
        N = batch_size (zero-padded) or len(frames)."""
        n = batch_size or len(frames)
        if len(frames) > n:
            raise ValueError(f"{len(frames)} frames do not fit a batch of {n}")
        H, W = self.input_size
        if self.input_dtype == "uint8":
            tensor = np.zeros((n, H, W, 3), dtype=np.uint8)
            return tensor, [self(f, out=tensor[i])[1] for i, f in enumerate(frames)]
        tensor = np.zeros((n, 3, H, W), dtype=np.float32)
        geos = [self(f, out=tensor[i])[1] for i, f in enumerate(frames)]
        return tensor, geos


def preprocess_image(
    frame_bgr: np.ndarray,
    input_size: tuple[int, int],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    color_order: str = "RGB",
    resize: str = "stretch",
) -> tuple[np.ndarray, Geometry]:
    """One-shot helper: BGR uint8 image -> (1 x 3 x H x W float32, Geometry)."""
    chw, geo = Preprocessor(input_size, mean, std, color_order, resize)(frame_bgr)
    return chw[None], geo
