"""Inputs: one image, a folder or glob of images, a video file, a webcam index, or a stream URL.

`open_source(text)` decides which from the text and the file system, and checks up front what can be
checked (file exists, not empty, decodable first frame) so that mistakes become one clear UserError
before any work starts. Images that fail to decode later do not stop a folder: they come through as
`Frame`s with `error` set, so the caller can finish the good ones and report the bad ones.
"""
from __future__ import annotations

import glob
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lrformer_deploy.contract import DEFAULT_RECONNECT_S, TRUNCATION_SLACK
from lrformer_deploy.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jp2"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp"}
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
DEFAULT_FPS = 25.0
STREAM_OPEN_TIMEOUT_MS = 10_000
STREAM_READ_TIMEOUT_MS = 5_000  # a stream silent this long counts as stopped (then --reconnect applies)


@dataclass
class Frame:
    index: int  # position in the input (frame number, or image number in a folder)
    stem: str  # name used for outputs: the image's stem, or the video's stem for every frame
    image: np.ndarray | None  # BGR uint8; None when the input could not be decoded
    path: Path | None = None
    error: str | None = None
    captured: float | None = None  # perf_counter when the frame was taken from the device (live sources)


class Source:
    """Base class: iterate `frames()`; `kind` is image, images, video, webcam or stream."""

    kind = "source"
    description = ""
    fps: float = DEFAULT_FPS
    frame_count: int | None = None  # None when unknown (live sources)
    stem = "output"
    # (frames read, frames the container promised) when a video ended before its stated length
    ended_early: tuple[int, int] | None = None
    gaps: int = 0  # live streams: outages bridged by reconnecting (--reconnect)
    lost: bool = False  # live streams: the stream stopped and did not come back within the reconnect time

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def interrupt(self) -> None:
        """Ask `frames()` to stop waiting (a reconnect in progress); called from another thread."""

    @property
    def is_video(self) -> bool:
        return self.kind in ("video", "webcam", "stream")

    @property
    def is_live(self) -> bool:
        """A webcam or a stream that states no length: frames arrive in real time whether or not we keep
        up, so the pipeline segments the newest and drops stale ones. A URL with a frame count is a file
        served over the network: every frame is kept, as for a local file."""
        return self.kind == "webcam" or (self.kind == "stream" and not self.frame_count)


def header_size(data: bytes | memoryview | os.PathLike | str) -> tuple[int, int] | None:
    """(height, width) from an image's header alone, without decoding its pixels; None when the header
    is not one Pillow reads (or Pillow is absent). cv2 cannot read a header without decoding the image."""
    try:
        import io
        import warnings

        from PIL import Image
    except ImportError:
        return None
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own DecompressionBombWarning: our limit decides
            with Image.open(source) as img:  # lazy: reads the header, decodes nothing
                width, height = img.size
    except Image.DecompressionBombError as exc:  # over twice Pillow's own limit: only the count is told
        m = re.search(r"\((\d+) pixels\)", str(exc))
        return (int(m.group(1)), 1) if m else (1 << 31, 1)
    except Exception:  # noqa: BLE001 - not a format Pillow knows, or a damaged header: no size to go by
        return None
    return int(height), int(width)


def pixels_over(height: int, width: int, max_pixels: int | None) -> str | None:
    """The reason an image of this size is refused before decoding, or None when it is within the cap."""
    if max_pixels and height * width > max_pixels:
        return (f"{describe_pixels(height, width)} is over the --max-pixels limit of {max_pixels} "
                f"(not decoded; raise --max-pixels to allow it)")
    return None


def describe_pixels(height: int, width: int) -> str:
    """'300x200 = 60000 pixels'; just the count when `header_size` only knew that (width 1)."""
    return f"{width}x{height} = {height * width} pixels" if width > 1 else f"{height * width} pixels"


