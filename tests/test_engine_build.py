"""TensorRT engine builder: clean refusal without TensorRT/GPU here; the real build only where both exist."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from lrformer_deploy.build import engine as engine_build
from lrformer_deploy.build.engine import EngineUnavailable, build_engine, gpu_info
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
    first = build_engine(toy_fp16, workspace_gib=1)
    engine = toy_fp16.with_suffix(".engine")
    assert engine.is_file() and first["file"] == engine.name
    assert first["build_options"]["strongly_typed"] and not first["build_options"]["timing_cache_reused"]
    # Defect 2: the cache is named by the record (TensorRT version, GPU, compute capability), not guessed.
    cache = toy_fp16.with_name(first["build_options"]["timing_cache"])
    assert cache.is_file() and cache.name.endswith(".timing-cache")
    assert toy_fp16.with_name(first["layers"]["report"]).is_file() and first["layers"]["total"] > 0
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


# --- Around TensorRT, with a recording fake module (call order and return-value handling, not TensorRT) ---

from fake_tensorrt import FakeMemory, Recorder, make_trt  # noqa: E402


@pytest.fixture
def fake_build(tmp_path, monkeypatch):
    """build_engine against a fake `tensorrt` and a fake CUDA provider; returns (run, log, onnx path)."""
    from lrformer_deploy.runtime.backends import cuda as cuda_backend

    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"graph")
    log = Recorder()
    smi = {"name": "NVIDIA H200", "compute_capability": "9.0", "driver": "560.35.03", "memory": "", "count": 2}
    monkeypatch.setattr(engine_build, "gpu_info", lambda: dict(smi))
    monkeypatch.setattr(cuda_backend, "make_memory", lambda dev, prefer: FakeMemory(log, "NVIDIA A100", (8, 0)))

    def run(trt_kwargs=None, **kw):
        monkeypatch.setattr(engine_build, "_import_tensorrt", lambda: make_trt(log, **(trt_kwargs or {})))
        return build_engine(onnx, workspace_gib=1, **kw)

    return run, log, onnx


def test_gpu_identity_is_the_cuda_device_the_build_used(fake_build):
    run, log, _ = fake_build
    record = run()
    # nvidia-smi's GPU 0 (PCI order) is an H200 here, but CUDA device 0 (what TensorRT built on) is the A100.
    assert (record["gpu"], record["compute_capability"]) == ("NVIDIA A100", "8.0")
    assert record["driver"] == "560.35.03" and record["gpu_source"] == "fake device 0"
    names = log.names()
    # The device is current (pushed) for the whole build and released after it.
    assert names.index("push") < names.index("Builder") < names.index("build_serialized_network") < names.index("pop")


def test_gpu_identity_falls_back_to_nvidia_smi_without_a_cuda_api(fake_build, monkeypatch):
    from lrformer_deploy.runtime.backends import cuda as cuda_backend

    def no_provider(dev, prefer):
        raise UserError("the tensorrt backend needs pycuda or torch with CUDA")

    monkeypatch.setattr(cuda_backend, "make_memory", no_provider)
    run, _, _ = fake_build
    record = run()
    assert record["gpu"] == "NVIDIA H200" and record["gpu_source"].startswith("nvidia-smi")
    assert "may not be the one" in record["gpu_source"]  # two GPUs: say the record may be wrong


def test_timing_cache_is_keyed_by_tensorrt_version_gpu_and_compute_capability(fake_build, tmp_path):
    run, log, onnx = fake_build
    first = run({"version": "10.16.1.11"})
    assert first["build_options"]["timing_cache"] == "m.trt10.16.1.11.nvidia-a100.sm80.timing-cache"
    assert not first["build_options"]["timing_cache_reused"]
    assert (tmp_path / first["build_options"]["timing_cache"]).read_bytes() == b"CACHE"
    again = run({"version": "10.16.1.11"})
    assert again["build_options"]["timing_cache_reused"]
    other = run({"version": "11.4.0.106"})  # another TensorRT never loads the first one's cache
    assert other["build_options"]["timing_cache"] == "m.trt11.4.0.106.nvidia-a100.sm80.timing-cache"
    assert not other["build_options"]["timing_cache_reused"]


def test_another_gpu_of_the_same_compute_capability_gets_its_own_cache(fake_build, monkeypatch, tmp_path):
    # Defect 4: A100 and A30 are both sm80; TensorRT refuses one's cache on the other.
    from lrformer_deploy.runtime.backends import cuda as cuda_backend

    run, log, _ = fake_build
    a100 = run()["build_options"]["timing_cache"]
    monkeypatch.setattr(cuda_backend, "make_memory", lambda dev, prefer: FakeMemory(log, "NVIDIA A30", (8, 0)))
    a30 = run()["build_options"]["timing_cache"]
    assert a100 != a30 and "a30" in a30
    assert {p.name for p in tmp_path.glob("*.timing-cache")} == {a100, a30}


def test_a_cache_from_another_device_is_replaced_not_a_failed_build(fake_build, tmp_path, capsys):
    # Defect 4: a mismatching cache used to be a hard build error; it only ever saves build time.
    run, log, onnx = fake_build
    name = run()["build_options"]["timing_cache"]
    (tmp_path / name).write_bytes(b"FOREIGN")
    record = run({"set_cache_ok": "empty-only"})
    assert onnx.with_suffix(".engine").read_bytes() == b"PLAN"
    assert record["build_options"]["timing_cache_rejected"] and not record["build_options"]["timing_cache_reused"]
    assert (tmp_path / name).read_bytes() == b"CACHE"  # replaced by this device's cache
    assert "rejected the timing cache" in capsys.readouterr().err


def test_no_timing_cache_at_all_is_one_clear_error_and_no_engine(fake_build, tmp_path):
    run, _, onnx = fake_build
    with pytest.raises(engine_build.EngineBuildError, match="cannot create a timing cache"):
        run({"set_cache_ok": False})
    assert not onnx.with_suffix(".engine").exists()


def test_no_timing_cache_back_still_keeps_the_engine(fake_build):
    run, log, onnx = fake_build
    record = run({"final_cache": False})
    assert onnx.with_suffix(".engine").read_bytes() == b"PLAN"
    assert record["build_options"]["timing_cache"] is None
    assert not list(onnx.parent.glob("*.timing-cache"))


def test_tf32_is_off_unless_asked_for(fake_build):
    run, log, _ = fake_build
    assert run()["build_options"]["tf32"] is False
    assert ("clear_flag", "TF32") in log.calls and ("set_flag", "TF32") not in log.calls
    log.calls.clear()
    assert run(tf32=True)["build_options"]["tf32"] is True
    assert ("set_flag", "TF32") in log.calls and ("clear_flag", "TF32") not in log.calls
    log.calls.clear()
    assert run({"tf32_flag": False}, tf32=False)["build_options"]["tf32"] is None  # a TensorRT without the flag
    assert not [c for c in log.calls if c[0] in ("set_flag", "clear_flag")]


def test_engine_and_cache_are_written_atomically(fake_build, monkeypatch):
    import os

    run, _, onnx = fake_build
    engine = onnx.with_suffix(".engine")
    engine.write_bytes(b"OLD GOOD ENGINE")
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith(".engine"):
            raise KeyboardInterrupt  # e.g. Ctrl-C at the last moment
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(KeyboardInterrupt):
        run()
    assert engine.read_bytes() == b"OLD GOOD ENGINE"
    assert sorted(p.name for p in onnx.parent.iterdir()) == ["m.engine", "m.onnx"]  # no temporaries left


def test_building_from_a_channels_last_mask_graph_warns(fake_build, capsys):
    import json

    run, _, onnx = fake_build
    onnx.with_suffix(".json").write_text(json.dumps({"output": {"kind": "mask", "mask_tail": "nhwc"}}))
    run()
    assert "channels-last mask tail" in capsys.readouterr().err
    onnx.with_suffix(".json").write_text(json.dumps({"output": {"kind": "mask", "mask_tail": "nchw"}}))
    run()
    assert "mask tail" not in capsys.readouterr().err


def test_export_cli_tf32_flag_reaches_the_builder(monkeypatch, tmp_path):
    from lrformer_deploy.build import engine_step as step_mod
    from lrformer_deploy.build import steps as steps_mod
    from lrformer_deploy.cli import export as cli_export

    seen = {}

    def fake_build_engine(onnx_path, engine_path=None, **kw):
        seen.clear()
        seen.update(kw)
        raise EngineUnavailable("no GPU here")

    monkeypatch.setattr(engine_build, "build_engine", fake_build_engine)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"graph")
    for flags, expect in (([], None), (["--tf32"], True), (["--no-tf32"], False)):
        req = cli_export.request_from_args(cli_export.build_parser().parse_args(["--variant", "demo", *flags]))
        art = steps_mod.Artifact("fp32", onnx, tmp_path / "m.json", None)
        step_mod.engine_step(req, art, steps_mod.Steps(0, True))
        assert art.engine_skipped == "no GPU here"
        assert seen.get("tf32") is expect
