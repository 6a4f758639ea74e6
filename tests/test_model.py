"""The PyTorch definition: official grid rounding, exact adaptive-pool semantics, size of each variant."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lrformer_deploy.model.grids import adaptive_bins, lrsa_grid, pyramid_targets, stage_grids
from lrformer_deploy.model.info import count_macs, count_params
from lrformer_deploy.model.lrformer import VARIANTS, build_model, static_adaptive_avg_pool2d


@pytest.mark.parametrize("hw,target,expected", [
    ((128, 128), 16, (16, 16)),
    ((64, 128), 16, (16, 32)),
    ((60, 80), 16, (16, 21)),      # 80*16/60 = 21.33 -> 21
    ((80, 60), 16, (21, 16)),
    ((15, 20), 16, (16, 21)),      # grid larger than the map
    ((64, 96), 11, (11, 17)),      # 16.5 + 0.001 rounds up: the +eps matters at exact halves
    ((8, 8), 16, (16, 16)),
])
def test_grid_rounding_matches_official_rule(hw, target, expected):
    assert lrsa_grid(*hw, target) == expected


def test_pyramid_targets():
    assert pyramid_targets(16) == (11, 8, 6, 4)
    assert pyramid_targets(32) == (22, 16, 12, 8)


def test_adaptive_bins_match_torch_definition():
    # Bin i of n over L spans [floor(i*L/n), ceil((i+1)*L/n)); check against torch on an index ramp.
    for length, n in [(16, 11), (8, 16), (15, 4), (7, 7), (5, 22)]:
        x = torch.arange(length, dtype=torch.float64).view(1, 1, 1, length)
        pooled = F.adaptive_avg_pool2d(x, (1, n)).flatten().tolist()
        expect = [sum(range(a, b)) / (b - a) for a, b in adaptive_bins(length, n)]
        assert pooled == pytest.approx(expect, abs=1e-12)


@pytest.mark.parametrize("hw,out", [
    ((128, 128), (16, 16)),   # divides: AveragePool
    ((16, 16), (11, 11)),     # does not divide: pooling matrices
    ((15, 20), (16, 21)),     # grid larger than the map
    ((8, 8), (22, 22)),
    ((60, 80), (6, 8)),       # one side divides, not the other
    ((32, 64), (16, 32)),
])
def test_static_pooling_equals_adaptive_avg_pool2d(hw, out):
    x = torch.randn(2, 5, *hw, dtype=torch.float64)
    ref = F.adaptive_avg_pool2d(x, out)
    got = static_adaptive_avg_pool2d(x, out)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-12, rtol=0)


def test_static_mode_equals_eager_model():
    model = build_model("demo", 7)
    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        eager = model(x)
        static = model.set_static(True)(x)
    model.set_static(False)
    assert torch.allclose(eager, static, atol=1e-5)
    assert eager.shape == (1, 7, 12, 20)


@pytest.mark.parametrize("variant,params_m", [("T", 13.26), ("S", 32.22), ("B", 67.51), ("L", 110.98)])
def test_parameter_counts_match_reference(variant, params_m):
    assert round(count_params(build_model(variant, 150)) / 1e6, 2) == params_m


def test_gmacs_of_t_at_512_match_reference():
    assert round(count_macs(build_model("T", 150), (512, 512)) / 1e9, 1) == 16.5


def test_stage_grids_at_small_input_exceed_feature_map():
    grids = stage_grids(256, 256)
    assert grids[3]["feature"] == (8, 8) and grids[3]["query"] == (16, 16)


def test_xl_has_pre_norm_only_on_blocks_7_and_15():
    names = [k for k in build_model("XL", 150).state_dict() if ".pre_norm.weight" in k]
    assert names == ["backbone.block3.7.pre_norm.weight", "backbone.block3.15.pre_norm.weight"]


def test_input_size_must_be_multiple_of_32():
    with pytest.raises(ValueError, match="multiple of 32"):
        build_model("demo", 3)(torch.zeros(1, 3, 100, 96))


def test_official_parameter_names():
    keys = set(build_model("T", 150).state_dict())
    for k in ["backbone.patch_embed1.conv1.0.weight", "backbone.patch_embed1.conv1.9.bias",
              "backbone.patch_embed1.norm.weight", "backbone.patch_embed2.proj.weight",
              "backbone.d_convs1.3.weight", "backbone.block1.0.cpe.weight",
              "backbone.block1.0.attn.q.0.weight", "backbone.block1.0.attn.kv.0.bias",
              "backbone.block1.0.attn.proj.weight", "backbone.block1.0.attn.norm.weight",
              "backbone.block1.0.mlp.fc1.weight", "backbone.block1.0.mlp.conv.weight",
              "backbone.block3.0.layer_scale_1", "decode_head.squeeze1.conv.weight",
              "decode_head.squeeze1.bn.running_var", "decode_head.fuse_block1.attn.q.weight",
              "decode_head.fuse_block1.norm1.running_mean", "decode_head.fuse_block2.layer_scale_2",
              "decode_head.squeeze2.bn.weight", "decode_head.conv_seg.weight"]:
        assert k in keys, k
    assert not any("block1.0.layer_scale" in k for k in keys)   # stages 1-2 have no layer scale
    assert build_model("T", 150).state_dict()["decode_head.fuse_block1.attn.q.weight"].dim() == 4
    assert set(VARIANTS) == {"T", "S", "B", "L", "XL", "demo"}
