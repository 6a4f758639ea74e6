"""Load LRFormer checkpoints the way users have them (mmseg files, bare state dicts, DDP prefixes).

Loading never executes code (`torch.load(weights_only=True)`), detects the variant and the number of
classes from tensor shapes, and is strict: any missing or mis-shaped tensor is named in one message.
"""
from __future__ import annotations

import pickle
import re
import sys
from collections import OrderedDict
from pathlib import Path

import torch

from lrformer_deploy.errors import UserError
from lrformer_deploy.model.lrformer import VARIANTS, LRFormerConfig, LRFormerSegmentor, build_model, get_config

# Keys that belong to training only and are dropped with a note.
_TRAINING_ONLY_PREFIXES = ("auxiliary_head.",)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The model tensors of a checkpoint file, unwrapped from `state_dict`/`model` and `module.`."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise UserError(f"checkpoint is not a file: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint is empty: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses arbitrary classes: say so instead of executing them.
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            # Not torch's own text: it suggests weights_only=False, i.e. running the file's code.
            raise UserError(f"{path} holds Python objects besides tensors (a pickled model?); save its "
                            "weights only: torch.save(model.state_dict(), 'model.pth')") from None
        raise UserError(f"{path} is not a PyTorch checkpoint (a .pth holding the model's state_dict)") from None
    except Exception as exc:  # the unpickler fails in many ways on non-checkpoints (KeyError, EOFError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({first})") from None

    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} does not contain a state dict of tensors")

    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return OrderedDict(obj)


def detect_config(state: dict[str, torch.Tensor]) -> tuple[LRFormerConfig, int]:
    """(config, num_classes) from tensor shapes: embed dims, block counts and head width."""
    try:
        dims = (state["backbone.patch_embed1.conv1.9.weight"].shape[0],
                *(state[f"backbone.patch_embed{i}.proj.weight"].shape[0] for i in (2, 3, 4)))
        head_ch = state["decode_head.squeeze1.conv.weight"].shape[0]
        num_classes = state["decode_head.conv_seg.weight"].shape[0]
    except KeyError as exc:
        raise UserError(f"not an LRFormer segmentation checkpoint: tensor {exc.args[0]} is missing") from None
    depths = []
    for i in range(1, 5):
        pat = re.compile(rf"^backbone\.block{i}\.(\d+)\.")
        ids = {int(m.group(1)) for k in state if (m := pat.match(k))}
        depths.append(max(ids) + 1 if ids else 0)
    for cfg in VARIANTS.values():
        if cfg.embed_dims == tuple(dims) and cfg.depths == tuple(depths) and cfg.head_channels == head_ch:
            return cfg, int(num_classes)
    raise UserError(f"unknown LRFormer configuration: embed dims {tuple(dims)}, depths {tuple(depths)}, "
                    f"head channels {head_ch} (known: {', '.join(VARIANTS)})")


def checkpoint_filter_fn(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map a checkpoint onto this model's names; returns (tensors to load, dropped key prefixes)."""
    kept, dropped = OrderedDict(), set()
    for k, v in state.items():
        prefix = next((p for p in _TRAINING_ONLY_PREFIXES if k.startswith(p)), None)
        if prefix:
            dropped.add(prefix.rstrip("."))
        else:
            kept[k] = v
    return kept, sorted(dropped)


def _describe(cfg: LRFormerConfig) -> str:
    return f"LRFormer-{cfg.name} (embed dims {cfg.embed_dims}, depths {cfg.depths})"


def load_state_into(model: LRFormerSegmentor, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load: every model tensor present with the right shape, nothing unexpected."""
    expected = model.state_dict()
    # Old BatchNorm files lack the step counter; it does not affect inference.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and state[k].shape != v.shape]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            shown = ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise UserError(f"{source} does not match the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)


def load_checkpoint(path: str | Path, variant: str | None = None, num_classes: int | None = None,
                    verbose: bool = True) -> LRFormerSegmentor:
    """Load an LRFormer segmentation checkpoint and return the model in eval mode.

    variant / num_classes are detected from the tensors when not given; when given they must agree.
    """
    state = read_state_dict(path)
    state, dropped = checkpoint_filter_fn(state)
    detected, detected_classes = detect_config(state)
    if variant is not None:
        try:
            wanted = get_config(variant)
        except KeyError as exc:
            raise UserError(str(exc.args[0])) from None
        if wanted != detected:
            raise UserError(f"{path} is {_describe(detected)}, not LRFormer-{wanted.name} as requested")
    if num_classes is not None and num_classes != detected_classes:
        raise UserError(f"{path} has {detected_classes} classes, not {num_classes} as requested")
    model = build_model(detected, detected_classes)
    load_state_into(model, state, source=str(path))
    if dropped and verbose:
        print(f"note: ignored {', '.join(dropped)} tensors (training only)", file=sys.stderr)
    return model.eval()


def save_checkpoint(model: LRFormerSegmentor, path: str | Path, meta: dict | None = None) -> None:
    """Write a checkpoint in the official mmseg layout: {'meta': ..., 'state_dict': ...}."""
    torch.save({"meta": dict(meta or {}), "state_dict": model.state_dict()}, path)
