"""Checkpoints written in the official mmseg layout with weights that make attention bugs visible.

Default layer scales (1e-6) would mute the attention and MLP branches of stages 3-4 and the head, so a
broken LRSA could still match; random layer scales and BatchNorm statistics make every branch count.
"""
from __future__ import annotations

from pathlib import Path

import torch

from lrformer_deploy.model.checkpoint import save_checkpoint
from lrformer_deploy.model.lrformer import build_model


def randomized_model(variant: str = "T", num_classes: int = 150, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(variant, num_classes)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_scale" in name:
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.1)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.num_batches_tracked.fill_(1000)
    return model.eval()


def write_official_checkpoint(path: Path, model, *, wrap: str = "mmseg", aux_head: bool = False) -> Path:
    """wrap: 'mmseg' -> {'meta','state_dict'}; 'bare' -> state dict; 'module' -> DDP 'module.' prefix."""
    state = dict(model.state_dict())
    if aux_head:  # an FCN auxiliary head, as mmseg training configs often carry
        state["auxiliary_head.conv_seg.weight"] = torch.randn(model.num_classes, 256, 1, 1)
        state["auxiliary_head.conv_seg.bias"] = torch.zeros(model.num_classes)
    if wrap == "module":
        state = {f"module.{k}": v for k, v in state.items()}
    if wrap == "bare":
        torch.save(state, path)
    elif wrap in ("mmseg", "module"):
        meta = {"mmseg_version": "1.2.2", "epoch": 0, "iter": 160000,
                "dataset_meta": {"classes": [f"c{i}" for i in range(model.num_classes)]}}
        torch.save({"meta": meta, "state_dict": state}, path)
    else:
        raise ValueError(wrap)
    return path


__all__ = ["randomized_model", "write_official_checkpoint", "save_checkpoint"]
