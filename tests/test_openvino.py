"""The OpenVINO backend: same masks as ONNX Runtime, explicit precision, model cache, threads, `auto`.

Skipped as a whole where openvino is not installed (the `openvino` extra); the tests that need no
openvino (the one-line refusal, `auto` without it) are in test_openvino_absent below and always run.
Devices GPU/NPU/AUTO are only checked for the properties passed through; they cannot run here.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import read_video, serve_module
from toy_graph import build_toy_segmenter
from lrformer_deploy.errors import UserError
from lrformer_deploy.runtime import segmenter as segmenter_module
from lrformer_deploy.runtime.segmenter import Segmenter

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino is not installed (the openvino extra)")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    # OpenVINO's compiled-model cache goes under the user cache folder: a test's own, never ~/.cache.
    monkeypatch.setenv("LRFORMER_DEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CI", "true")  # openvino-telemetry stays off


def toy_with_manifest(folder, head="mask", precision="fp32", size=(64, 96), num_classes=6, target="cpu"):
    """The LRFormer-shaped toy graph (Conv, LayerNorm, attention, Resize -> ArgMax) with a manifest."""
    onnx_path = build_toy_segmenter(folder / f"toy-{head}.onnx", size=size, num_classes=num_classes, head=head)
    out_shape = [1, size[0], size[1]] if head == "mask" else [1, num_classes, size[0] // 8, size[1] // 8]
    manifest = {
        "format": "lrformer-deploy-manifest", "schema_version": 1, "name": onnx_path.stem,
        "model": {"variant": "toy", "num_classes": num_classes},
        "input": {"name": "image", "shape": [1, 3, *size]},
        "output": {"name": head, "kind": head, "shape": out_shape},
        "precision": precision, "opset": 17, "target": target,
        "artifacts": {"onnx": {"file": onnx_path.name}},
        "created": "2025-01-01T00:00:00Z",
    }
    path = onnx_path.with_suffix(".json")
    path.write_text(json.dumps(manifest))
    return path


def video_frames(shared_video, n=6):
    frames, _ = read_video(shared_video)
    return frames[:: max(1, len(frames) // n)][:n]


@needs_openvino
@pytest.mark.parametrize("head", ["mask", "logits"])
def test_masks_match_onnxruntime_on_real_frames(tmp_path, shared_video, head):
    manifest = toy_with_manifest(tmp_path, head=head)
    ort = Segmenter(manifest, backend="onnxruntime")
    ov = Segmenter(manifest, backend="openvino")
    assert ort.backend_name.startswith("onnxruntime") and ov.backend_name.startswith("openvino[CPU")
    same = total = 0
    for frame in video_frames(shared_video):
        a, b = ort(frame), ov(frame)
        assert a.shape == b.shape == frame.shape[:2] and a.dtype == b.dtype
        same += int((a == b).sum())
        total += a.size
    assert same / total >= 0.999, same / total


@needs_openvino
def test_fp32_graph_is_compiled_f32_never_a_silent_bf16(tmp_path):
    from lrformer_deploy.runtime.backends.openvino import OpenVINORunner

    manifest = toy_with_manifest(tmp_path)
    seg = Segmenter(manifest, backend="openvino")
    assert seg.runner.inference_precision() == "f32"
    assert "f32" in seg.backend_name
    with OpenVINORunner(tmp_path / "toy-mask.onnx", precision="int8") as runner:  # Q/DQ: float ops in f32
        assert runner.inference_precision() == "f32"


@needs_openvino
def test_second_start_loads_from_the_model_cache(tmp_path):
    from lrformer_deploy.runtime.backends.openvino import OpenVINORunner, model_cache_dir

    onnx_path = build_toy_segmenter(tmp_path / "toy.onnx", size=(32, 32))
    first = OpenVINORunner(onnx_path).activate()
    assert not first.loaded_from_cache
    assert model_cache_dir().is_dir() and any(model_cache_dir().iterdir())
    assert str(model_cache_dir()).startswith(str(tmp_path / "cache"))
    second = OpenVINORunner(onnx_path).activate()
    assert second.loaded_from_cache
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(first.infer({"image": x})["mask"], second.infer({"image": x})["mask"])
    uncached = OpenVINORunner(onnx_path, cache=False).activate()
    assert not uncached.loaded_from_cache


@needs_openvino
def test_threads_reach_the_compiled_model(tmp_path):
    from lrformer_deploy.runtime.backends.openvino import OpenVINORunner

    onnx_path = build_toy_segmenter(tmp_path / "toy.onnx", size=(32, 32))
    with OpenVINORunner(onnx_path, threads=1) as runner:
        assert int(runner.compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    seg = Segmenter(onnx_path, backend="openvino", intra_op_threads=1)
    assert int(seg.runner.compiled.get_property("INFERENCE_NUM_THREADS")) == 1


@needs_openvino
def test_segmenter_on_openvino_is_safe_to_share_between_threads(tmp_path, shared_video):
    seg = Segmenter(toy_with_manifest(tmp_path), backend="openvino")
    frames = video_frames(shared_video, 4)
    expected = [seg(f) for f in frames]
    results: dict[int, list[np.ndarray]] = {}

    def work(k: int) -> None:
        results[k] = [seg(f) for f in frames]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(3):
        for got, want in zip(results[k], expected):
            np.testing.assert_array_equal(got, want)


def test_device_and_precision_properties_passed_through():
    """GPU/NPU/AUTO are Intel devices this machine lacks: only the properties handed over are checked."""
    from lrformer_deploy.runtime.backends.openvino import compile_config, normalise_device

    assert normalise_device(None) == normalise_device("auto") == normalise_device("cpu") == "CPU"
    assert normalise_device("gpu.1") == "GPU.1" and normalise_device("AUTO:GPU,CPU") == "AUTO:GPU,CPU"
    with pytest.raises(UserError, match="unknown OpenVINO device"):
        normalise_device("tpu")
    cpu = compile_config("CPU", "fp32", 2, None)
    assert cpu["INFERENCE_PRECISION_HINT"] == "f32" and cpu["INFERENCE_NUM_THREADS"] == 2
    assert compile_config("CPU", "bf16", None, None)["INFERENCE_PRECISION_HINT"] == "bf16"
    assert compile_config("GPU", "fp32", None, None)["INFERENCE_PRECISION_HINT"] == "f32"
    assert "INFERENCE_PRECISION_HINT" not in compile_config("NPU", "fp32", None, None)
    with pytest.raises(UserError, match="cannot run precision"):
        compile_config("CPU", "int4", None, None)


@needs_openvino
def test_auto_runs_int8_on_openvino_and_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(segmenter_module, "_x86", lambda: True)
    int8 = Segmenter(toy_with_manifest(tmp_path, precision="int8"), backend="auto")
    assert int8.backend_name.startswith("openvino")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "OpenVINO runs this int8 artifact" in err
    fp32_dir = tmp_path / "fp32"
    fp32_dir.mkdir()
    fp32 = Segmenter(toy_with_manifest(fp32_dir), backend="auto")
    assert fp32.backend_name.startswith("openvino[CPU, f32")  # f32, never a silent bf16
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "OpenVINO runs this fp32 artifact" in err
    trt_dir = tmp_path / "trt"
    trt_dir.mkdir()
    for precision in ("int8", "fp32"):  # TensorRT-shaped graphs (full-size Resize tail) keep their old CPU path
        trt = Segmenter(toy_with_manifest(trt_dir, precision=precision, target="tensorrt"), backend="auto")
        assert trt.backend_name.startswith("onnxruntime")
    assert capsys.readouterr().err == ""
    fp16_dir = tmp_path / "fp16"
    fp16_dir.mkdir()
    assert Segmenter(toy_with_manifest(fp16_dir, precision="fp16"), backend="auto").backend_name.startswith("onnxruntime")


def test_openvino_absent_auto_keeps_onnxruntime_and_explicit_is_one_line(tmp_path, monkeypatch, capsys):
    import lrformer_deploy.runtime.backends as backends

    monkeypatch.setattr(segmenter_module, "openvino_missing", lambda: "OpenVINO is not installed (test)")
    monkeypatch.setattr(backends, "openvino_missing", lambda: "OpenVINO is not installed (test)")
    manifest = toy_with_manifest(tmp_path, precision="int8")
    seg = Segmenter(manifest, backend="auto")
    assert seg.backend_name.startswith("onnxruntime")
    with pytest.raises(UserError, match="not installed"):
        Segmenter(manifest, backend="openvino")


def test_infer_cli_refuses_openvino_without_the_package(tmp_path, monkeypatch, capsys):
    from lrformer_deploy.cli import infer

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    manifest = toy_with_manifest(tmp_path)
    image = tmp_path / "x.png"
    import cv2

    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    assert infer.main([str(image), "--model", str(manifest), "--backend", "openvino", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "openvino" in err and "Traceback" not in err


@needs_openvino
def test_infer_and_bench_cli_run_openvino(tmp_path, shared_video, capsys):
    from lrformer_deploy.cli import bench, infer

    manifest = toy_with_manifest(tmp_path)
    out = tmp_path / "summary.json"
    assert infer.main([str(shared_video), "--model", str(manifest), "--backend", "openvino", "--max-frames", "3",
                       "--no-overlay", "--json", str(out), "--quiet"]) == 0
    summary = json.loads(out.read_text())
    assert summary["backend"].startswith("openvino[CPU") and summary["frames"] == 3
    assert bench.main(["--model", str(manifest), "--backend", "openvino", "--warmup", "0", "--iterations", "2",
                       "--threads", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (row,) = report["rows"]
    assert row["backend"] == "openvino" and row["status"] == "ok" and row["median_ms"] > 0


# ------------------------------------------------------------------------------------------- bf16
def test_cpu_flags_are_read_from_cpuinfo_and_bf16_needs_them(tmp_path):
    from lrformer_deploy import cpus

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert cpus.cpu_flags(info) == {"fpu", "sse2", "avx2", "avx512f", "avx512_bf16"}
    assert cpus.cpu_flags(tmp_path / "absent") == frozenset()
    assert cpus.bf16_missing({"avx512_bf16"}) is None and cpus.bf16_missing({"amx_bf16", "amx_tile"}) is None
    assert "AVX512-BF16" in cpus.bf16_missing({"avx2", "avx512_vnni"})


@pytest.mark.parametrize("argv, fragment", [
    (["--bf16"], "--target cpu"),  # a CPU precision
    (["--bf16", "--target", "cpu"], "no bf16 instructions"),  # refused on a CPU without AVX512-BF16/AMX
])
def test_export_bf16_refusals_are_one_line(tmp_path, monkeypatch, capsys, argv, fragment):
    from lrformer_deploy import cpus
    from lrformer_deploy.cli import export

    monkeypatch.setattr(cpus, "cpu_flags", lambda *a: frozenset({"avx2", "avx512_vnni"}))
    code = export.main(["--variant", "demo", "--size", "64x64", "--no-engine", "--output-dir", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and fragment in err, err
    assert not list(tmp_path.glob("*.onnx"))  # refused before any export


def test_bench_bf16_refused_on_a_cpu_without_it(monkeypatch, capsys, tmp_path):
    from lrformer_deploy.bench import rows
    from lrformer_deploy.cli import bench

    monkeypatch.setattr(rows, "bf16_missing", lambda: "this CPU has no bf16 instructions (test)")
    manifest = toy_with_manifest(tmp_path)
    assert bench.main(["--model", str(manifest), "--precision", "bf16", "--iterations", "1"]) == 2
    assert "bf16 refused" in capsys.readouterr().err


@needs_openvino
def test_bf16_artifact_is_checked_on_openvino_and_runs_there(tmp_path, capsys, monkeypatch):
    from lrformer_deploy import cpus
    from lrformer_deploy.build import BuildRequest, build
    from lrformer_deploy.contract import PRECISIONS

    if cpus.bf16_missing() is not None:
        pytest.skip(f"bf16 cannot run here: {cpus.bf16_missing()}")
    assert "bf16" in PRECISIONS
    monkeypatch.setattr(segmenter_module, "_x86", lambda: True)
    fp32_manifest = toy_with_manifest(tmp_path, head="mask", size=(64, 64))
    result = build(BuildRequest(graph=fp32_manifest.with_suffix(".onnx"), precisions=("bf16",), check_count=2,
                                calib_count=1, target="cpu", engine="off", quiet=True))
    art = result["bf16"]
    m = json.loads(art.manifest_path.read_text())
    assert art.manifest_path.name == "toy-mask-bf16.json" and m["precision"] == "bf16" and m["target"] == "cpu"
    assert m["artifacts"]["onnx"]["file"] == "toy-mask.onnx"  # the FP32 graph itself, no second copy
    assert not list(tmp_path.glob("*-bf16.onnx"))
    acc = m["precision_details"]["accuracy"]
    assert acc["backend"] == "openvino CPU, inference precision bf16"
    assert 0.99 <= acc["mask_agreement"] <= 1.0 and acc["passed"] and acc["frames"] == 2
    assert m["precision_details"]["cpu_backends"]["recommended"] == "openvino"
    seg = Segmenter(art.manifest_path)  # auto: OpenVINO, in bf16, and one line says so
    assert seg.runner.inference_precision() == "bf16"
    err = capsys.readouterr().err
    assert "bf16 artifact (only OpenVINO computes in bf16" in err and "measured" not in err
    ort = Segmenter(art.manifest_path, backend="onnxruntime")
    assert ort.backend_name.startswith("onnxruntime") and "runs its graph in FP32" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- int8 on a CPU
def _int8_cpu(tmp_path, monkeypatch, openvino: bool):
    import lrformer_deploy.runtime.backends as backends
    from lrformer_deploy.build import BuildRequest, build

    if not openvino:
        monkeypatch.setattr(backends, "openvino_missing", lambda: "OpenVINO is not installed (test)")
    manifest = toy_with_manifest(tmp_path, size=(64, 64))
    return build(BuildRequest(graph=manifest.with_suffix(".onnx"), precisions=("int8",), synthetic_calibration=True,
                              calib_count=2, check_count=2, min_agreement=0.0, target="cpu", engine="off",
                              quiet=True))


@needs_openvino
def test_int8_cpu_manifest_records_the_fast_backend_and_its_accuracy(tmp_path, monkeypatch, capsys):
    result = _int8_cpu(tmp_path, monkeypatch, openvino=True)
    m = json.loads(result["int8"].manifest_path.read_text())
    choice = m["precision_details"]["cpu_backends"]
    ms = choice["median_ms"]
    assert set(ms) == {"onnxruntime fp32", "onnxruntime int8", "openvino int8"} and all(v > 0 for v in ms.values())
    faster = "openvino" if ms["openvino int8"] < ms["onnxruntime int8"] else "onnxruntime"
    assert choice["recommended"] == faster
    acc, other = m["precision_details"]["accuracy"], m["precision_details"][
        "accuracy_onnxruntime" if faster == "openvino" else "accuracy_openvino"]
    assert acc["backend"].startswith(faster) and other["backend"].startswith(
        "onnxruntime" if faster == "openvino" else "openvino")
    monkeypatch.setattr(segmenter_module, "_x86", lambda: True)
    seg = Segmenter(result["int8"].manifest_path)  # auto follows the export's measurement
    assert seg.backend_name.startswith(faster)


def test_int8_cpu_without_openvino_says_when_int8_is_slower(tmp_path, monkeypatch, capsys):
    result = _int8_cpu(tmp_path, monkeypatch, openvino=False)
    choice = json.loads(result["int8"].manifest_path.read_text())["precision_details"]["cpu_backends"]
    assert choice["recommended"] == "onnxruntime" and "not installed" in choice["openvino"]
    slower = choice["median_ms"]["onnxruntime int8"] >= choice["median_ms"]["onnxruntime fp32"]
    assert ("note" in choice) == slower
    if slower:
        assert "slower than FP32" in choice["note"] and "openvino" in choice["note"]
        assert any("slower than FP32" in n for n in result.notes)


@needs_openvino
def test_auto_keeps_onnxruntime_when_the_export_measured_it_faster(tmp_path, monkeypatch):
    monkeypatch.setattr(segmenter_module, "_x86", lambda: True)
    manifest = toy_with_manifest(tmp_path, precision="int8")
    data = json.loads(manifest.read_text())
    data["precision_details"] = {"cpu_backends": {"recommended": "onnxruntime"}}
    manifest.write_text(json.dumps(data))
    assert Segmenter(manifest).backend_name.startswith("onnxruntime")


# ------------------------------------------------------------------------------------------- Triton
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_triton_repository_has_an_openvino_config_triton_parses(tmp_path, precision):
    serve_module("tritonclient.grpc")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from lrformer_deploy.cli.triton import main

    manifest = toy_with_manifest(tmp_path, precision=precision, size=(64, 64))
    assert main([str(manifest), str(tmp_path / "repo"), "--threads", "2", "--backend", "openvino"]) == 0
    model = tmp_path / "repo" / manifest.stem
    cfg = text_format.Parse((model / "configs" / "cpu-openvino.pbtxt").read_text(), mc.ModelConfig())
    assert cfg.backend == "openvino" and cfg.default_model_filename == "model.onnx" and cfg.max_batch_size == 0
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.input] == [("image", mc.TYPE_FP32, [1, 3, 64, 64])]
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.output] == [("mask", mc.TYPE_INT32, [1, 64, 64])]
    assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["PERFORMANCE_HINT"] == "LATENCY" and params["INFERENCE_NUM_THREADS"] == "2"
    assert ("HINT_BF16" in params) == (precision == "bf16")
    assert (model / "1" / "model.onnx").read_bytes() == manifest.with_suffix(".onnx").read_bytes()
    frames = text_format.Parse((tmp_path / "repo" / f"{manifest.stem}_frames" / "config.pbtxt").read_text(),
                               mc.ModelConfig())
    assert frames.parameters["backend"].string_value == "openvino"


@needs_openvino
def test_eval_cli_runs_openvino(tmp_path, capsys):
    from lrformer_deploy.cli import eval as eval_cli

    manifest = toy_with_manifest(tmp_path, size=(64, 64))
    assert eval_cli.main(["--model", str(manifest), "--compare", str(manifest), "--backend", "openvino",
                          "--limit", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    text = json.dumps(report)
    assert "openvino[CPU, f32]" in text and "onnxruntime" not in text


@needs_openvino
def test_channel_layernorms_run_on_the_nchw_map_with_the_same_results(tmp_path, shared_video):
    """The layout rewrite (channel_norms_to_nchw) finds every ChannelLayerNorm of a real LRFormer export,
    removes their transposes from what OpenVINO compiles, and leaves the masks as they were."""
    import onnx
    import openvino as ov

    from lrformer_deploy.build.on_demand import demo_graph
    from lrformer_deploy.runtime.backends.openvino import OpenVINORunner, channel_norms_to_nchw
    from lrformer_deploy.contract import IMAGENET_MEAN, IMAGENET_STD
    from lrformer_deploy.runtime.preprocess import preprocess_image

    graph = demo_graph()
    proto = onnx.load(str(graph), load_external_data=False)
    producer = {o: n for n in proto.graph.node for o in n.output}
    channel_norms = sum(1 for n in proto.graph.node if n.op_type == "LayerNormalization"
                        and producer.get(n.input[0]) is not None and producer[n.input[0]].op_type == "Transpose"
                        and list(producer[n.input[0]].attribute[0].ints) == [0, 2, 3, 1])
    assert channel_norms >= 10  # the demo model's patch embeddings and blocks

    def transposes(model) -> int:
        return sum(op.get_type_name() == "Transpose" for op in model.get_ordered_ops())

    model = ov.Core().read_model(str(graph))
    before = transposes(model)
    assert channel_norms_to_nchw(model) == channel_norms
    assert transposes(model) == before - 2 * channel_norms
    assert channel_norms_to_nchw(model) == 0  # nothing left to rewrite

    rewritten = OpenVINORunner(graph, cache=False).activate()
    assert rewritten.layout_rewrites == channel_norms
    plain = OpenVINORunner(graph, cache=False, layout_rewrite=False).activate()
    assert plain.layout_rewrites == 0
    (name, shape), = rewritten.io_info()[0]
    same = total = 0
    for frame in video_frames(shared_video, n=4):
        x, _ = preprocess_image(frame, shape[2:], IMAGENET_MEAN, IMAGENET_STD)
        a, b = rewritten.infer({name: x}), plain.infer({name: x})
        out = next(iter(a))
        same += int((a[out] == b[out]).sum())
        total += a[out].size
    assert same / total >= 0.9999, same / total


FOREIGN_THREAD_CALLS = """
import ctypes, sys
import numpy as np
from lrformer_deploy.runtime.backends.openvino import OpenVINORunner

