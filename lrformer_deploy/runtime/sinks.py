"""Outputs: overlay video (mp4v), overlay images, and class-id mask PNGs, all written crash-safely.

Every image goes through `atomic.atomic_output` (temporary beside the target, renamed when complete). The
video is encoded into a temporary beside its target and released in `close()`, which the pipeline calls in
a `finally`, so the trailer is always written. Then `finish()` decides where that file goes:

- complete run: it replaces the target (an earlier file of that name survives until this moment);
- interrupted (Ctrl-C, SIGTERM, SIGHUP): the partial video is kept, playable. It takes the target name
  when nothing is there yet; an earlier complete file at the target is never destroyed by a partial one,
  so the partial is kept beside it as `NAME.partial.mp4` (`partial_name`);
- failed (an error): the temporary is removed and the target is left as it was.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from lrformer_deploy import atomic
from lrformer_deploy.errors import UserError
from lrformer_deploy.runtime.sources import Frame

# Containers OpenCV's FFmpeg writer produces with the mp4v codec.
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv")


def partial_name(path: Path) -> Path:
    """`out.mp4` -> `out.partial.mp4`: where an interrupted video goes when `out.mp4` already exists."""
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def _ensure_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None


def write_png(path: Path, image: np.ndarray) -> None:
    """Encode by the file's suffix and write atomically (a reader never sees half an image)."""
    ok, data = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise UserError(f"cannot encode {path.name}")
    try:
        atomic.write_bytes(path, data.tobytes())
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


@dataclass
class Outputs:
    """Where results go. Any of the three may be None; `needs_overlay` tells the pipeline to draw.

    `run_pipeline` calls `close()` then `finish(outcome)`; code that drives `write()` itself must call
    `finish("complete")` too, or the video stays under its hidden temporary name."""

    video_path: Path | None = None  # overlay video for video inputs
    image_path: Path | None = None  # overlay image for a single image input
    image_dir: Path | None = None  # overlay images (<stem>_seg.png) for folders / globs
    mask_dir: Path | None = None  # class-id PNGs
    fps: float = 25.0
    fourcc: str = "mp4v"
    written_frames: int = 0
    written_masks: int = 0
    kept_video: Path | None = None  # where finish() left the video (None: not written or discarded)
    _writer: cv2.VideoWriter | None = field(default=None, repr=False)
    _video_tmp: Path | None = field(default=None, repr=False)

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
            self._video_tmp = atomic.temporary_sibling(self.video_path)
            self._writer = cv2.VideoWriter(str(self._video_tmp), cv2.VideoWriter_fourcc(*self.fourcc),
                                           float(self.fps), (w, h))
            if not self._writer.isOpened():
                self._writer = None
                self._discard()
                raise UserError(f"cannot write video {self.video_path}: OpenCV has no {self.fourcc} writer for "
                                f"'{self.video_path.suffix}' files, or the folder is not writable (try an .mp4 name)")
        self._writer.write(image)

    def close(self) -> None:
        """Release the video writer: the trailer is written, the temporary is a playable file."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def finish(self, outcome: str) -> Path | None:
        """Place the video after `close()`; outcome is "complete", "interrupted" or "failed" (see above).
        Returns where the video now is, or None."""
        self.close()
        tmp, self._video_tmp = self._video_tmp, None
        if tmp is None or self.video_path is None:
            return None
        if outcome == "failed" or (outcome == "interrupted" and self.written_frames == 0):
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return None
        target = self.video_path
        if outcome == "interrupted" and target.exists():
            target = partial_name(target)
        try:
            atomic.commit(tmp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise UserError(f"cannot write {target}: {exc.strerror or exc}") from None
        self.kept_video = target
        return target

    def _discard(self) -> None:
        if self._video_tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._video_tmp)
            self._video_tmp = None