def read_image(path: Path, max_pixels: int | None = None) -> tuple[np.ndarray | None, str | None]:
    """(BGR image, None) or (None, reason). Reads bytes first so every failure has a precise reason; an
    image whose header declares more than `max_pixels` pixels is refused without being decoded."""
    if max_pixels:
        size = header_size(path)
        if size is not None and (reason := pixels_over(*size, max_pixels)):
            return None, reason
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except PermissionError:
        return None, "permission denied"
    except IsADirectoryError:
        return None, "is a folder"
    except OSError as exc:
        return None, exc.strerror or exc.__class__.__name__
    if data.size == 0:
        return None, "empty file"
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        return None, "not a decodable image (corrupt or unsupported format)"
    return image, None


class ImageSource(Source):
    def __init__(self, paths: list[Path], kind: str, description: str, max_frames: int | None = None,
                 max_pixels: int | None = None) -> None:
        self.paths = paths[:max_frames] if max_frames else paths
        self.max_pixels = max_pixels
        self.kind = kind
        self.description = description
        self.frame_count = len(self.paths)
        self.stem = self.paths[0].stem if kind == "image" else Path(description).name

    def frames(self) -> Iterator[Frame]:
        for i, path in enumerate(self.paths):
            image, error = read_image(path, self.max_pixels)
            yield Frame(index=i, stem=path.stem, image=image, path=path, error=error)


class CaptureSource(Source):
    """Video file, webcam or stream through cv2.VideoCapture (FFmpeg backend for files and URLs).

    A live stream (no stated length) that stops or stalls is reopened with backoff for up to `reconnect`
    seconds after its last frame; frames then continue with the next index (`gaps` counts the outages
    bridged). One that does not come back ends the frames cleanly (`lost`)."""

    def __init__(self, target: str | int, kind: str, stem: str, max_frames: int | None = None,
                 reconnect: float = 0.0) -> None:
        import threading

        self.kind = kind
        self.stem = stem
        self.target = target
        self.description = str(target)
        self.max_frames = max_frames
        self.reconnect = float(reconnect or 0.0)
        self._interrupted = threading.Event()
        self.cap = self._open()
        if not self.cap.isOpened():
            self.cap.release()
            what = {"video": f"cannot open video {target}: not a video file, or a codec OpenCV cannot decode",
                    "webcam": f"cannot open webcam {target}",
                    "stream": f"cannot open stream {target} (unreachable, or a protocol OpenCV/FFmpeg cannot read)"}
            raise UserError(what[kind])
        ok, first = self.cap.read()
        if not ok or first is None:
            self.cap.release()
            raise UserError(f"{target} has no decodable frames" if kind == "video" else f"no frames from {kind} {target}")
        self._first = first
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and math.isfinite(fps) and 0 < fps < 1000 else DEFAULT_FPS
        count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if kind in ("video", "stream") else 0
        self.frame_count = count if count > 0 else None
        if self.frame_count and max_frames:
            self.frame_count = min(self.frame_count, max_frames)
        self.frame_size = first.shape[:2]

    def _open(self) -> cv2.VideoCapture:
        if self.kind != "stream":
            return cv2.VideoCapture(self.target)
        # Without a read timeout a stalled stream blocks in read() for as long as the server keeps the
        # connection open; with one, a stall is a failed read, which reconnecting handles.
        return cv2.VideoCapture(self.target, cv2.CAP_FFMPEG,
                                [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_OPEN_TIMEOUT_MS,
                                 cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_READ_TIMEOUT_MS])

    def frames(self) -> Iterator[Frame]:
        index = 0
        image = self._first
        self._first = None
        while image is not None:
            yield Frame(index=index, stem=self.stem, image=image)
            index += 1
            if self.max_frames and index >= self.max_frames:
                break
            ok, image = self.cap.read()
            if not ok:
                image = self._reconnect() if self.is_live and self.reconnect > 0 else None
        else:
            self._check_length(index)

    def _reconnect(self) -> np.ndarray | None:
        """Reopen the stream with exponential backoff until a frame comes or `reconnect` seconds pass."""
        import time

        deadline = time.monotonic() + self.reconnect
        delay = 0.25
        while not self._interrupted.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if self._interrupted.wait(min(delay, left)):
                break
            delay = min(delay * 2, 5.0)
            self.cap.release()
            self.cap = self._open()
            ok, image = self.cap.read() if self.cap.isOpened() else (False, None)
            if ok and image is not None:
                self.gaps += 1
                if image.shape[:2] != self.frame_size:  # the output video keeps the first size
                    image = cv2.resize(image, (self.frame_size[1], self.frame_size[0]), interpolation=cv2.INTER_AREA)
                return image
        self.lost = not self._interrupted.is_set()
        return None

    def interrupt(self) -> None:
        self._interrupted.set()

    def _check_length(self, read: int) -> None:
        # FFmpeg estimates the count of some containers from duration x fps, which can be one frame over;
        # more than that missing is a truncated or damaged file, not rounding.
        if self.kind in ("video", "stream") and self.frame_count and read < self.frame_count - TRUNCATION_SLACK:
            self.ended_early = (read, self.frame_count)

    def close(self) -> None:
        self.cap.release()


