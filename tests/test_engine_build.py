"""TensorRT engine builder: clean refusal without TensorRT/GPU here; the real build only where both exist."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from lrformer_deploy import engine_build
from lrformer_deploy.engine_build import EngineUnavailable, build_engine, gpu_info
from lrformer_deploy.errors import UserError

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def toy_fp16(tmp_path_factory):
    pytest.importorskip("onnx")
    from lrformer_deploy.precision import convert_fp16
    from toy_graph import build_toy_segmenter

    folder = tmp_path_factory.mktemp("engine")
    fp32 = build_toy_segmenter(folder / "toy.onnx", size=(64, 64))
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    out = folder / "toy-fp16.onnx"
    convert_fp16(fp32, out, x)
    return out


def test_missing_onnx_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_engine(tmp_path / "none.onnx")


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_without_tensorrt_the_build_is_skipped_with_a_reason(toy_fp16):
    with pytest.raises(EngineUnavailable) as err:
        build_engine(toy_fp16, workspace_gib=1)
    assert "TensorRT" in err.value.reason
    assert not isinstance(err.value, UserError)  # the CLI prints "engine step skipped", not "error"
    assert not toy_fp16.with_suffix(".engine").exists()


def test_no_gpu_is_reported_as_unavailable(monkeypatch):
    monkeypatch.setattr(engine_build.shutil, "which", lambda name: None)
    with pytest.raises(EngineUnavailable, match="no NVIDIA GPU"):
        gpu_info()


def test_network_flags_follow_the_installed_enum():
    class Flags:  # TensorRT 10: STRONGLY_TYPED exists (value 1 in the Python enum); 11 may drop it
        STRONGLY_TYPED = 1

    class TRT10:
        NetworkDefinitionCreationFlag = Flags

    class TRT11:
        class NetworkDefinitionCreationFlag:
            pass

    assert engine_build._network_flags(TRT10) == 1 << 1
    assert engine_build._network_flags(TRT11) == 0


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_build_strongly_typed_engine_and_reuse_timing_cache(toy_fp16):
    pytest.importorskip("tensorrt")
    try:
        gpu_info()
    except EngineUnavailable as exc:
        pytest.skip(exc.reason)
    first = build_engine(toy_fp16, workspace_gib=1)
    engine = toy_fp16.with_suffix(".engine")
    assert engine.is_file() and first["file"] == engine.name
    assert first["build_options"]["strongly_typed"] and not first["build_options"]["timing_cache_reused"]
    assert toy_fp16.with_suffix(".timing-cache").is_file()
    second = build_engine(toy_fp16, workspace_gib=1)
    assert second["build_options"]["timing_cache_reused"]
    assert first["tensorrt"] and first["gpu"] and first["compute_capability"]


def test_gpu_info_parses_nvidia_smi_and_falls_back_for_old_drivers(monkeypatch):
    import subprocess

    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd[1])
        if "compute_cap" in cmd[1]:
            return subprocess.CompletedProcess(cmd, 2, "", 'Field "compute_cap" is not a valid field to query.')
        return subprocess.CompletedProcess(cmd, 0, "NVIDIA H200, 560.35.03, 143771 MiB\n", "")

    monkeypatch.setattr(engine_build.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(engine_build.subprocess, "run", fake_run)
    info = gpu_info()
    assert info["name"] == "NVIDIA H200" and info["driver"] == "560.35.03"
    assert info["compute_capability"] == "unknown" and len(calls) == 2


def test_gpu_info_with_no_device(monkeypatch):
    import subprocess

    monkeypatch.setattr(engine_build.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(engine_build.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 9, "", "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."))
    with pytest.raises(EngineUnavailable, match="no usable NVIDIA GPU"):
        gpu_info()
