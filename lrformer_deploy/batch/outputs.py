"""Output names and writers, shared by the driver, the actors and the overlay tasks.

Names follow `lrformer-infer`: masks `<stem>.png` for images and `<stem>_000123.png` for video frames
(single-channel class ids, uint8; uint16 beyond 256 classes), overlays `<stem>_seg.png` / `<stem>_seg.mp4`.
A job writes them under one output folder:

    DIR/masks/      class-id PNGs (--save-mask)
    DIR/overlays/   overlay images and videos (--overlay)
    DIR/manifest.json   the run manifest

Every file is written through `lrformer_deploy.atomic`, so a file that exists is complete: that is what
`--resume` relies on.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from lrformer_deploy.atomic import atomic_output
from lrformer_deploy.runtime.overlay import blend, palette_lut, with_legend_strip

MASKS, OVERLAYS, WORK = "masks", "overlays", ".work"
MANIFEST = "manifest.json"


def mask_name(stem: str, frame: int | None = None) -> str:
    """`<stem>.png` for an image, `<stem>_000123.png` for frame 123 of a video (as lrformer-infer)."""
    return f"{stem}.png" if frame is None else f"{stem}_{frame:06d}.png"


def overlay_name(stem: str, video: bool) -> str:
    return f"{stem}_seg.mp4" if video else f"{stem}_seg.png"


@dataclass(frozen=True)
class Layout:
    """Where one job's files go. `frame_mask_dir(stem)` is where video frame masks are written: the mask
    folder with --save-mask, else a temporary folder the overlay task reads and removes."""

    root: Path
    save_mask: bool
    overlay: bool

    @property
    def mask_dir(self) -> Path:
        return self.root / MASKS

    @property
    def overlay_dir(self) -> Path:
        return self.root / OVERLAYS

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    def frame_mask_dir(self, stem: str) -> Path:
        return self.mask_dir if self.save_mask else self.root / WORK / stem

    def outputs(self, kind: str, stem: str, frames: int) -> dict[str, str | None]:
        """Output names recorded in the manifest, relative to the root."""
        video = kind == "video"
        masks = None
        if self.save_mask:
            masks = f"{MASKS}/{mask_name(stem) if not video else stem + '_%06d.png'}"
        overlay = f"{OVERLAYS}/{overlay_name(stem, video)}" if self.overlay else None
        return {"masks": masks, "overlay": overlay}

    def complete(self, kind: str, stem: str, frames: int) -> bool:
        """Every output of this input exists (each was renamed into place only once complete)."""
        if self.overlay and not (self.overlay_dir / overlay_name(stem, kind == "video")).is_file():
            return False
        if self.save_mask:
            if kind == "image":
                return (self.mask_dir / mask_name(stem)).is_file()
            return frames > 0 and all((self.mask_dir / mask_name(stem, i)).is_file() for i in range(frames))
        return True

    def remove_stale_temporaries(self) -> int:
        """Delete the hidden `.NAME.XXXX.partial.EXT` files killed workers left (atomic writes that never
        completed); run at the end of every job, once its workers are gone, and by --resume. Returns how many."""
        removed = 0
        for path in self.root.rglob(".*.partial.*"):  # the mask and overlay folders are inside root
            if path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def make_dirs(self) -> None:
        for folder, wanted in ((self.root, True), (self.mask_dir, self.save_mask), (self.overlay_dir, self.overlay)):
            if wanted:
                folder.mkdir(parents=True, exist_ok=True)


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Encode by the suffix (PNG) and rename into place when complete."""
    path = Path(path)
    ok, data = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise RuntimeError(f"cannot encode {path.name}")
    with atomic_output(path) as tmp:
        data.tofile(str(tmp))


def assemble_overlay_video(video: str, mask_dir: str, stem: str, frames: int, out_path: str, fps: float,
                           palette: Sequence[Sequence[int]], opacity: float = 0.5, legend: bool = False,
                           class_names: Sequence[str] = (), remove_masks: bool = False) -> int:
    """Write the overlay video of one input from its frames and their mask PNGs, in order.

    Frame ranges are segmented in parallel and out of order; the video is encoded here in one pass
    (decode frame i, read mask i, blend, encode), so it keeps the input's frame count and fps and looks
    exactly like lrformer-infer's. Returns the number of frames written.
    """
    lut = palette_lut(palette)
    cap = cv2.VideoCapture(video)
    writer = None
    written = 0
    try:
        with atomic_output(out_path) as tmp:
            for i in range(frames):
                ok, frame = cap.read()
                if not ok:
                    raise RuntimeError(f"video ended at frame {i} while writing its overlay ({frames} expected)")
                mask = cv2.imread(str(Path(mask_dir) / mask_name(stem, i)), cv2.IMREAD_UNCHANGED)
                if mask is None:
                    raise RuntimeError(f"mask of frame {i} is missing")
                image = blend(frame, mask, lut, opacity)
                if legend:
                    image = with_legend_strip(image, mask, class_names, lut)
                if writer is None:
                    h, w = image.shape[:2]
                    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
                    if not writer.isOpened():
                        raise RuntimeError(f"OpenCV cannot write mp4v video {out_path}")
                writer.write(image)
                written += 1
            if writer is not None:
                writer.release()
                writer = None
    finally:
        if writer is not None:
            writer.release()
        cap.release()
    if remove_masks:
        shutil.rmtree(mask_dir, ignore_errors=True)
    return written
