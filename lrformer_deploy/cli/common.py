"""Argument helpers shared by the command-line tools."""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path


def parse_size(text: str) -> tuple[int, int]:
    """'512x1024' -> (512, 1024) as height x width; a single number means a square. Positive only."""
    m = re.fullmatch(r"\s*(-?\d+)\s*(?:[xX,]\s*(-?\d+))?\s*", str(text))
    if not m:
        raise argparse.ArgumentTypeError(f"size {text!r} is not HxW, e.g. 512x1024")
    h = int(m.group(1))
    w = int(m.group(2)) if m.group(2) is not None else h
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    return h, w


def parse_pixels(text: str) -> int:
    """'--max-pixels 16777216' or '4096x4096' -> a pixel count; 0 switches the cap off."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX*]\s*(\d+))?\s*", str(text))
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a pixel count (e.g. 16777216 or 4096x4096; 0 = no limit)")
    return int(m.group(1)) * (int(m.group(2)) if m.group(2) is not None else 1)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one `error:` line (exit 2) without the usage block, and takes
    options only as spelled: `--max-frame` is refused, not read silently as `--max-frames` (an
    abbreviation that works today stops working, or changes meaning, when an option is added)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"error: {message} (see --help)\n")


def writable_folder(folder: Path, flag: str) -> None:
    """Create `folder` (the output location given by `flag`) or fail with one clear UserError, before any work."""
    from lrformer_deploy.errors import UserError

    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag}: {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{flag}: cannot create folder {folder}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{flag}: cannot write to folder {folder}: permission denied")


def opacity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"opacity must be between 0 and 1, got {value}")
    return value


def quiet_decoders() -> None:
    # FFmpeg and OpenCV print their own warnings for broken inputs; ours are clearer and one line each.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
