"""LRFormer (encoder + LRHead) in plain PyTorch, with parameter names identical to the official
mmseg checkpoints (`backbone.*`, `decode_head.*`).

Everything runs in NCHW. The one place this differs from the official code is how Low-Resolution
Self-Attention pools: in eager mode it calls `adaptive_avg_pool2d` like the original; in static mode
(used for ONNX export) the same bins are computed as AveragePool when the grid divides the map, and
otherwise as two constant pooling matrices, so the graph has no data-dependent indexing at all.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lrformer_deploy.model.grids import adaptive_bins, lrsa_grid, pyramid_targets


@dataclass(frozen=True)
class LRFormerConfig:
    name: str
    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    head_channels: int
    num_heads: tuple[int, int, int, int] = (2, 4, 10, 16)
    mlp_ratios: tuple[int, int, int, int] = (8, 8, 4, 4)
    head_num_heads: int = 8
    head_mlp_ratio: int = 4
    query_target: int = 16        # q_pooled_size of every backbone stage
    head_query_target: int = 32   # q_pooled_size of the LRHead
    official: bool = True         # a paper variant (False: the project's own demo configuration)

    @property
    def pre_norm_blocks(self) -> tuple[int, ...]:
        # XL normalises before blocks 7 and 15 of stage 3 to keep FP16 training from overflowing.
        return (7, 15) if self.depths[2] > 20 else ()


VARIANTS: dict[str, LRFormerConfig] = {
    "T": LRFormerConfig("T", (48, 96, 240, 384), (2, 2, 6, 3), 256),
    "S": LRFormerConfig("S", (64, 128, 320, 512), (3, 3, 12, 3), 384),
    "B": LRFormerConfig("B", (80, 160, 400, 512), (4, 4, 15, 8), 512),
    "L": LRFormerConfig("L", (96, 192, 480, 640), (4, 6, 18, 8), 640),
    # The official XL is released with Mask2Former only; 768 head channels is this project's pairing.
    "XL": LRFormerConfig("XL", (128, 256, 640, 768), (4, 8, 22, 8), 768),
    # Small enough to train on a CPU in minutes; never presented as a paper variant. Its head pools
    # queries to 16 (not 32): the head's attention dominated CPU training time (about 2.5x per step).
    "demo": LRFormerConfig("demo", (32, 64, 96, 128), (1, 1, 2, 1), 64, num_heads=(1, 2, 3, 4),
                           mlp_ratios=(4, 4, 4, 4), head_num_heads=2, head_query_target=16, official=False),
}


def get_config(variant: str) -> LRFormerConfig:
    key = {k.lower(): k for k in VARIANTS}.get(str(variant).lower())
    if key is None:
        raise KeyError(f"unknown LRFormer variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[key]


# ----------------------------------------------------------------------------------------------
# Pooling and normalisation helpers
# ----------------------------------------------------------------------------------------------

def pooling_matrix(length: int, n: int, dtype=torch.float32) -> torch.Tensor:
    """n x length matrix whose rows average the adaptive-pooling bins (PyTorch's exact semantics).

    Built from a Python list so an exporter records one literal constant, not ops to fold.
    """
    rows = [[0.0] * length for _ in range(n)]
    for i, (a, b) in enumerate(adaptive_bins(length, n)):
        rows[i][a:b] = [1.0 / (b - a)] * (b - a)
    return torch.tensor(rows, dtype=dtype)


def static_adaptive_avg_pool2d(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """adaptive_avg_pool2d with shapes fixed at trace time: AveragePool or two constant MatMuls."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    oh, ow = size
    if (oh, ow) == (h, w):
        return x
    if h % oh == 0 and w % ow == 0:
        return F.avg_pool2d(x, kernel_size=(h // oh, w // ow))
    # Separable: averaging a rectangle = averaging its rows, then its columns.
    pw = pooling_matrix(w, ow, x.dtype).t()   # W x ow
    ph = pooling_matrix(h, oh, x.dtype)       # oh x H
    return torch.matmul(ph, torch.matmul(x, pw))


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (stays one LayerNormalization op in ONNX)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class GELU(nn.GELU):
    """Exact (erf) GELU. In static mode it is written as x * 0.5 * (1 + erf(x / sqrt 2)): the same
    function, in the operation order ONNX Runtime's Gelu fusion recognises (the exporter's own
    decomposition multiplies in another order and stays five separate ops)."""

    static = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.static:
            return x * 0.5 * (1.0 + torch.erf(x / 1.4142135623730951))
        return super().forward(x)


def _dwconv(c: int) -> nn.Conv2d:
    return nn.Conv2d(c, c, 3, 1, 1, groups=c)


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------

class LowResolutionAttention(nn.Module):
    """LRSA: attention computed on a fixed-size pooled query grid against pyramid-pooled keys/values,
    then bilinearly upsampled back to the feature map."""

    def __init__(self, dim: int, num_heads: int, query_target: int, conv_query: bool):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.query_target = query_target
        self.pyramid = pyramid_targets(query_target)
        self.conv_query = conv_query
        if conv_query:   # LRHead: 1x1 conv on the pooled NCHW map, Linear kv
            self.q = nn.Conv2d(dim, dim, 1)
            self.kv = nn.Linear(dim, dim * 2)
        else:            # backbone: the checkpoint names these q.0 / kv.0
            self.q = nn.Sequential(nn.Linear(dim, dim))
            self.kv = nn.Sequential(nn.Linear(dim, dim * 2))
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.static = False  # set by LRFormerSegmentor.set_static()

    def _pool(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.static:
            return static_adaptive_avg_pool2d(x, size)
        return F.adaptive_avg_pool2d(x, size)

    def forward(self, x: torch.Tensor, d_convs: nn.ModuleList | None = None) -> torch.Tensor:
        # Channels and size are static at export (grids are Python ints); the batch is never read, so a
        # dynamic-batch export needs no Shape op: reshapes take -1 for it.
        c, h, w = (int(d) for d in x.shape[1:])
        b = -1
        heads, hd = self.num_heads, c // self.num_heads
        qh, qw = lrsa_grid(h, w, self.query_target)

        q = self._pool(x, (qh, qw))
        if self.conv_query:
            q = self.q(q).flatten(2).transpose(1, 2)                  # B, Nq, C
        else:
            q = self.q(q.flatten(2).transpose(1, 2))
        q = q.reshape(b, qh * qw, heads, hd).transpose(1, 2) * self.scale

        levels = []
        for i, t in enumerate(self.pyramid):
            p = self._pool(x, lrsa_grid(h, w, t))
            if d_convs is not None:
                p = p + d_convs[i](p)
            levels.append(p.flatten(2))
        kv = self.kv(self.norm(torch.cat(levels, dim=2).transpose(1, 2)))   # B, Nk, 2C
        k, v = kv[..., :c], kv[..., c:]    # channel layout [k heads..., v heads...]
        nk = int(kv.shape[1])
        k = k.reshape(b, nk, heads, hd).transpose(1, 2)
        v = v.reshape(b, nk, heads, hd).transpose(1, 2)

        attn = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, qh * qw, c)
        out = self.proj(out).transpose(1, 2).reshape(b, c, qh, qw)
        if (qh, qw) == (h, w):
            return out
        return F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)


class InvertedResidualMLP(nn.Module):
    """fc1 (1x1) -> GELU -> h + dwconv(h) -> fc2 (1x1)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = GELU()
        self.conv = _dwconv(hidden)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(x))
        return self.fc2(x + self.conv(x))


class LRBlock(nn.Module):
    """x += cpe(x); x += ls1 * attn(norm1(x)); x += ls2 * mlp(norm2(x)), all NCHW.

    Backbone blocks use LayerNorm over channels; LRHead fuse blocks use BatchNorm2d.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, query_target: int, *,
                 head: bool = False, layer_scale: bool = False, pre_norm: bool = False):
        super().__init__()
        if pre_norm:
            self.pre_norm = nn.BatchNorm2d(dim)
        self.pre_norm_enabled = pre_norm
        self.cpe = _dwconv(dim)
        norm = nn.BatchNorm2d if head else (lambda d: ChannelLayerNorm(d, eps=1e-6))
        self.norm1 = norm(dim)
        self.attn = LowResolutionAttention(dim, num_heads, query_target, conv_query=head)
        self.norm2 = norm(dim)
        self.mlp = InvertedResidualMLP(dim, int(dim * mlp_ratio))
        self.layer_scale = layer_scale
        if layer_scale:
            self.layer_scale_1 = nn.Parameter(torch.full((dim,), 1e-6))
            self.layer_scale_2 = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor, d_convs: nn.ModuleList | None = None) -> torch.Tensor:
        if self.pre_norm_enabled:
            x = self.pre_norm(x)
        x = x + self.cpe(x)
        a = self.attn(self.norm1(x), d_convs)
        if self.layer_scale:
            a = self.layer_scale_1.view(1, -1, 1, 1) * a
        x = x + a
        m = self.mlp(self.norm2(x))
        if self.layer_scale:
            m = self.layer_scale_2.view(1, -1, 1, 1) * m
        return x + m


