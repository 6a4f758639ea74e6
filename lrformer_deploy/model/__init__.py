"""LRFormer in PyTorch: the network (lrformer.py), official checkpoints (checkpoint.py), LRSA grid sizes
(grids.py, no torch) and parameter/MAC counts (info.py).

Names are loaded on first use, so `lrformer_deploy.model.grids` (plain Python) never imports torch.
"""
from __future__ import annotations

from lrformer_deploy.lazy import lazy_exports

_EXPORTS = {
    "LRFormerConfig": "lrformer_deploy.model.lrformer",
    "LRFormerSegmentor": "lrformer_deploy.model.lrformer",
    "MaskHead": "lrformer_deploy.model.lrformer",
    "VARIANTS": "lrformer_deploy.model.lrformer",
    "build_model": "lrformer_deploy.model.lrformer",
    "get_config": "lrformer_deploy.model.lrformer",
    "logits_to_mask": "lrformer_deploy.model.lrformer",
    "upsample_logits": "lrformer_deploy.model.lrformer",
    "checkpoint_filter_fn": "lrformer_deploy.model.checkpoint",
    "load_checkpoint": "lrformer_deploy.model.checkpoint",
    "save_checkpoint": "lrformer_deploy.model.checkpoint",
    "model_info": "lrformer_deploy.model.info",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
