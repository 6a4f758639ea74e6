"""The engine step of build(): verified before it is published, the batch profile every door gets, stale
engines, portability flags and the layer report. TensorRT is a recording fake here and the engine's
outputs come from a fake runner: these check order, refusals and records, never a TensorRT result.
The real-engine tests at the end go through build() and Segmenter(backend="tensorrt") on a GPU.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from fake_tensorrt import FakeMemory, Recorder, make_trt
from lrformer_deploy import manifest as mf
from lrformer_deploy.build import engine as engine_build
from lrformer_deploy.build import engine_step as step_mod
from lrformer_deploy.build import steps as steps_mod
from lrformer_deploy.build.request import BuildRequest
from lrformer_deploy.errors import UserError
from lrformer_deploy.runtime.backends import cuda as cuda_backend


class FakeEngineRunner:
    """Stands in for the TensorRT runner: ONNX Runtime on the same graph, optionally with every mask
    pixel moved to another class (an engine that computes garbage)."""

    def __init__(self, onnx, log, corrupt=False, fails=None):
        from lrformer_deploy.runtime.backends.ort import OnnxRuntimeRunner

        self.ort, self.log, self.corrupt, self.fails = OnnxRuntimeRunner(onnx, device="cpu"), log, corrupt, fails

    def activate(self):
        if self.fails:
            raise UserError(self.fails)
        self.ort.activate()
        return self

    def infer(self, feed):
        self.log("engine.infer", next(iter(feed.values())).shape)
        out = self.ort.infer(feed)
        return {k: (v + 1) % 3 if self.corrupt else v for k, v in out.items()}

    def deactivate(self):
        self.ort.deactivate()


@pytest.fixture
def engine_step(tiny_model, monkeypatch):
    """(run(req_kwargs, trt_kwargs, runner_kwargs) -> Artifact, log, onnx path) around engine_step.engine_step."""
    onnx = tiny_model(head="mask", size=(64, 64))
    log = Recorder()
    smi = {"name": "NVIDIA A100", "compute_capability": "8.0", "driver": "560", "memory": "", "count": 1}
    monkeypatch.setattr(engine_build, "gpu_info", lambda: dict(smi))
    monkeypatch.setattr(cuda_backend, "make_memory", lambda dev, prefer: FakeMemory(log, "NVIDIA A100", (8, 0)))
    real_publish = mf.publish

    def publish(files, manifest=None, manifest_path=None):
        log("publish", [dst.name for _, dst in files])
        real_publish(files, manifest, manifest_path)

    monkeypatch.setattr(mf, "publish", publish)

    def run(req_kwargs=None, trt_kwargs=None, runner_kwargs=None, manifest_edit=None):
        monkeypatch.setattr(engine_build, "_import_tensorrt", lambda: make_trt(log, **(trt_kwargs or {})))
        monkeypatch.setattr(step_mod, "engine_runner",
                            lambda path, record, dev: FakeEngineRunner(onnx, log, **(runner_kwargs or {})))
        man_path = onnx.with_suffix(".json")
        manifest = json.loads(man_path.read_text())
        if manifest_edit:
            manifest_edit(manifest)
            man_path.write_text(json.dumps(manifest))
        kw = {"graph": onnx, "check_count": 2, "min_agreement": 0.99, "quiet": True, **(req_kwargs or {})}
        art = steps_mod.Artifact("fp32", onnx, man_path, manifest)
        step_mod.engine_step(BuildRequest(**kw), art, steps_mod.Steps(0, True), art)
        return art

    return run, log, onnx


def test_engine_is_verified_against_onnx_runtime_before_it_is_published(engine_step):
    # Defect 1: nothing deserialized or compared the plan before publishing it.
    run, log, onnx = engine_step
    art = run()
    names = log.names()
    assert names.index("build_serialized_network") < names.index("engine.infer") < names.index("publish")
    published = [c for c in log.calls if c[0] == "publish"][-1][1]
    # The engine, its timing cache and its layer report are published together, after the check.
    assert "tiny.engine" in published and "tiny.layers.json" in published
    assert any(n.endswith(".timing-cache") for n in published)
    record = json.loads(onnx.with_suffix(".json").read_text())["artifacts"]["engine"]
    check = record["verification"]
    assert check["passed"] and check["mask_agreement"] == 1.0 and check["frames"] == 2
    assert check["min_agreement"] == 0.99 and check["reference"] == "tiny.onnx"
    assert check["logits_rel_error"] is None and "mask head" in check["logits_note"]
    assert check["data"]["check_held_back"]
    assert art.engine == onnx.with_suffix(".engine") and art.engine_record == record


def test_engine_below_the_threshold_is_refused_and_old_files_stay(engine_step):
    run, log, onnx = engine_step
    engine = onnx.with_suffix(".engine")
    engine.write_bytes(b"OLD ENGINE")
    man_path = onnx.with_suffix(".json")
    manifest = json.loads(man_path.read_text())
    manifest["artifacts"]["engine"] = {"file": "tiny.engine", "note": "the old one"}
    man_path.write_text(json.dumps(manifest))
    before = man_path.read_text()
    with pytest.raises(step_mod.EngineVerificationFailed, match="below the required") as err:
        run(runner_kwargs={"corrupt": True})
    assert err.value.report["mask_agreement"] == 0.0 and not err.value.report["passed"]
    assert "publish" not in log.names()
    assert engine.read_bytes() == b"OLD ENGINE" and man_path.read_text() == before
    assert not list(onnx.parent.glob(".*partial")) and not list(onnx.parent.glob("*.timing-cache"))


def test_int8_engine_is_held_to_the_int8_threshold(engine_step, monkeypatch):
    art = steps_mod.Artifact("int8", None, None, {"model": {"checkpoint_sha256": "abc"}})
    fp32 = steps_mod.Artifact("fp32", None, None, {"model": {"checkpoint_sha256": "abc"}})
    assert step_mod.threshold(BuildRequest(variant="T"), art, fp32) == 0.98
    art.precision = "fp16"
    assert step_mod.threshold(BuildRequest(variant="T"), art, fp32) == 0.995


def test_an_engine_that_cannot_run_here_is_not_published(engine_step):
    run, log, onnx = engine_step
    art = run(runner_kwargs={"fails": "the tensorrt backend needs pycuda or torch with CUDA"})
    assert "not published" in art.engine_skipped and art.engine is None
    assert not onnx.with_suffix(".engine").exists() and "publish" not in log.names()
    with pytest.raises(UserError, match="cannot be verified"):
        run({"engine": "require"}, runner_kwargs={"fails": "no CUDA"})


def test_dynamic_batch_graph_gets_the_manifests_batch_range(engine_step):
    # Defect 3: build(BuildRequest(graph=...)) and lrformer-bench built a (1, 1, 1) profile.
    run, log, _ = engine_step
    art = run(trt_kwargs={"dynamic": True},
              manifest_edit=lambda m: m["input"].update(batch_range=[1, 8]))
    shapes = [c for c in log.calls if c[0] == "profile.set_shape"]
    assert shapes == [("profile.set_shape", "image", (1, 3, 4, 4), (8, 3, 4, 4), (8, 3, 4, 4))]
    assert art.engine_record["build_options"]["optimization_profile"] == [1, 8, 8]
    # Triton's plan config reads its max_batch_size from that record.
    from lrformer_deploy.triton.repository import _engine_max_batch

    assert _engine_max_batch(art.engine_record) == 8


def test_dynamic_batch_without_a_range_is_refused_not_guessed(tmp_path, monkeypatch):
    log = Recorder()
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"graph")
    monkeypatch.setattr(engine_build, "gpu_info", lambda: {"name": "G", "compute_capability": "8.0", "driver": "",
                                                           "memory": "", "count": 1})
    monkeypatch.setattr(cuda_backend, "make_memory", lambda dev, prefer: FakeMemory(log))
    monkeypatch.setattr(engine_build, "_import_tensorrt", lambda: make_trt(log, dynamic=True))
    with pytest.raises(UserError, match="dynamic batch"):
        engine_build.build_engine(onnx)
    assert "build_serialized_network" not in log.names()


def test_an_engine_its_manifest_does_not_record_is_refused(tiny_model):
    # Defect 5: a re-export without the engine step left NAME.engine beside a manifest without it.
    from lrformer_deploy.runtime import Segmenter

    onnx = tiny_model()
    stale = onnx.with_suffix(".engine")
    stale.write_bytes(b"\0" * 64)
    with pytest.raises(UserError, match="not recorded in its manifest"):
        Segmenter(stale, backend="tensorrt")
    with pytest.raises(UserError, match="not recorded in its manifest"):
        Segmenter(stale, backend="auto")
    # The manifest's own path never chooses it: ONNX Runtime runs the graph.
    assert Segmenter(onnx.with_suffix(".json"), backend="auto").backend_name.startswith("onnxruntime")


def test_engine_step_off_names_a_stale_engine(engine_step, capsys):
    run, log, onnx = engine_step
    onnx.with_suffix(".engine").write_bytes(b"OLD")
    art = steps_mod.Artifact("fp32", onnx, onnx.with_suffix(".json"), json.loads(onnx.with_suffix(".json").read_text()))
    step_mod.stale_engine(BuildRequest(graph=onnx, engine="off"), art, "built with the engine step off")
    assert "tiny.engine is from an earlier build" in capsys.readouterr().err
    assert onnx.with_suffix(".engine").read_bytes() == b"OLD"  # kept: nothing written is lost


def test_version_compatible_engine_never_runs_on_an_older_tensorrt():
    # Defect 6: the relaxation admitted a runtime older than the builder.
    from lrformer_deploy.runtime.backends.trt import check_engine_record

    rec = {"tensorrt": "10.8.0", "gpu": "NVIDIA A100", "compute_capability": "8.0", "version_compatible": True}
    assert check_engine_record(rec, "10.12.0", "NVIDIA A100", (8, 0)) == []
    with pytest.raises(UserError, match="TensorRT 10.8.0 but TensorRT 10.3.0"):
        check_engine_record(rec, "10.3.0", "NVIDIA A100", (8, 0))
    with pytest.raises(UserError):
        check_engine_record(rec, "11.0.0", "NVIDIA A100", (8, 0))
    same_cc = dict(rec, hardware_compatibility="same-cc")
    assert check_engine_record(same_cc, "10.8.0", "NVIDIA A30", (8, 0)) == []
    with pytest.raises(UserError, match="same-cc"):
        check_engine_record(same_cc, "10.8.0", "NVIDIA L4", (8, 9))


def test_gpu_and_tensorrt_markers_skip(monkeypatch):
    # Defect 8: the markers were declared and skipped nothing.
    import conftest

    class Item:
        def __init__(self, *marks):
            self.marks = marks

        def get_closest_marker(self, name):
            return object() if name in self.marks else None

    monkeypatch.setattr(conftest, "_PRESENT", {"gpu": "no NVIDIA GPU", "tensorrt": None})
    with pytest.raises(pytest.skip.Exception, match="no NVIDIA GPU"):
        conftest.pytest_runtest_setup(Item("tensorrt", "gpu"))
    monkeypatch.setattr(conftest, "_PRESENT", {"gpu": None, "tensorrt": "TensorRT is not importable"})
    with pytest.raises(pytest.skip.Exception, match="TensorRT"):
        conftest.pytest_runtest_setup(Item("tensorrt"))
    conftest.pytest_runtest_setup(Item("gpu"))  # a GPU and no TensorRT: a gpu-only test runs


# --- The builder's TensorRT features (order and records only) -----------------------------------------
@pytest.fixture
def fake_build(tmp_path, monkeypatch):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"graph")
    log = Recorder()
    monkeypatch.setattr(engine_build, "gpu_info", lambda: {"name": "NVIDIA A100", "compute_capability": "8.0",
                                                           "driver": "", "memory": "", "count": 1})
    monkeypatch.setattr(cuda_backend, "make_memory", lambda dev, prefer: FakeMemory(log, "NVIDIA A100", (8, 0)))

    def run(trt_kwargs=None, **kw):
        monkeypatch.setattr(engine_build, "_import_tensorrt", lambda: make_trt(log, **(trt_kwargs or {})))
        return engine_build.build_engine(onnx, workspace_gib=1, **kw)

    return run, log, onnx


def test_portable_engines_set_their_flags_before_the_build(fake_build):
    run, log, _ = fake_build
    record = run(version_compatible=True, hardware_compatible="ampere+")
    names = log.names()
    assert ("set_flag", "VERSION_COMPATIBLE") in log.calls
    assert ("config.hardware_compatibility_level", "AMPERE_PLUS") in log.calls
    assert names.index("config.hardware_compatibility_level") < names.index("build_serialized_network")
    assert record["version_compatible"] and record["hardware_compatibility"] == "ampere+"
    assert "--versionCompatible" in record["trtexec"] and "--hardwareCompatibilityLevel=ampere+" in record["trtexec"]
    log.calls.clear()
    plain = run()
    assert ("set_flag", "VERSION_COMPATIBLE") not in log.calls and not plain["version_compatible"]
    assert "config.hardware_compatibility_level" not in log.names()
    assert ("config.hardware_compatibility_level", "SAME_COMPUTE_CAPABILITY") not in log.calls
    run(hardware_compatible="same-cc")
    assert ("config.hardware_compatibility_level", "SAME_COMPUTE_CAPABILITY") in log.calls
    with pytest.raises(UserError, match="same-compute-capability"):
        run({"same_cc": False}, hardware_compatible="same-cc")  # TensorRT 10.0 has no such level
    with pytest.raises(UserError, match="hardware compatibility"):
        run(hardware_compatible="turing+")


def test_plugin_layers_are_refused_unless_allowed(fake_build):
    run, log, onnx = fake_build
    with pytest.raises(engine_build.EngineBuildError, match="plugin layer"):
        run({"plugins": ("MyCustomOp_1",)})
    assert "build_serialized_network" not in log.names() and not onnx.with_suffix(".engine").exists()
    assert run({"plugins": ("MyCustomOp_1",)}, allow_plugins=True)["plugins"] == ["MyCustomOp_1"]
    assert run()["plugins"] == []


def test_layer_report_is_written_beside_the_engine_with_counts(fake_build):
    run, log, onnx = fake_build
    record = run()
    names = log.names()
    assert ("config.profiling_verbosity", "DETAILED") in log.calls
    assert names.index("build_serialized_network") < names.index("create_engine_inspector")
    report = onnx.with_name(record["layers"]["report"])
    assert report.name == "m.layers.json" and len(json.loads(report.read_text())["Layers"]) == 2
    assert record["layers"]["total"] == 2 and record["layers"]["by_precision"] == {"fp16": 1, "int32": 1}


def test_trtexec_command_line_matches_the_build(fake_build):
    run, _, onnx = fake_build
    record = run(optimization_level=5)
    line = record["trtexec"]
    for part in ("trtexec", "--onnx=m.onnx", "--saveEngine=m.engine", "--stronglyTyped", "--noTF32",
                 "--memPoolSize=workspace:1024M", "--builderOptimizationLevel=5",
                 f"--timingCacheFile={record['build_options']['timing_cache']}"):
        assert part in line.split(), part
    dyn = run({"dynamic": True}, batch_range=(1, 4, 8))["trtexec"].split()
    assert {"--minShapes=image:1x3x4x4", "--optShapes=image:4x3x4x4", "--maxShapes=image:8x3x4x4"} <= set(dyn)


# --- Real engines: through build() and Segmenter(backend="tensorrt"), on a GPU with TensorRT -------------
@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_real_engine_through_build_and_segmenter(tmp_path, shared_video, precision):
    pytest.importorskip("torch")
    from lrformer_deploy.build import build
    from lrformer_deploy.runtime import Segmenter
    from conftest import read_video

    precisions = () if precision == "fp32" else (precision,)
    result = build(BuildRequest(variant="T", size=(128, 128), precisions=precisions, calib=shared_video,
                                calib_count=4, check_count=2, engine="require", output_dir=tmp_path, quiet=True))
    art = result[precision]
    record = art.engine_record
    assert art.engine.is_file() and record["verification"]["frames"] == 2
    assert record["layers"]["total"] > 0 and art.onnx.with_name(record["layers"]["report"]).is_file()
    frames = read_video(shared_video)[0][:3]
    with Segmenter(art.manifest_path, backend="tensorrt") as seg:
        assert seg.backend_name.startswith("tensorrt")
        trt_masks = seg.segment_batch(frames)
    with Segmenter(art.onnx, backend="onnxruntime", device="cpu") as seg:
        ort_masks = seg.segment_batch(frames)
    agreement = np.mean([np.mean(a == b) for a, b in zip(trt_masks, ort_masks)])
    assert agreement >= record["verification"]["mask_agreement"] - 0.05


def test_export_cli_portability_flags_reach_the_builder(monkeypatch, tmp_path):
    from lrformer_deploy.cli import export as cli_export

    seen = {}

    def fake_build_engine(onnx_path, engine_path=None, **kw):
        seen.clear()
        seen.update(kw)
        raise engine_build.EngineUnavailable("no GPU here")

    monkeypatch.setattr(engine_build, "build_engine", fake_build_engine)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"graph")
    args = ["--variant", "demo", "--version-compatible", "--hardware-compatible", "same-cc", "--allow-plugins"]
    req = cli_export.request_from_args(cli_export.build_parser().parse_args(args))
    step_mod.engine_step(req, steps_mod.Artifact("fp32", onnx, None, None), steps_mod.Steps(0, True))
    assert seen["version_compatible"] and seen["hardware_compatible"] == "same-cc" and seen["allow_plugins"]
    req = cli_export.request_from_args(cli_export.build_parser().parse_args(["--variant", "demo"]))
    step_mod.engine_step(req, steps_mod.Artifact("fp32", onnx, None, None), steps_mod.Steps(0, True))
    assert not {"version_compatible", "hardware_compatible", "allow_plugins"} & set(seen)


def test_verification_feeds_a_uint8_graph_uint8_frames(engine_step):
    import onnx

    from lrformer_deploy.build.uint8 import manifest_io, uint8_input

    run, log, onnx_path = engine_step

    def to_uint8(manifest):
        proto = onnx.load(str(onnx_path))
        uint8_input(proto, manifest["input"]["mean"], manifest["input"]["std"])
        onnx.save(proto, str(onnx_path))
        manifest_io(manifest, "uint8", "int32")

    art = run(manifest_edit=to_uint8)
    fed = [c[1] for c in log.calls if c[0] == "engine.infer"]
    assert fed and all(shape == (1, 64, 64, 3) for shape in fed)
    assert art.engine_record["verification"]["mask_agreement"] == 1.0


def test_onnx_runtime_tensorrt_ep_keeps_its_engine_and_timing_caches(tiny_model, tmp_path, monkeypatch):
    from lrformer_deploy.runtime.backends import ort as ort_backend

    monkeypatch.setenv("LRFORMER_DEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ort_backend, "available_providers",
                        lambda: [ort_backend.TENSORRT_EP, ort_backend.CUDA, ort_backend.CPU])
    graph = tiny_model()
    chain = ort_backend.providers_for_device("tensorrt:1", graph)
    name, options = chain[0]
    assert name == ort_backend.TENSORRT_EP and options["device_id"] == 1
    assert options["trt_engine_cache_enable"] == "True" and options["trt_timing_cache_enable"] == "True"
    folder = options["trt_engine_cache_path"]
    assert folder == options["trt_timing_cache_path"] and folder.startswith(str(tmp_path / "cache"))
    # One folder per graph content: an edited graph never meets the old graph's engine.
    graph.write_bytes(graph.read_bytes() + b"\0")
    assert ort_backend.providers_for_device("tensorrt", graph)[0][1]["trt_engine_cache_path"] != folder
    assert ort_backend.providers_for_device("cuda")[0] == (ort_backend.CUDA, {"device_id": 0})


def test_auto_backend_prefers_only_a_verified_engine(tiny_model, monkeypatch, capsys):
    # Defect 1, runtime side: --backend auto preferred any engine in the manifest.
    from lrformer_deploy.runtime import Segmenter
    from lrformer_deploy.runtime import segmenter as seg_mod

    onnx = tiny_model()
    onnx.with_suffix(".engine").write_bytes(b"PLAN")
    man = onnx.with_suffix(".json")
    manifest = json.loads(man.read_text())
    manifest["artifacts"]["engine"] = {"file": "tiny.engine", "tensorrt": "10.16.1.11"}
    man.write_text(json.dumps(manifest))
    monkeypatch.setattr(seg_mod, "tensorrt_missing", lambda *a: None)  # as on a GPU machine with TensorRT
    class TriedTheEngine(Exception):
        pass

    def trt_runner(self, *args):
        raise TriedTheEngine

    monkeypatch.setattr(Segmenter, "_trt_runner", trt_runner)
    with Segmenter(man, backend="auto") as seg:  # unverified: ONNX Runtime, with a warning
        assert seg.backend_name.startswith("onnxruntime")
    assert "no passed verification" in capsys.readouterr().err
    manifest["artifacts"]["engine"]["verification"] = {"passed": True}
    man.write_text(json.dumps(manifest))
    with pytest.raises(TriedTheEngine):
        Segmenter(man, backend="auto")  # a verified engine is what auto tries first