class Stem(nn.Module):
    """Stride-4 stem: conv-BN-GELU x3 + conv, then LayerNorm over channels (`patch_embed1`)."""

    def __init__(self, out_chans: int):
        super().__init__()
        half = out_chans // 2
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, half, 3, 2, 1), nn.BatchNorm2d(half), GELU(),
            nn.Conv2d(half, half, 3, 1, 1), nn.BatchNorm2d(half), GELU(),
            nn.Conv2d(half, out_chans, 3, 2, 1), nn.BatchNorm2d(out_chans), GELU(),
            nn.Conv2d(out_chans, out_chans, 3, 1, 1),
        )
        self.norm = ChannelLayerNorm(out_chans, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv1(x))


class PatchEmbed(nn.Module):
    """Overlapping stride-2 patch embedding between stages (`patch_embed2..4`)."""

    def __init__(self, in_chans: int, out_chans: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, out_chans, 3, 2, 1)
        self.norm = ChannelLayerNorm(out_chans, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class LRFormerEncoder(nn.Module):
    """The four-stage backbone; returns NCHW features at strides 4, 8, 16, 32."""

    def __init__(self, cfg: LRFormerConfig):
        super().__init__()
        dims = cfg.embed_dims
        self.patch_embed1 = Stem(dims[0])
        for i in range(1, 4):
            setattr(self, f"patch_embed{i + 1}", PatchEmbed(dims[i - 1], dims[i]))
        n_levels = len(pyramid_targets(cfg.query_target))
        for i in range(4):
            # One set of pyramid depthwise convs per stage, shared by all of that stage's blocks.
            setattr(self, f"d_convs{i + 1}", nn.ModuleList(_dwconv(dims[i]) for _ in range(n_levels)))
            setattr(self, f"block{i + 1}", nn.ModuleList(
                LRBlock(dims[i], cfg.num_heads[i], cfg.mlp_ratios[i], cfg.query_target,
                        layer_scale=i >= 2, pre_norm=(i == 2 and j in cfg.pre_norm_blocks))
                for j in range(cfg.depths[i])))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"patch_embed{i}")(x)
            d_convs = getattr(self, f"d_convs{i}")
            for blk in getattr(self, f"block{i}"):
                x = blk(x, d_convs)
            outs.append(x)
        return outs


