"""What a batch job is asked to do: inputs expanded into images and videos, checked before Ray starts.

An argument may be an image or video file, a folder (its images and videos, not recursive), a glob
(quote it; `**` recurses), a text file listing one path per line (`.txt`/`.lst`/`.list`; blank lines and
`#` comments are skipped, relative paths are relative to the list), or any of these as a `file://` URI.
A path that does not exist is a user mistake (exit 2); a file that exists but cannot be decoded is a bad
input, reported in the run manifest while the rest completes (exit 1).
"""
from __future__ import annotations

import glob
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import cv2

from lrformer_deploy.errors import UserError
from lrformer_deploy.runtime.sources import DEFAULT_FPS, IMAGE_SUFFIXES, VIDEO_SUFFIXES, read_image

LIST_SUFFIXES = {".txt", ".lst", ".list"}
# Frames of one video decoded by one task: about this many bytes of decoded BGR per task, so a 4K video
# gets short tasks and a small one longer tasks; clamped to [MIN, MAX] frames.
TASK_BYTES = 64 << 20
MIN_TASK_FRAMES, MAX_TASK_FRAMES = 8, 256


@dataclass
class Item:
    """One input: an image, or a video split into frame ranges. `error` is set when it cannot be read."""

    path: str  # absolute local path (what Ray's readers and the manifest use)
    kind: str  # "image" or "video"
    stem: str
    frames: int = 1  # images: 1; videos: the container's frame count
    fps: float = DEFAULT_FPS
    size: tuple[int, int] = (0, 0)  # video frame height, width
    error: str | None = None
    ranges: list[tuple[int, int]] = field(default_factory=list)  # videos: (start, count) per task


def _local_path(text: str) -> Path:
    if "://" in text:
        url = urlparse(text)
        if url.scheme != "file":
            raise UserError(f"unsupported input {text}: lrformer-batch reads local paths and file:// URIs "
                            "(mount remote storage, or copy it, first)")
        if url.netloc not in ("", "localhost"):
            raise UserError(f"unsupported input {text}: file:// URIs must name a local path (file:///...)")
        return Path(unquote(url.path))
    return Path(text).expanduser()


def _media_kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return "image" if suffix in IMAGE_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES else None


def _folder_files(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as it:
            files = [Path(e.path) for e in it if e.is_file() and _media_kind(Path(e.name))]
    except OSError as exc:
        raise UserError(f"cannot read folder {folder}: {exc.strerror or exc.__class__.__name__}") from None
    if not files:
        raise UserError(f"no images or videos in folder {folder}")
    return sorted(files)


def _list_file(path: Path, seen: set[Path]) -> list[Path]:
    if path in seen:
        raise UserError(f"list file {path} includes itself")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read list file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    out: list[Path] = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry = line if "://" in line or os.path.isabs(os.path.expanduser(line)) else str(path.parent / line)
        out.extend(_expand(entry, seen | {path}))
    if not out:
        raise UserError(f"list file {path} names no inputs")
    return out


def _expand(text: str, seen: set[Path]) -> list[Path]:
    path = _local_path(text)
    if path.is_dir():
        return _folder_files(path)
    if path.is_file():
        if path.suffix.lower() in LIST_SUFFIXES:
            return _list_file(path.resolve(), seen)
        return [path]
    if any(ch in str(path) for ch in "*?["):
        matches = [Path(p) for p in sorted(glob.glob(str(path), recursive=True))]
        files = [p for p in matches if p.is_file() and _media_kind(p)]
        if not files:
            raise UserError(f"no images or videos match {text}")
        return files
    if path.exists():
        raise UserError(f"input is not a regular file or folder: {text}")
    raise UserError(f"input not found: {text}")


def probe_video(item: Item, task_frames: int | None = None) -> None:
    """Frame count, fps and size of a video, and its split into frame ranges; sets `item.error` instead
    of raising when the file is not a readable video (a bad input, not a user mistake)."""
    cap = cv2.VideoCapture(item.path)
    try:
        if not cap.isOpened():
            item.error = "cannot open video (corrupt, truncated, or a codec OpenCV cannot decode)"
            return
        ok, first = cap.read()
        if not ok or first is None:
            item.error = "no decodable frames"
            return
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = cap.get(cv2.CAP_PROP_FPS)
    finally:
        cap.release()
    if count <= 0:
        # Without a frame count the frames cannot be split up front: one task reads to the end.
        count = 0
    item.fps = fps if fps and math.isfinite(fps) and 0 < fps < 1000 else DEFAULT_FPS
    item.size = first.shape[:2]
    item.frames = count
    if task_frames is None:
        task_frames = TASK_BYTES // max(1, first.size)
    task_frames = max(MIN_TASK_FRAMES, min(MAX_TASK_FRAMES, task_frames))
    if count == 0:
        item.ranges = [(0, 0)]
    else:
        item.ranges = [(s, min(task_frames, count - s)) for s in range(0, count, task_frames)]


def plan_inputs(args: list[str], task_frames: int | None = None) -> list[Item]:
    """Expand the command line's inputs into Items (deduplicated, in order); videos are probed.

    Raises UserError for missing paths, empty folders/globs/lists and two inputs that would write the
    same output names."""
    items: list[Item] = []
    known: set[str] = set()
    for text in args:
        for path in _expand(str(text), set()):
            resolved = str(path.resolve())
            if resolved in known:
                continue
            known.add(resolved)
            kind = _media_kind(path) or _sniff(path)
            items.append(Item(path=resolved, kind=kind, stem=path.stem))
    _check_names(items)
    for item in items:
        if not os.access(item.path, os.R_OK):
            item.error = "permission denied"
        elif os.path.getsize(item.path) == 0:
            item.error = "empty file"
        elif item.kind == "video":
            probe_video(item, task_frames)
    return items


def _sniff(path: Path) -> str:
    # An explicit file with an unknown suffix: an image if it decodes as one, else try it as a video.
    image, _ = read_image(path)
    return "image" if image is not None else "video"


_FRAME_NAME = re.compile(r"^(.*)_(\d{6})$")


def _check_names(items: list[Item]) -> None:
    """Outputs are named by stem (as lrformer-infer names them), so stems must not collide."""
    owner: dict[str, str] = {}
    for item in items:
        key = ("video:" if item.kind == "video" else "") + item.stem
        other = owner.setdefault(key, item.path)
        if other != item.path:
            raise UserError(f"two inputs would write the same outputs ({item.stem!r}): {other} and {item.path}; "
                            "rename one or run them separately")
    for item in items:
        m = _FRAME_NAME.match(item.stem)
        if item.kind == "image" and m and f"video:{m.group(1)}" in owner:
            raise UserError(f"image {item.path} has the name of a frame mask of video {owner['video:' + m.group(1)]}; "
                            "rename one or run them separately")
    stems = {item.stem for item in items if item.kind == "image"}
    for item in items:
        if item.kind == "video" and item.stem in stems:
            # <stem>_seg.png (image overlay) and <stem>_seg.mp4 differ, but the manifest and users would not.
            raise UserError(f"an image and a video share the name {item.stem!r}; rename one or run them separately")
