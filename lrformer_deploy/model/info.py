"""Parameters, multiply-accumulates and LRSA grids of an LRFormer at a given input size."""
from __future__ import annotations

import copy

import torch
from torch.utils.flop_counter import FlopCounterMode

from lrformer_deploy.model.grids import head_grids, stage_grids
from lrformer_deploy.model.lrformer import LRFormerSegmentor


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: LRFormerSegmentor, size: tuple[int, int], batch: int = 1) -> int:
    """Multiply-accumulates of convolutions and matrix products (torch's flop counter / 2), eager mode,
    i.e. with the original adaptive pooling, so the figure is comparable with the paper's."""
    # On the meta device: shapes only, so any size is counted without allocating its activations.
    meta = copy.deepcopy(model).to("meta")
    x = torch.zeros(batch, 3, *size, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(x)
    return counter.get_total_flops() // 2


def model_info(model: LRFormerSegmentor, size: tuple[int, int]) -> dict:
    h, w = size
    macs = count_macs(model, size)
    return {
        "variant": model.cfg.name,
        "num_classes": model.num_classes,
        "size": [h, w],
        "params": count_params(model),
        "params_m": round(count_params(model) / 1e6, 2),
        "macs": macs,
        "gmacs": round(macs / 1e9, 3),
        "embed_dims": list(model.cfg.embed_dims),
        "depths": list(model.cfg.depths),
        "head_channels": model.cfg.head_channels,
        "grids": {"backbone": stage_grids(h, w, model.cfg.query_target),
                  "head": head_grids(h, w, model.cfg.head_query_target)},
    }