def _list_folder(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as it:
            entries = [Path(e.path) for e in it if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES]
    except PermissionError:
        raise UserError(f"cannot read folder {folder}: permission denied") from None
    except OSError as exc:
        raise UserError(f"cannot read folder {folder}: {exc.strerror or exc.__class__.__name__}") from None
    return sorted(entries)


def open_source(text: str | int, max_frames: int | None = None, max_pixels: int | None = None,
                reconnect: float | None = None) -> Source:
    """Open an input given as text (CLI argument) or an int webcam index. Images whose header declares
    more than `max_pixels` pixels are refused undecoded (a decompression bomb costs nothing). A live
    stream is reconnected for up to `reconnect` seconds (None: DEFAULT_RECONNECT_S; files: never)."""
    if isinstance(text, int):
        return CaptureSource(text, "webcam", f"webcam{text}", max_frames)
    text = str(text)
    if text.lower().startswith(STREAM_SCHEMES):
        return CaptureSource(text, "stream", "stream", max_frames,
                             DEFAULT_RECONNECT_S if reconnect is None else reconnect)
    path = Path(text).expanduser()
    if path.is_dir():
        images = _list_folder(path)
        if not images:
            raise UserError(f"no images in folder {path} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        return ImageSource(images, "images", str(path), max_frames, max_pixels)
    if path.exists():
        if not os.access(path, os.R_OK):
            raise UserError(f"cannot read {path}: permission denied")
        if path.stat().st_size == 0:
            raise UserError(f"input file is empty: {path}")
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            image, error = read_image(path, max_pixels)
            if error:
                raise UserError(f"cannot read image {path}: {error}")
            return ImageSource([path], "image", str(path))
        if suffix in VIDEO_SUFFIXES:
            return CaptureSource(str(path), "video", path.stem, max_frames)
        # Unknown extension: an image if it decodes as one, else try it as a video.
        image, error = read_image(path, max_pixels)
        if image is not None:
            return ImageSource([path], "image", str(path))
        if error and "--max-pixels" in error:
            raise UserError(f"cannot read image {path}: {error}")
        return CaptureSource(str(path), "video", path.stem, max_frames)
    if text.isdigit():
        return CaptureSource(int(text), "webcam", f"webcam{text}", max_frames)
    if any(ch in text for ch in "*?["):
        matches = [Path(p) for p in sorted(glob.glob(os.path.expanduser(text), recursive=True))]
        images = [p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise UserError(f"no images match {text}")
        return ImageSource(images, "images", _glob_root(text, images), max_frames, max_pixels)
    raise UserError(f"input not found: {text}")


def _glob_root(pattern: str, matches: list[Path]) -> str:
    """The folder a glob's matches share (used to name the default output folder)."""
    try:
        return os.path.commonpath([str(p.parent.resolve()) for p in matches])
    except ValueError:
        return str(Path(pattern).parent)
