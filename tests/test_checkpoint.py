"""Checkpoint loading as users have them: mmseg dicts, bare state dicts, module. prefixes, aux heads."""
from __future__ import annotations

import pickle

import pytest
import torch

import lrformer_deploy
from lrformer_deploy.model.checkpoint import load_checkpoint
from lrformer_deploy.errors import UserError
from ckpt_factory import randomized_model, write_official_checkpoint


@pytest.fixture(scope="module")
def demo_model():
    return randomized_model("demo", 6, seed=3)


@pytest.mark.parametrize("wrap", ["mmseg", "bare", "module"])
def test_round_trip_in_every_layout(tmp_path, demo_model, wrap):
    path = write_official_checkpoint(tmp_path / "m.pth", demo_model, wrap=wrap)
    loaded = lrformer_deploy.load_checkpoint(path)     # the public API
    assert loaded.cfg.name == "demo" and loaded.num_classes == 6 and not loaded.training
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(loaded(x), demo_model(x))


def test_auxiliary_head_is_ignored_with_a_note(tmp_path, demo_model, capsys):
    path = write_official_checkpoint(tmp_path / "aux.pth", demo_model, aux_head=True)
    load_checkpoint(path)
    assert "auxiliary_head" in capsys.readouterr().err


def test_variant_and_classes_detected_for_official_t(tmp_path):
    model = randomized_model("T", 19)
    path = write_official_checkpoint(tmp_path / "t.pth", model)
    loaded = load_checkpoint(path)
    assert loaded.cfg.name == "T" and loaded.num_classes == 19


def test_forced_wrong_variant_is_reported(tmp_path, demo_model):
    path = write_official_checkpoint(tmp_path / "m.pth", demo_model)
    with pytest.raises(UserError, match="not LRFormer-S"):
        load_checkpoint(path, variant="S")
    with pytest.raises(UserError, match="6 classes, not 150"):
        load_checkpoint(path, num_classes=150)


def test_missing_and_mismatched_tensors_are_named(tmp_path, demo_model):
    state = dict(demo_model.state_dict())
    del state["backbone.block2.0.attn.proj.weight"]
    state["backbone.block1.0.cpe.bias"] = torch.zeros(5)
    torch.save({"state_dict": state}, tmp_path / "broken.pth")
    with pytest.raises(UserError) as err:
        load_checkpoint(tmp_path / "broken.pth")
    msg = str(err.value)
    assert "backbone.block2.0.attn.proj.weight" in msg and "backbone.block1.0.cpe.bias" in msg
    assert "\n" not in msg


def test_unexpected_tensor_is_named(tmp_path, demo_model):
    state = dict(demo_model.state_dict())
    state["backbone.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(UserError, match="backbone.extra.weight"):
        load_checkpoint(tmp_path / "extra.pth")


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoint_never_executes_code(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Payload()}, f)
    with pytest.raises(UserError):
        load_checkpoint(path)
    assert "code ran" not in capsys.readouterr().out


@pytest.mark.parametrize("content,match", [(None, "not found"), (b"", "empty"), (b"hello, not a model\n", "not")])
def test_not_a_checkpoint(tmp_path, content, match):
    path = tmp_path / "x.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=match):
        load_checkpoint(path)


def test_not_an_lrformer_state_dict(tmp_path):
    torch.save({"state_dict": {"conv.weight": torch.zeros(3, 3, 1, 1)}}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not an LRFormer"):
        load_checkpoint(tmp_path / "other.pth")


def test_pickled_module_is_refused_in_one_short_line_without_weights_only(tmp_path):
    path = tmp_path / "whole-model.pth"
    torch.save(torch.nn.Conv2d(3, 3, 1), path)  # the whole module pickled, not its state_dict
    with pytest.raises(UserError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "state_dict" in message and "weights_only" not in message and "\n" not in message
    assert len(message) < 130 + len(str(path))
