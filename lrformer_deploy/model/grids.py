"""LRSA grid sizes, computed as plain Python integers (no torch).

The official code derives every pooled grid from the feature-map size at run time. For a static
export these sizes must be known when the graph is written, so they are computed here, with exactly
the official rounding (Python's round, +0.001), and handed to the model as integers.
"""
from __future__ import annotations

PYRAMID_BASE = (11, 8, 6, 4)  # pyramid targets for a query target of 16
_EPS = 0.001


def lrsa_grid(height: int, width: int, target: int) -> tuple[int, int]:
    """Pooled grid that keeps the aspect ratio of an H x W map, with `target` cells on the short side."""
    if width >= height:
        return target, round(width * float(target) / height + _EPS)
    return round(height * float(target) / width + _EPS), target


def pyramid_targets(query_target: int) -> tuple[int, ...]:
    """Pyramid pooling targets scaled from the base [11, 8, 6, 4] for a query target (16 -> same, 32 -> x2)."""
    return tuple(round(t * query_target / 16.0 + _EPS) for t in PYRAMID_BASE)


def adaptive_bins(length: int, n: int) -> list[tuple[int, int]]:
    """Bins of adaptive average pooling over `length` into `n` cells: [floor(i*L/n), ceil((i+1)*L/n)).

    n may exceed length; bins then repeat input cells, as torch's adaptive_avg_pool2d does.
    """
    return [((i * length) // n, -((-(i + 1) * length) // n)) for i in range(n)]


def stage_grids(height: int, width: int, query_target: int = 16, strides=(4, 8, 16, 32)) -> list[dict]:
    """Per backbone stage: feature size, query grid and pyramid grids for an input of height x width."""
    out = []
    for i, s in enumerate(strides):
        h, w = height // s, width // s
        out.append({
            "stage": i + 1,
            "feature": (h, w),
            "query": lrsa_grid(h, w, query_target),
            "pyramid": [lrsa_grid(h, w, t) for t in pyramid_targets(query_target)],
        })
    return out


def head_grids(height: int, width: int, query_target: int = 32) -> dict:
    """The LRHead's fuse blocks run at stride 8 with a query target of 32."""
    h, w = height // 8, width // 8
    return {
        "feature": (h, w),
        "query": lrsa_grid(h, w, query_target),
        "pyramid": [lrsa_grid(h, w, t) for t in pyramid_targets(query_target)],
    }
