"""Static ONNX export: ONNX Runtime equals PyTorch, the graph is static, the manifest is complete."""
from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from lrformer_deploy.model.checkpoint import load_checkpoint
from lrformer_deploy.data.datasets import get_dataset
from lrformer_deploy.build.export import FORBIDDEN_OPS, export_onnx
from lrformer_deploy.manifest import sha256_file
from manifest_schema import validate_manifest
from ckpt_factory import randomized_model, write_official_checkpoint

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def t_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "lrformer_t_ade20k.pth"
    return write_official_checkpoint(path, randomized_model("T", 150, seed=1), aux_head=True)


def _run(onnx_path, x):
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"image": x})[0]


@pytest.mark.slow
@pytest.mark.parametrize("size,batch", [((512, 512), 1), ((512, 1024), 1), ((480, 640), 1), ((256, 256), 1),
                                        ((256, 256), 2)])
def test_t_checkpoint_round_trip_logits(tmp_path, t_checkpoint, size, batch):
    """Official-layout checkpoint -> load -> export -> ORT logits == PyTorch logits (max abs <= 5e-5)."""
    model = load_checkpoint(t_checkpoint)
    res = export_onnx(model, tmp_path, size=size, batch=batch, head="logits", dataset=get_dataset("ade20k"),
                      quiet=True)
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = model(x).numpy()
    got = _run(res.onnx_path, x.numpy())
    assert got.shape == (batch, 150, size[0] // 8, size[1] // 8)
    assert float(np.abs(got - ref).max()) <= 5e-5
    assert res.manifest["verification"]["logits_max_abs_diff"] <= 5e-5

    proto = onnx.load(str(res.onnx_path))
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & FORBIDDEN_OPS
    assert "LayerNormalization" in ops
    grouped = [n for n in proto.graph.node if n.op_type == "Conv"
               and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    # every depthwise conv stays a grouped Conv: per backbone block cpe, mlp.conv and the stage's 4 shared
    # d_convs (applied in each block); cpe and mlp.conv in each of the 2 head blocks
    n_blocks = sum(model.cfg.depths)
    assert len(grouped) == 6 * n_blocks + 2 * 2
    if size == (512, 512):
        assert len(proto.graph.node) < 1100   # the plain export of the official code has ~3,200


def test_mask_head_is_argmax_of_upsampled_logits(tmp_path):
    model = randomized_model("demo", 6, seed=2)
    res = export_onnx(model, tmp_path, "m", size=(128, 192), head="mask", dataset=get_dataset("synthetic"),
                      quiet=True)
    x = torch.randn(1, 3, 128, 192, generator=torch.Generator().manual_seed(0))
    mask = _run(res.onnx_path, x.numpy())
    assert mask.dtype == np.int32 and mask.shape == (1, 128, 192)
    with torch.no_grad():
        up = torch.nn.functional.interpolate(model(x), size=(128, 192), mode="bilinear", align_corners=False)
    assert (mask == up.argmax(1).numpy()).mean() > 0.999
    assert res.manifest["verification"]["mask_agreement"] > 0.999
    # the tail runs channels-last so ArgMax reduces over contiguous memory
    tail = [n for n in onnx.load(str(res.onnx_path)).graph.node][-4:]
    assert [n.op_type for n in tail] == ["Transpose", "Resize", "ArgMax", "Cast"]
    assert next(a.i for a in tail[2].attribute if a.name == "axis") == 3


def test_manifest_is_complete_and_valid(tmp_path):
    model = randomized_model("demo", 6, seed=4)
    res = export_onnx(model, tmp_path, size=(64, 96), head="mask", dataset=get_dataset("synthetic"), quiet=True)
    m = json.loads(res.manifest_path.read_text())
    validate_manifest(m)
    assert res.manifest_path.name == "lrformer-demo-synthetic-64x96.json"
    assert m["artifacts"]["onnx"]["sha256"] == sha256_file(res.onnx_path)
    assert m["input"] == {**m["input"], "name": "image", "shape": [1, 3, 64, 96], "color_order": "RGB"}
    assert m["output"]["name"] == "mask" and m["output"]["dtype"] == "int32"
    assert m["model"]["class_names"][1] == "disc" and len(m["model"]["palette"]) == 6
    assert m["precision"] == "fp32" and m["opset"] == 17
    assert {"torch", "onnx", "onnxruntime"} <= set(m["tools"])
    assert m["grids"]["backbone"][3]["query"] == [16, 24]


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lrformer_deploy.cli.export", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_cli_exports_checkpoint_and_skips_engine(tmp_path):
    ckpt = write_official_checkpoint(tmp_path / "demo.pth", randomized_model("demo", 6, seed=5))
    r = _cli("--ckpt", str(ckpt), "--size", "64x64", "--output-dir", str(tmp_path / "out"), "--name", "d")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "d.onnx").is_file() and (tmp_path / "out" / "d.json").is_file()
    assert "max abs diff" in r.stdout
    assert json.loads((tmp_path / "out" / "d.json").read_text())["model"]["random_weights"] is False
    if "engine step skipped" in r.stderr:   # no TensorRT here: one line, still exit 0
        assert len([ln for ln in r.stderr.splitlines() if "engine step skipped" in ln]) == 1
    r = _cli("--ckpt", str(ckpt), "--size", "64x64", "--output-dir", str(tmp_path / "out"), "--engine")
    if "engine step skipped" not in r.stderr and r.returncode != 0:
        assert "--engine was demanded" in r.stderr and "Traceback" not in r.stderr


def test_random_weights_take_their_class_count_from_the_dataset(tmp_path):
    """`--variant T --dataset cityscapes` means 19 classes; --num-classes still wins, and a mismatch is one line."""
    from lrformer_deploy.cli import export

    out = tmp_path / "o"
    assert export.main(["--variant", "demo", "--dataset", "cityscapes", "--size", "64x64", "--output-dir", str(out),
                        "--name", "c", "--no-engine", "--quiet"]) == 0
    m = json.loads((out / "c.json").read_text())
    assert m["model"]["num_classes"] == 19 and m["model"]["dataset"] == "cityscapes"
    assert export.main(["--variant", "demo", "--size", "64x64", "--output-dir", str(out), "--name", "a",
                        "--no-engine", "--quiet"]) == 0
    assert json.loads((out / "a.json").read_text())["model"]["num_classes"] == 150  # no dataset: ADE20K's
    assert export.main(["--variant", "demo", "--dataset", "cityscapes", "--num-classes", "6", "--size", "64x64",
                        "--output-dir", str(out), "--name", "b", "--no-engine", "--quiet"]) == 2


def test_manifests_say_what_their_graphs_hold_and_engine_skip_is_one_line(tmp_path, shared_video):
    """--variant without --ckpt is recorded as random weights; each manifest's opset is its graph's (INT8's
    Q/DQ graph is opset 19); a missing TensorRT is said once, not once per graph."""
    out = tmp_path / "out"
    r = _cli("--variant", "demo", "--num-classes", "6", "--size", "64x64", "--fp16", "--int8", "--calib",
             str(shared_video), "--calib-count", "4", "--output-dir", str(out))
    assert r.returncode == 0, r.stderr
    stem = out / "lrformer-demo-synthetic-64x64"
    opsets = {}
    for suffix in ("", "-fp16", "-int8"):
        manifest = json.loads(Path(f"{stem}{suffix}.json").read_text())
        validate_manifest(manifest)
        graph = onnx.load(f"{stem}{suffix}.onnx", load_external_data=False)
        held = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
        assert manifest["opset"] == held, suffix
        assert manifest["model"]["random_weights"] is True and "checkpoint_sha256" not in manifest["model"]
        opsets[suffix] = held
    assert opsets == {"": 17, "-fp16": 17, "-int8": 19}
    skipped = [ln for ln in r.stderr.splitlines() if "engine step skipped" in ln]
    if skipped or "tensorrt" not in r.stdout.lower():  # no TensorRT/GPU here: one line for both graphs
        assert len(skipped) == 1 and skipped[0].startswith("engine step skipped (fp16, int8): "), r.stderr


def test_ckpt_given_another_model_file_says_what_it_is(tmp_path):
    from lrformer_deploy.build.demo import SHIPPED_GRAPH

    renamed = tmp_path / "model.pth"
    renamed.write_bytes(SHIPPED_GRAPH.read_bytes())
    (tmp_path / "model.json").write_text("{}")
    for path, what in ((SHIPPED_GRAPH, "an exported ONNX graph"), (renamed, "an exported ONNX graph"),
                       (tmp_path / "model.json", "a JSON file (an export manifest?)")):
        r = _cli("--ckpt", str(path), "--output-dir", str(tmp_path / "out"))
        assert r.returncode == 2 and "Traceback" not in r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: --ckpt {path} is {what}, not a checkpoint: "
                                                       "--ckpt wants a PyTorch .pth"), r.stderr
        assert "weights_only" not in r.stderr and len(lines[0]) < 120 + len(str(path))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("make,args,needle", [
    (None, ["--ckpt", "{tmp}/missing.pth"], "not found"),
    ("text", ["--ckpt", "{tmp}/x.pth"], "not"),
    ("demo", ["--ckpt", "{tmp}/x.pth", "--variant", "T"], "not LRFormer-T"),
    ("demo", ["--ckpt", "{tmp}/x.pth", "--size", "100x100"], "multiple of 32"),
    ("demo", ["--ckpt", "{tmp}/x.pth", "--size", "0x64"], "positive"),
    ("demo", ["--ckpt", "{tmp}/x.pth", "--size=-64x64"], "positive"),
    ("demo", ["--ckpt", "{tmp}/x.pth", "--batch", "0"], "batch"),
    ("demo", ["--ckpt", "{tmp}/x.pth", "--int8"], "--calib"),
    (None, [], "--ckpt"),
])
def test_cli_bad_input_is_one_line(tmp_path, make, args, needle):
    ckpt = tmp_path / "x.pth"
    if make == "text":
        ckpt.write_text("this is not a checkpoint\n")
    elif make == "demo":
        write_official_checkpoint(ckpt, randomized_model("demo", 6))
    r = _cli(*[a.format(tmp=tmp_path) for a in args], "--output-dir", str(tmp_path / "o"))
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.stderr
    assert not list((tmp_path / "o").glob("*.onnx")) if (tmp_path / "o").exists() else True


