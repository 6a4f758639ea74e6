"""The project's demo model: a small LRFormer trained on synthetic scenes, shipped as package data.

`default_model()` returns an ONNX graph of it, exporting the checkpoint once into a cache folder
(needs torch the first time; later runs need only ONNX Runtime). The cache is keyed by the
checkpoint's sha256, so a retrained checkpoint is re-exported automatically.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from lrformer_deploy.cache import cache_dir
from lrformer_deploy.errors import UserError

CHECKPOINT = Path(__file__).resolve().parent.parent / "weights" / "lrformer-demo-synthetic.pth"
PRESET = {"dataset": "synthetic", "size": (256, 448), "head": "mask"}
NAME = "lrformer-demo-synthetic-256x448"


def default_model(out_dir: str | os.PathLike | None = None) -> Path:
    """Path to the demo model's FP32 ONNX graph (mask head, 256x448), exported on first use."""
    from lrformer_deploy import manifest as mf

    if not CHECKPOINT.is_file():
        raise UserError(f"the demo checkpoint is missing from the installation ({CHECKPOINT})")
    out = Path(out_dir) if out_dir else cache_dir()
    onnx_path = out / f"{NAME}.onnx"
    want = mf.sha256_file(CHECKPOINT)
    man_path = mf.manifest_path_for(onnx_path)
    if onnx_path.is_file() and man_path.is_file():
        try:
            m = mf.load_manifest(man_path)
            if (m["model"].get("checkpoint_sha256") == want
                    and m["artifacts"]["onnx"]["sha256"] == mf.sha256_file(onnx_path)):
                return onnx_path
        except (UserError, KeyError):
            pass  # stale or broken cache: export again
    if importlib.util.find_spec("torch") is None:
        raise UserError("the demo model must be exported once, which needs torch "
                        "(pip install torch, or pass --model with an exported .onnx)")
    from lrformer_deploy.build import BuildRequest, build

    print(f"exporting the demo model to {onnx_path} (first use only)...", file=sys.stderr)
    # The cached graph runs on ONNX Runtime on the CPU: shape it for that target.
    build(BuildRequest(checkpoint=CHECKPOINT, dataset=PRESET["dataset"], size=PRESET["size"], head=PRESET["head"],
                       target="cpu", engine="off", output_dir=out, name=NAME, quiet=True))
    return onnx_path
