"""Regenerate the demo model's shipped ONNX graph and manifest from the shipped checkpoint.

    python samples/ship_demo_graph.py

Exports lrformer_deploy/weights/lrformer-demo-synthetic.pth with the project's own build (the one
BuildRequest of lrformer_deploy.build.demo: target cpu, 256x448, mask head) and writes
lrformer_deploy/weights/lrformer-demo-synthetic-256x448.{onnx,json}, which `lrformer-infer` with no
--model runs without torch. Run it after retraining the checkpoint (samples/train_demo.py): the shipped
manifest records the checkpoint's sha256, and tests/test_demo_model.py fails until the graph is re-shipped.
Needs the export extra (torch).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from lrformer_deploy import atomic
from lrformer_deploy.build import build
from lrformer_deploy.build import demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--out", type=Path, default=demo.WEIGHTS, help="folder to write into (default: the package's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ship-demo-") as tmp:
        result = build(demo.build_request(tmp, quiet=False))
        art = result.artifacts["fp32"]
        # The graph first, then the manifest that vouches for it: an interrupted run leaves a stale pair,
        # which demo.shipped_model() refuses (sha256 mismatch), never a manifest for a graph not written.
        for src in (Path(art.onnx), Path(art.manifest_path)):
            atomic.write_bytes(args.out / src.name, src.read_bytes())
            print(f"wrote {args.out / src.name} ({src.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