runner = OpenVINORunner(sys.argv[1], cache=False).activate()
x = np.zeros((1, 3, 32, 32), np.float32)
libc = ctypes.CDLL(None)
CALLBACK = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
shapes = []

@CALLBACK
def work(_):  # runs on a thread Python did not start: a new thread state per call, as under GStreamer
    shapes.append(runner.infer({"image": x})["mask"].shape)
    return None

for _ in range(3):
    thread = ctypes.c_ulong()
    assert libc.pthread_create(ctypes.byref(thread), None, work, None) == 0
    libc.pthread_join(thread, None)
print("calls", len(shapes), shapes[-1])
"""


@needs_openvino
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pthread_create through ctypes: Linux")
def test_runner_called_from_threads_python_did_not_start(tmp_path):
    """The GStreamer element calls the runner on GStreamer's streaming thread. A thread-local InferRequest
    was destroyed with each call's thread state there, and the process died (SIGSEGV)."""
    onnx_path = build_toy_segmenter(tmp_path / "toy.onnx", size=(32, 32))
    r = subprocess.run([sys.executable, "-c", FOREIGN_THREAD_CALLS, str(onnx_path)], capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, CI="true"))
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "calls 3 (1, 32, 32)" in r.stdout


@needs_openvino
def test_int8_with_bf16_float_ops_is_its_own_checked_artifact(tmp_path, capsys, monkeypatch):
    """--int8 --bf16 --target cpu: NAME-int8-bf16.json names the INT8 graph, is checked against FP32 as
    OpenVINO runs it (bf16 inference precision) and runs there; NAME-int8.json keeps f32 float ops."""
    from lrformer_deploy import cpus
    from lrformer_deploy.build import BuildRequest, build

    if cpus.bf16_missing() is not None:
        pytest.skip(f"bf16 cannot run here: {cpus.bf16_missing()}")
    monkeypatch.setattr(segmenter_module, "_x86", lambda: True)
    manifest = toy_with_manifest(tmp_path, size=(64, 64))
    result = build(BuildRequest(graph=manifest.with_suffix(".onnx"), precisions=("int8", "bf16"),
                                synthetic_calibration=True, calib_count=2, check_count=2, min_agreement=0.0,
                                target="cpu", engine="off", quiet=True))
    art = result["int8-bf16"]
    m = json.loads(art.manifest_path.read_text())
    assert art.manifest_path.name == "toy-mask-int8-bf16.json" and m["precision"] == "bf16"
    assert m["artifacts"]["onnx"]["file"] == "toy-mask-int8.onnx"  # the INT8 graph, no new file
    assert m["artifacts"]["onnx"]["sha256"] == result["int8"].manifest["artifacts"]["onnx"]["sha256"]
    details = m["precision_details"]
    assert details["graph_precision"] == "int8" and "float ops between them in bf16" in details["conversion"]["method"]
    acc = details["accuracy"]
    assert acc["backend"] == "openvino CPU, inference precision bf16" and acc["frames"] == 2
    assert 0.0 <= acc["mask_agreement"] <= 1.0
    assert json.loads(result["bf16"].manifest_path.read_text())["artifacts"]["onnx"]["file"] == "toy-mask.onnx"
    capsys.readouterr()
    seg = Segmenter(art.manifest_path)  # auto: OpenVINO in bf16, and one line says so
    assert "runs this int8 (bf16 float ops) artifact" in capsys.readouterr().err
    assert seg.runner.inference_precision() == "bf16"
    assert Segmenter(result["int8"].manifest_path, backend="openvino").runner.inference_precision() == "f32"
    capsys.readouterr()
    assert Segmenter(art.manifest_path, backend="onnxruntime").backend_name.startswith("onnxruntime")
    assert "runs this INT8 graph's float ops in FP32" in capsys.readouterr().err


@needs_openvino
def test_int8_on_a_bf16_cpu_names_the_faster_form_in_one_note(tmp_path, monkeypatch):
    from lrformer_deploy import cpus

    monkeypatch.setattr(cpus, "bf16_missing", lambda: None)
    (tmp_path / "a").mkdir()
    notes = _int8_cpu(tmp_path / "a", monkeypatch, openvino=True).notes
    assert len([n for n in notes if "--int8 --bf16" in n]) == 1
    monkeypatch.setattr(cpus, "bf16_missing", lambda: "no bf16 instructions (test)")
    (tmp_path / "b").mkdir()
    assert not [n for n in _int8_cpu(tmp_path / "b", monkeypatch, openvino=True).notes if "--bf16" in n]
