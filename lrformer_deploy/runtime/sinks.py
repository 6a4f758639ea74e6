"""Outputs: overlay video (mp4v), overlay images, and class-id mask PNGs.

The video writer is opened on the first frame and released in `close()`, which the pipeline calls in a
`finally`, so an interrupted run still leaves a playable (shorter) file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from lrformer_deploy.errors import UserError
from lrformer_deploy.runtime.sources import Frame


def _ensure_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None


def write_png(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise UserError(f"cannot encode {path.name}")
    try:
        data.tofile(str(path))
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


@dataclass
class Outputs:
    """Where results go. Any of the three may be None; `needs_overlay` tells the pipeline to draw."""

    video_path: Path | None = None  # overlay video for video inputs
    image_path: Path | None = None  # overlay image for a single image input
    image_dir: Path | None = None  # overlay images (<stem>_seg.png) for folders / globs
    mask_dir: Path | None = None  # class-id PNGs
    fps: float = 25.0
    fourcc: str = "mp4v"
    written_frames: int = 0
    written_masks: int = 0
    _writer: cv2.VideoWriter | None = field(default=None, repr=False)

    @property
    def needs_overlay(self) -> bool:
        return any(p is not None for p in (self.video_path, self.image_path, self.image_dir))

    def open(self) -> None:
        """Create folders up front, so a bad output location fails before any inference."""
        for folder in (self.image_dir, self.mask_dir):
            if folder is not None:
                _ensure_dir(folder)
        for path in (self.video_path, self.image_path):
            if path is not None:
                _ensure_dir(path.parent)

    def write(self, frame: Frame, mask: np.ndarray, overlay: np.ndarray | None, video: bool) -> None:
        if overlay is not None:
            if self.video_path is not None and video:
                self._video_write(overlay)
            elif self.image_path is not None:
                write_png(self.image_path, overlay)
            elif self.image_dir is not None:
                write_png(self.image_dir / f"{frame.stem}_seg.png", overlay)
            self.written_frames += 1
        if self.mask_dir is not None:
            name = f"{frame.stem}_{frame.index:06d}.png" if video else f"{frame.stem}.png"
            write_png(self.mask_dir / name, mask)
            self.written_masks += 1

    def _video_write(self, image: np.ndarray) -> None:
        if self._writer is None:
            h, w = image.shape[:2]
            self._writer = cv2.VideoWriter(str(self.video_path), cv2.VideoWriter_fourcc(*self.fourcc),
                                           float(self.fps), (w, h))
            if not self._writer.isOpened():
                self._writer = None
                raise UserError(f"cannot write video {self.video_path}: OpenCV has no {self.fourcc} writer for "
                                f"'{self.video_path.suffix}' files, or the folder is not writable (try an .mp4 name)")
        self._writer.write(image)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
