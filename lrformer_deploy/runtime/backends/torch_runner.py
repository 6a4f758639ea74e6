"""PyTorch backend: runs an LRFormer checkpoint directly (torch imported only when this runner activates).

The module returns stride-8 logits (N x C x H/8 x W/8), so a spec built by `checkpoint_spec` declares
output kind "logits" and postprocessing upsamples + argmaxes on the host, like mmseg's evaluation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lrformer_deploy.errors import UserError, missing_package
from lrformer_deploy.runtime.backends.base import Runner


def import_torch():
    try:
        import torch
    except ImportError:
        raise UserError(missing_package("torch", "a .pth model") + "; or export the checkpoint to ONNX with "
                        "lrformer-export on a machine that has it") from None
    return torch


def load_checkpoint_model(checkpoint: str | Path) -> Any:
    """The nn.Module of a checkpoint, through the package's loader (which infers variant and classes)."""
    import_torch()
    try:
        from lrformer_deploy.model.checkpoint import load_checkpoint
    except ImportError as exc:
        raise UserError(f"cannot load checkpoints: lrformer_deploy.model.checkpoint is unavailable ({exc})") from None
    return load_checkpoint(str(checkpoint), verbose=False)


class TorchRunner(Runner):
    thread_safe = False  # module forward on a shared device is not worth racing; callers serialise

    def __init__(self, checkpoint: str | Path | None = None, model: Any = None, device: str | None = None,
                 output_name: str = "logits") -> None:
        super().__init__()
        if checkpoint is None and model is None:
            raise ValueError("TorchRunner needs a checkpoint path or a model")
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.model = model
        self.device_str = device
        self.output_name = output_name
        self.name = "torch"

    def _activate(self) -> None:
        torch = import_torch()
        dev = (self.device_str or "auto").lower()
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device {self.device_str!r} asked for, but torch sees no CUDA GPU")
        self.device = torch.device(dev)
        if self.model is None:
            self.model = load_checkpoint_model(self.checkpoint)
        self.model = self.model.to(self.device).eval()
        self.name = f"torch[{self.device}]"

    def _deactivate(self) -> None:
        if self.checkpoint is not None:
            self.model = None

    def infer(self, feed: dict[str, Any]) -> dict[str, np.ndarray]:
        torch = import_torch()
        (value,) = feed.values()
        x = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
        with torch.inference_mode():
            out = self.model(x.to(self.device, dtype=torch.float32))
        return {self.output_name: out.float().cpu().numpy()}
