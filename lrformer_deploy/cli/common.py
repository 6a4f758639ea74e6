"""Argument helpers shared by the command-line tools."""
from __future__ import annotations

import argparse
import re


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


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one `error:` line (exit 2) without the usage block."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"error: {message} (see --help)\n")