class ConvBNReLU(nn.Module):
    """mmcv ConvModule with a norm: conv without bias, `bn`, ReLU."""

    def __init__(self, in_chans: int, out_chans: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class LRHead(nn.Module):
    """Decoder on stages 2-4: squeeze, fuse block, concat stage 4 again, squeeze, fuse block, classify.
    Returns logits at stride 8."""

    def __init__(self, cfg: LRFormerConfig, num_classes: int):
        super().__init__()
        in_chans = cfg.embed_dims[1:]
        ch = cfg.head_channels
        self.squeeze1 = ConvBNReLU(sum(in_chans), ch)
        self.fuse_block1 = LRBlock(ch, cfg.head_num_heads, cfg.head_mlp_ratio, cfg.head_query_target,
                                   head=True, layer_scale=True)
        self.squeeze2 = ConvBNReLU(ch + in_chans[-1], ch)
        self.fuse_block2 = LRBlock(ch, cfg.head_num_heads, cfg.head_mlp_ratio, cfg.head_query_target,
                                   head=True, layer_scale=True)
        self.conv_seg = nn.Conv2d(ch, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        s2, s3, s4 = feats[1], feats[2], feats[3]
        size = s2.shape[-2:]
        s3 = F.interpolate(s3, size=size, mode="bilinear", align_corners=False)
        s4 = F.interpolate(s4, size=size, mode="bilinear", align_corners=False)
        x = self.fuse_block1(self.squeeze1(torch.cat([s2, s3, s4], dim=1)))
        x = self.fuse_block2(self.squeeze2(torch.cat([x, s4], dim=1)))
        return self.conv_seg(x)


class LRFormerSegmentor(nn.Module):
    """Encoder + LRHead. `model(x)` returns decoder logits N x classes x H/8 x W/8."""

    def __init__(self, cfg: LRFormerConfig, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.backbone = LRFormerEncoder(cfg)
        self.decode_head = LRHead(cfg, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be a multiple of 32 on both sides")
        return self.decode_head(self.backbone(x))

    def set_static(self, static: bool = True) -> "LRFormerSegmentor":
        """Static pooling (AveragePool / constant MatMul) for export; eager uses adaptive_avg_pool2d."""
        for m in self.modules():
            if isinstance(m, (LowResolutionAttention, GELU)):
                m.static = static
        return self


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """mmseg's evaluation step: bilinear (align_corners=False) resize of the logits to the image size."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def logits_to_mask(logits: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Class ids (int32) from logits, upsampled to `size` first when given."""
    if size is not None and tuple(logits.shape[-2:]) != tuple(size):
        logits = upsample_logits(logits, size)
    return logits.argmax(dim=1).to(torch.int32)


class MaskHead(nn.Module):
    """Wraps a segmentor so its output is the class-id mask at the input size (export `--head mask`)."""

    def __init__(self, model: LRFormerSegmentor):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_to_mask(self.model(x), tuple(x.shape[-2:]))


def build_model(variant: str | LRFormerConfig, num_classes: int = 150) -> LRFormerSegmentor:
    cfg = variant if isinstance(variant, LRFormerConfig) else get_config(variant)
    return LRFormerSegmentor(cfg, num_classes).eval()