def test_info_json_matches_reference_figures():
    r = subprocess.run([sys.executable, "-m", "lrformer_deploy.cli.info", "--variant", "T", "--json"],
                       capture_output=True, text=True, timeout=120)
    info = json.loads(r.stdout)
    assert info["params"] == 13264894 and round(info["gmacs"], 1) == 16.5
    r = subprocess.run([sys.executable, "-m", "lrformer_deploy.cli.info", "--size", "0x0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr


def test_cli_int8_below_agreement_threshold_is_an_error(tmp_path, shared_video, monkeypatch, capsys):
    """A reduced-precision graph below --min-agreement fails the export with one line and leaves no graph
    behind; random weights without the flag only report agreement."""
    from lrformer_deploy.cli.export import main
    from lrformer_deploy.precision import pipeline
    from lrformer_deploy.precision.accuracy import AccuracyBelowThreshold

    def below(*args, min_agreement=None, **kwargs):  # a checkpoint whose INT8 graph disagrees with FP32
        raise AccuracyBelowThreshold(f"mask agreement 0.5 is below {min_agreement}", {"mask_agreement": 0.5})

    ckpt = write_official_checkpoint(tmp_path / "demo.pth", randomized_model("demo", 6, seed=5))
    monkeypatch.setattr(pipeline, "accuracy_report", below)
    assert main(["--ckpt", str(ckpt), "--size", "64x64", "--output-dir", str(tmp_path / "o"), "--no-engine",
                 "--int8", "--calib", str(shared_video), "--calib-count", "4", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error:") and "below 0.98" in err, err
    assert not (tmp_path / "o" / "lrformer-demo-synthetic-64x64-int8.onnx").exists()  # no orphan graph
    monkeypatch.undo()
    r = _cli("--variant", "demo", "--num-classes", "6", "--size", "64x64", "--output-dir", str(tmp_path / "r"),
             "--no-engine", "--int8", "--calib", str(shared_video), "--calib-count", "4")
    assert r.returncode == 0, r.stderr
    assert "not enforced" in r.stderr and (tmp_path / "r" / "lrformer-demo-synthetic-64x64-int8.json").is_file()


def test_failed_onnxruntime_check_is_an_error(tmp_path, monkeypatch):
    """If ONNX Runtime disagrees with PyTorch the export fails (and the CLI prints one error line)."""
    from lrformer_deploy.build import export as ex

    real = ex.verify_with_onnxruntime

    def skewed(*args, **kwargs):
        report = real(*args, **kwargs)
        report["logits_max_abs_diff"] = 1.0   # as if the graph computed something else
        return report

    monkeypatch.setattr(ex, "verify_with_onnxruntime", skewed)
    with pytest.raises(ex.VerificationFailed, match="differs from PyTorch"):
        export_onnx(randomized_model("demo", 6), tmp_path, "bad", size=(64, 64), quiet=True)
    assert not (tmp_path / "bad.json").exists()   # no manifest vouches for an unverified graph
