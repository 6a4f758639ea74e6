"""Regenerate samples/synthetic-scenes.mp4: a short clip of procedural scenes (lrformer_deploy.data.synthetic).

    python samples/make_synthetic.py [--out samples/synthetic-scenes.mp4]

The clip is fully determined by the seed, so it can be rebuilt bit-for-bit by the same numpy/OpenCV.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from lrformer_deploy.data.synthetic import render_video

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "synthetic-scenes.mp4")
    parser.add_argument("--frames", type=int, default=84)
    parser.add_argument("--width", type=int, default=448)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--fps", type=float, default=12.0)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    path = render_video(args.out, args.frames, (args.height, args.width), args.fps, args.seed)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
