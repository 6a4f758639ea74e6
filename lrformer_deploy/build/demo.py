"""The project's demo model: a small LRFormer trained on synthetic scenes, shipped as package data.

Two files ship for it in `lrformer_deploy/weights/`: the checkpoint (`.pth`, for the export examples) and
its FP32 ONNX graph with manifest (made by `samples/ship_demo_graph.py` with the project's own build), so
that `lrformer-infer` with no --model runs on a runtime-only install, without torch.

`default_model()` returns the shipped graph while its manifest records the shipped checkpoint's sha256.
When the graph is missing or stale (a retrained checkpoint without a re-shipped graph), the checkpoint
is exported once into the cache folder instead (needs torch); that cache is keyed by the checkpoint's
sha256 too, so a retrained checkpoint is re-exported automatically.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from lrformer_deploy.cache import cache_dir
from lrformer_deploy.errors import UserError, require_torch

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
CHECKPOINT = WEIGHTS / "lrformer-demo-synthetic.pth"
PRESET = {"dataset": "synthetic", "size": (256, 448), "head": "mask"}
TARGET = "cpu"  # the shipped and cached graphs run on ONNX Runtime on the CPU: shaped for that target
NAME = "lrformer-demo-synthetic-256x448"
SHIPPED_GRAPH = WEIGHTS / f"{NAME}.onnx"


def _current(onnx_path: Path, checkpoint_sha256: str) -> bool:
    """True when `onnx_path` and its manifest exist, the manifest records `checkpoint_sha256`, and the
    graph is the one the manifest describes."""
    from lrformer_deploy import manifest as mf

    man_path = mf.manifest_path_for(onnx_path)
    if not (onnx_path.is_file() and man_path.is_file()):
        return False
    try:
        m = mf.load_manifest(man_path)
        return (m["model"].get("checkpoint_sha256") == checkpoint_sha256
                and m["artifacts"]["onnx"]["sha256"] == mf.sha256_file(onnx_path))
    except (UserError, KeyError, TypeError):
        return False  # a broken manifest is as good as none


def shipped_model() -> Path | None:
    """The graph shipped in the package, or None when it is missing or was not made from the shipped
    checkpoint (then it must not be used: its masks would not be the checkpoint's)."""
    from lrformer_deploy import manifest as mf

    if not CHECKPOINT.is_file():
        return None
    return SHIPPED_GRAPH if _current(SHIPPED_GRAPH, mf.sha256_file(CHECKPOINT)) else None


def build_request(out_dir: str | os.PathLike, *, quiet: bool = True):
    """The one BuildRequest that makes the demo graph: shipped, cached and re-made in tests alike."""
    from lrformer_deploy.build import BuildRequest

    return BuildRequest(checkpoint=CHECKPOINT, dataset=PRESET["dataset"], size=PRESET["size"],
                        head=PRESET["head"], target=TARGET, engine="off", output_dir=out_dir, name=NAME,
                        quiet=quiet)


def default_model(out_dir: str | os.PathLike | None = None) -> Path:
    """Path to the demo model's FP32 ONNX graph (mask head, 256x448).

    Without `out_dir`: the shipped graph when current, else one exported once into the cache folder.
    With `out_dir`: a graph exported into that folder (reused there while current).
    """
    from lrformer_deploy import manifest as mf

    if not CHECKPOINT.is_file():
        raise UserError(f"the demo checkpoint is missing from the installation ({CHECKPOINT})")
    if out_dir is None:
        shipped = shipped_model()
        if shipped is not None:
            return shipped
    out = Path(out_dir) if out_dir else cache_dir()
    onnx_path = out / f"{NAME}.onnx"
    if _current(onnx_path, mf.sha256_file(CHECKPOINT)):
        return onnx_path
    require_torch("the demo model's shipped graph is missing or older than its checkpoint, so it must be "
                  "exported once, which", alternative="or pass --model with an exported .onnx")
    from lrformer_deploy.build import build

    print(f"exporting the demo model to {onnx_path} (first use only)...", file=sys.stderr)
    build(build_request(out))
    return onnx_path
