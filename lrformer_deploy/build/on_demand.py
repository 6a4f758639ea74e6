"""The runtime's one door into the build side: graphs it needs made while it runs.

The runtime (torch-free, below this package) asks for two things only, both lazily and both only when the
user gave no exported graph: the demo model's graph (`lrformer-infer` with no --model; the graph shipped in
the package, or, when that is missing or stale, exported once into the cache folder) and a temporary
graph of a `.pth` checkpoint (`--model model.pth` on ONNX Runtime).
Keeping both here, and nowhere else, is what lets tests/test_layers.py hold every other runtime import to
the layers below it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def demo_graph() -> Path:
    """The demo model's FP32 ONNX graph: the shipped one, else exported into the cache folder (needs torch)."""
    from lrformer_deploy.build.demo import default_model

    return Path(default_model())


def checkpoint_graph(model: Any, folder: Path, name: str, size: tuple[int, int]) -> tuple[Path, dict, Path]:
    """Export a loaded checkpoint `model` at `size` (mask head, batch 1) into `folder`:
    (graph, manifest dict, manifest path). Class names and palette come from the dataset its class count
    matches; the export is verified against PyTorch as every export is."""
    from lrformer_deploy.build.export import export_onnx
    from lrformer_deploy.data.datasets import dataset_for_num_classes

    kwargs: dict[str, Any] = {"size": tuple(size), "batch": 1, "head": "mask", "quiet": True}
    preset = dataset_for_num_classes(int(getattr(model, "num_classes", 0) or 0))
    if preset is not None:
        kwargs["dataset"] = preset
    variant = getattr(getattr(model, "cfg", None), "name", None)
    if variant:
        kwargs["variant"] = variant
    result = export_onnx(model, folder, name, **kwargs)
    return Path(result.onnx_path), dict(result.manifest), Path(result.manifest_path)
