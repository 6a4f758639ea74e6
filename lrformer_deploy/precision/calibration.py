"""Calibration inputs for the reduced-precision graphs: frames from an image folder or a video file.

Frames go through the same preprocessing as inference (stretch-resize to the graph's input size,
BGR -> RGB, (x - mean) / std, HWC -> CHW float32), so the ranges measured here are the ranges the
deployed graph sees. No torch: numpy, cv2 and the standard library only.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from lrformer_deploy.contract import IMAGENET_MEAN, IMAGENET_STD
from lrformer_deploy.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")



def preprocessor(size: tuple[int, int], mean: Sequence[float], std: Sequence[float]):
    """The runtime's own preprocessing (stretch to `size` = (H, W), BGR->RGB, (x-mean)/std, CHW), so
    calibration sees exactly what inference feeds the graph."""
    from lrformer_deploy.runtime.preprocess import Preprocessor

    prep = Preprocessor(tuple(size), tuple(mean), tuple(std), "RGB", "stretch")
    return lambda bgr: prep(bgr)[0]


def list_calibration_files(path: str | os.PathLike) -> tuple[str, list[Path]]:
    """Classify a calibration source: ("video", [file]) or ("images", sorted image files)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"calibration source {p} does not exist (give a folder of images or a video file).")
    if p.is_file():
        if p.suffix.lower() in VIDEO_SUFFIXES:
            return "video", [p]
        if p.suffix.lower() in IMAGE_SUFFIXES:
            return "images", [p]
        raise UserError(f"calibration source {p} is neither an image nor a video file ({p.suffix or 'no suffix'}).")
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"calibration folder {p} contains no images ({', '.join(IMAGE_SUFFIXES)}).")
    return "images", files


def even_indices(total: int, count: int) -> list[int]:
    """`count` indices spread evenly over range(total), first and last included (fewer if total < count)."""
    if total <= 0:
        return []
    if count >= total:
        return list(range(total))
    if count == 1:
        return [total // 2]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


def holdout_indices(total: int, calib_count: int, count: int) -> list[int]:
    """`count` indices disjoint from even_indices(total, calib_count): midpoints between calibration
    samples, spread evenly. Fewer (possibly none) when the source is too short to hold any back."""
    used = even_indices(total, calib_count)
    taken = set(used)
    mids = [(a + b) // 2 for a, b in zip(used, used[1:]) if (a + b) // 2 not in taken]
    if not mids:
        mids = [i for i in range(total) if i not in taken]
    return [mids[i] for i in even_indices(len(mids), count)]


def _pick(total: int, count: int, holdout_of: int | None) -> list[int]:
    return even_indices(total, count) if holdout_of is None else holdout_indices(total, holdout_of, count)


def _read_video_frames(path: Path, count: int, holdout_of: int | None = None) -> list[np.ndarray]:
    return list(_iter_video_frames(path, count, holdout_of))


def _iter_video_frames(path: Path, count: int, holdout_of: int | None = None) -> Iterator[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise UserError(f"cannot open video {path} with OpenCV.")
    try:
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if total <= 0:
            # Some containers (raw streams, some MKV/WebM) state no count: count once with grab() (no frame
            # kept), then pick from a second pass exactly as when the count is known. Memory stays one frame
            # whatever the length, where holding every frame to pick from later could take gigabytes.
            total = _count_frames(cap)
            cap.release()
            cap = cv2.VideoCapture(str(path))
        wanted = set(_pick(total, count, holdout_of))
        if not wanted:
            return
        # Sequential grab() is exact and cheap; seeking in compressed video is not frame-accurate.
        for index in range(max(wanted) + 1):
            if not cap.grab():
                break
            if index in wanted:
                ok, frame = cap.retrieve()
                if ok:
                    yield frame
    finally:
        cap.release()


def _count_frames(cap) -> int:
    n = 0
    while cap.grab():
        n += 1
    return n


def read_calibration_images(path: str | os.PathLike, count: int, holdout_of: int | None = None) -> list[np.ndarray]:
    """Up to `count` BGR uint8 frames sampled evenly from an image folder or a video file.

    holdout_of=k: frames disjoint from the k calibration frames of the same source (for accuracy checks).
    """
    import cv2

    if count < 1:
        raise UserError(f"calibration count must be at least 1, got {count}.")
    kind, files = list_calibration_files(path)
    if kind == "video":
        frames = _read_video_frames(files[0], count, holdout_of)
    else:
        frames = []
        for i in _pick(len(files), count, holdout_of):
            img = cv2.imread(str(files[i]), cv2.IMREAD_COLOR)
            if img is None:
                raise UserError(f"cannot read calibration image {files[i]}.")
            frames.append(img)
    if not frames:
        raise UserError(f"no frames could be read from calibration source {path}.")
    return frames


def count_calibration_frames(path: str | os.PathLike, count: int, holdout_of: int | None = None) -> int:
    """How many frames iter_calibration_frames will yield at most (for progress bars), without decoding."""
    import cv2

    kind, files = list_calibration_files(path)
    if kind == "images":
        return len(_pick(len(files), count, holdout_of))
    cap = cv2.VideoCapture(str(files[0]))
    try:
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    finally:
        cap.release()
    return len(_pick(total, count, holdout_of)) if total > 0 else count  # no count stated: at most `count`


def iter_calibration_frames(
    source: str | os.PathLike | np.ndarray,
    count: int,
    size: tuple[int, int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    holdout_of: int | None = None,
) -> Iterator[np.ndarray]:
    """Preprocessed 3 x H x W float32 frames, decoded one at a time (memory independent of `count`).
    `source` may also be an N x 3 x H x W array (its first `count` frames are used)."""
    if isinstance(source, np.ndarray):
        yield from (np.asarray(f, np.float32) for f in source[:count])
        return
    if count < 1:
        raise UserError(f"calibration count must be at least 1, got {count}.")
    prep = preprocessor(size, mean, std)
    kind, files = list_calibration_files(source)
    produced = 0
    if kind == "video":
        frames = _iter_video_frames(files[0], count, holdout_of)
    else:
        frames = (_read_image(files[i]) for i in _pick(len(files), count, holdout_of))
    for frame in frames:
        produced += 1
        yield prep(frame).astype(np.float32, copy=False)
    if not produced:
        raise UserError(f"no frames could be read from calibration source {source}.")


def _read_image(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise UserError(f"cannot read calibration image {path}.")
    return img


def load_calibration_frames(
    path: str | os.PathLike,
    count: int,
    size: tuple[int, int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    holdout_of: int | None = None,
) -> np.ndarray:
    """Calibration inputs as an N x 3 x H x W float32 array (N <= count), `size` = (H, W) of the graph.

    holdout_of=k: instead, frames the k-frame calibration of the same source did not use.
    """
    prep = preprocessor(size, mean, std)
    frames = read_calibration_images(path, count, holdout_of)
    return np.stack([prep(f) for f in frames]).astype(np.float32, copy=False)


def source_fingerprint(source: str | os.PathLike | np.ndarray) -> dict:
    """What identifies a calibration source cheaply: file names, sizes and mtimes (no decoding),
    or the content hash of an in-memory array."""
    if isinstance(source, np.ndarray):
        digest = hashlib.sha256(np.ascontiguousarray(source).tobytes()).hexdigest()
        return {"kind": "array", "shape": list(source.shape), "dtype": str(source.dtype), "sha256": digest}
    kind, files = list_calibration_files(source)
    entries = []
    for f in files:
        st = f.stat()
        entries.append([f.name, st.st_size, st.st_mtime_ns])
    return {"kind": kind, "path": str(Path(source).resolve()), "files": entries}
