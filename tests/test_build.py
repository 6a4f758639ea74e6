"""lrformer_deploy.build: one validation pass before any model is loaded, and crash-safe artifacts.

Validation tests patch the model loader to fail loudly, so each proves its mistake is caught before any
work starts (and none of them exports anything). The artifact tests export the demo variant at 64x64.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lrformer_deploy.build import pipeline as build_mod
from lrformer_deploy.build import demo
from lrformer_deploy.build import BuildRequest, build
from lrformer_deploy.cli import bench as bench_cli
from lrformer_deploy.runtime.backends import tensorrt_missing
from lrformer_deploy.cli import export as export_cli
from lrformer_deploy.manifest import sha256_file
from manifest_schema import validate_manifest

REPO = Path(__file__).resolve().parents[1]
CKPT = str(demo.CHECKPOINT)


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any attempt to load or export a model fails the test: validation must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before validation finished")

    monkeypatch.setattr(build_mod, "_load_model", refuse)
    monkeypatch.setattr("lrformer_deploy.bench.plan.export_fp32", refuse)


def _one_error_line(capsys, needle: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert needle in lines[0], err
    return lines[0]


# ------------------------------------------------------------------------------ lrformer-export validation
@pytest.mark.parametrize("extra, needle", [
    (["--output-dir", "{file}"], "is a file"),
    (["--output-dir", "{file}/sub"], "{file}"),
    (["--output-dir", "/proc/lrformer-not-writable"], "not writable"),
    (["--size", "100000x100000"], "GiB"),
    (["--calib", "{file}", "--int8"], "neither an image nor a video"),
    (["--workspace", "-4"], "--workspace"),
    (["--workspace", "nan"], "--workspace"),
    (["--min-agreement", "2", "--fp16"], "--min-agreement"),
    (["--name", "../../x"], "--name"),
    (["--name", "sub/x"], "--name"),
    (["--opset", "99"], "--opset 99"),
    (["--opset", "16"], "--opset 16"),
    (["--num-classes", "0"], "--num-classes"),
    (["--calib-count", "0", "--fp16"], "--calib-count"),
])
def test_export_refuses_before_loading_the_model(tmp_path, capsys, no_model_loading, extra, needle):
    text = tmp_path / "notes.txt"
    text.write_text("not a model, not a video\n")
    args = [a.format(file=text) for a in extra]
    out = tmp_path / "out"
    if "--output-dir" not in args:
        args += ["--output-dir", str(out)]
    assert export_cli.main(["--ckpt", CKPT, *args]) == 2
    _one_error_line(capsys, needle.format(file=text))
    assert not list(tmp_path.rglob("*.onnx"))


def test_export_engine_demanded_without_tensorrt_fails_first(tmp_path, capsys, no_model_loading):
    if tensorrt_missing() is None:
        pytest.skip("TensorRT and a GPU are present here")
    assert export_cli.main(["--ckpt", CKPT, "--engine", "--output-dir", str(tmp_path)]) == 2
    _one_error_line(capsys, "--engine was demanded")


def test_export_target_flag_reaches_the_request(tmp_path):
    args = export_cli.build_parser().parse_args(["--ckpt", CKPT, "--target", "cpu", "--no-engine"])
    req = export_cli.request_from_args(args)
    assert req.target == "cpu" and req.engine == "off"
    assert export_cli.request_from_args(export_cli.build_parser().parse_args(["--ckpt", CKPT])).target == "tensorrt"


def test_validation_is_fast_in_a_subprocess(tmp_path):
    """The README's promise: a mistake is one line and exit 2, without a traceback (here a late one before)."""
    r = subprocess.run([sys.executable, "-m", "lrformer_deploy.cli.export", "--ckpt", CKPT, "--fp16",
                        "--min-agreement", "2", "--output-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    assert not list(tmp_path.glob("*.onnx"))


# ------------------------------------------------------------------------------ lrformer-bench
def _manifest_without_graph(tiny_model) -> Path:
    onnx_path = tiny_model()
    man = onnx_path.with_suffix(".json")
    m = json.loads(man.read_text())
    m["model"]["variant"] = "demo"  # a real variant: the old code fell back to PyTorch with random weights
    man.write_text(json.dumps(m))
    onnx_path.unlink()
    return man


def test_bench_manifest_whose_graph_is_missing_is_an_error(capsys, tiny_model, no_model_loading):
    man = _manifest_without_graph(tiny_model)
    assert bench_cli.main(["--model", str(man), "--iterations", "1", "--warmup", "0", "--json"]) == 2
    _one_error_line(capsys, "missing")
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("with_manifest", [False, True])
def test_bench_corrupt_graph_is_one_line(tmp_path, capsys, tiny_model, with_manifest):
    onnx_path = tiny_model(manifest=with_manifest)
    onnx_path.write_bytes(b"\x08\x07garbage" * 100)
    assert bench_cli.main(["--model", str(onnx_path), "--iterations", "1"]) == 2
    _one_error_line(capsys, "not a readable ONNX graph")


@pytest.mark.parametrize("extra, needle", [
    (["--calib", "{file}", "--precision", "int8"], "neither an image nor a video"),
    (["--work-dir", "{file}"], "is a file"),
    (["--size", "100000x100000"], "GiB"),
    (["--num-classes", "0"], "--num-classes"),
])
def test_bench_refuses_before_exporting(tmp_path, capsys, no_model_loading, extra, needle):
    text = tmp_path / "notes.txt"
    text.write_text("text\n")
    assert bench_cli.main(["--variant", "demo", *[a.format(file=text) for a in extra]]) == 2
    _one_error_line(capsys, needle)


def test_bench_tensorrt_backend_without_tensorrt_fails_first(capsys, no_model_loading):
    if tensorrt_missing() is None:
        pytest.skip("TensorRT and a GPU are present here")
    assert bench_cli.main(["--variant", "demo", "--size", "64x64", "--backend", "tensorrt"]) == 2
    _one_error_line(capsys, "tensorrt backend")


# ------------------------------------------------------------------------------ crash-safe artifacts
def _request(out: Path, **kw) -> BuildRequest:
    base = dict(variant="demo", num_classes=6, size=(64, 64), output_dir=out, name="m", engine="off", quiet=True)
    base.update(kw)
    return BuildRequest(**base)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or "partial" in p.name)


@pytest.fixture(scope="module")
def first_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    res = build(_request(out, target="cpu"))
    return out, res


def test_manifest_records_the_target_and_is_valid(first_export):
    out, res = first_export
    m = json.loads((out / "m.json").read_text())
    validate_manifest(m)
    assert m["target"] == "cpu" and m["opset"] == 17
    assert m["artifacts"]["onnx"] == {**m["artifacts"]["onnx"], "file": "m.onnx", "sha256": sha256_file(out / "m.onnx")}
    assert res["fp32"].manifest_path == out / "m.json"
    assert _leftovers(out) == []


def test_interrupted_reexport_keeps_the_old_graph_and_manifest(first_export, tmp_path, monkeypatch):
    """SIGTERM (cli_entry raises it as atomic.Terminated, a KeyboardInterrupt) while the new graph is being
    checked must not have replaced the earlier graph, and the manifest beside it must still vouch for it.
    (A failed check takes the same path; test_export covers its message.)"""
    src, _ = first_export
    out = tmp_path / "out"
    out.mkdir()
    for f in ("m.onnx", "m.json"):
        shutil.copy(src / f, out / f)
    before = {f: (out / f).read_bytes() for f in ("m.onnx", "m.json")}
    from lrformer_deploy import atomic
    from lrformer_deploy.build import export as export_onnx

    def interrupted(onnx_path, *args, **kwargs):
        assert onnx_path != out / "m.onnx"  # the check runs on the new graph under its temporary name
        raise atomic.Terminated(15)

    monkeypatch.setattr(export_onnx, "verify_with_onnxruntime", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build(_request(out, target="tensorrt"))
    assert {f: (out / f).read_bytes() for f in ("m.onnx", "m.json")} == before
    assert json.loads(before["m.json"])["artifacts"]["onnx"]["sha256"] == sha256_file(out / "m.onnx")
    assert _leftovers(out) == []


def test_failed_accuracy_check_leaves_no_orphan_graph(first_export, monkeypatch):
    from lrformer_deploy.precision import pipeline
    from lrformer_deploy.precision.accuracy import AccuracyBelowThreshold

    out, res = first_export

    def below(*args, **kwargs):
        raise AccuracyBelowThreshold("mask agreement 0.5 < 0.995", {"mask_agreement": 0.5})

    monkeypatch.setattr(pipeline, "accuracy_report", below)
    with pytest.raises(AccuracyBelowThreshold):
        build(BuildRequest(graph=res["fp32"].onnx, precisions=("fp16",), calib_count=2, check_count=1,
                           engine="off", quiet=True))
    assert not (out / "m-fp16.onnx").exists() and not (out / "m-fp16.json").exists()
    assert _leftovers(out) == []


def test_reuse_keeps_a_matching_export(first_export, no_model_loading):
    out, res = first_export
    again = build(_request(out, target="cpu", reuse=True))  # _load_model is patched: nothing is rebuilt...
    assert again["fp32"].reused and again["fp32"].onnx == res["fp32"].onnx
