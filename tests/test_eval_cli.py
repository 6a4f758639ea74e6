"""lrformer-eval: bad input as one-line errors (subprocess), tables/JSON with stand-in and real ONNX models."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from lrformer_deploy.data import synthetic
from lrformer_deploy.cli import eval as eval_cli
from lrformer_deploy.data.evaluation import ConfusionMatrix, open_eval_folder

SIZE = (48, 64)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    return synthetic.write_dataset(tmp_path_factory.mktemp("synth"), 0, 4, size=SIZE, seed=11)


def _main(args):
    return eval_cli.main([str(a) for a in args])


def _run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lrformer_deploy.cli.eval", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


def _assert_one_line_error(proc, fragment):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], proc.stderr


def test_missing_data_folder(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    _assert_one_line_error(_run_cli("--model", model, "--data", tmp_path / "nope"), "does not exist")


def test_missing_model_file(tmp_path, synth_root):
    _assert_one_line_error(_run_cli("--model", tmp_path / "nope.onnx", "--data", synth_root), "nope.onnx")


def test_empty_dataset_and_unlabelled_dataset(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    empty = tmp_path / "empty"
    (empty / "images" / "val").mkdir(parents=True)
    (empty / "annotations" / "val").mkdir(parents=True)
    _assert_one_line_error(_run_cli("--model", model, "--data", empty), "no images found")
    cv2.imwrite(str(empty / "images" / "val" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    _assert_one_line_error(_run_cli("--model", model, "--data", empty), "no label files found")


def test_bad_limit_and_unknown_layout(tmp_path, synth_root):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    _assert_one_line_error(_run_cli("--model", model, "--data", synth_root, "--limit", "0"), "--limit")
    _assert_one_line_error(_run_cli("--model", model, "--data", tmp_path), "cannot tell the dataset layout")


# ------------------------------------------------------------------------------- stand-in Segmenter
class StandIn:
    """Mimics the runtime's Segmenter contract: callable BGR frame -> class ids at frame size."""

    truth: dict = {}

    def __init__(self, path, backend="auto", resize="stretch", device=None):
        self.model_path = path
        self.kind = "perfect" if "perfect" in str(path) else "zeros"
        self.class_names = synthetic.CLASS_NAMES
        self.input_size = SIZE
        self.backend_name = "stand-in"
        self.manifest = {"model": {"variant": "demo"}}
        self.calls = 0

    def __call__(self, frame):
        self.calls += 1
        if self.kind == "perfect":
            return StandIn.truth[frame.tobytes()].astype(np.int32)
        return np.zeros(frame.shape[:2], np.int32)


@pytest.fixture
def stand_in(monkeypatch, synth_root, tmp_path):
    folder = open_eval_folder(synth_root)
    StandIn.truth = {cv2.imread(str(s.image)).tobytes(): folder.read_label(s) for s in folder.samples}
    opened = []

    def fake_open(model, backend, device, resize):
        seg = StandIn(model, backend, resize, device)
        opened.append((seg, resize))
        return seg

    monkeypatch.setattr(eval_cli, "_open_segmenter", fake_open)
    paths = {}
    for name in ("perfect.onnx", "zeros.onnx"):
        paths[name] = tmp_path / name
        paths[name].write_bytes(b"stand-in")
    return paths, opened, folder


def test_compare_reports_delta_vs_first(stand_in, synth_root, capsys):
    paths, opened, folder = stand_in
    assert _main(["--compare", paths["perfect.onnx"], paths["zeros.onnx"], "--data", synth_root,
                          "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    perfect, zeros = doc["models"]
    assert perfect["model"] == "perfect.onnx" and perfect["mIoU"] == 1.0 and perfect["delta_mIoU"] is None
    labels = np.stack([folder.read_label(s) for s in folder.samples])
    bg_share = (labels == 0).mean()
    assert zeros["aAcc"] == pytest.approx(bg_share)
    assert zeros["mIoU"] == pytest.approx(bg_share / len(np.unique(labels)))
    assert zeros["delta_mIoU"] == pytest.approx(zeros["mIoU"] - 1.0)
    assert doc["data"]["images"] == 4 and doc["data"]["layout"] == "synthetic"
    assert all(seg.calls == 4 for seg, _ in opened)  # same images for every model


def test_table_output_and_limit(stand_in, synth_root, capsys):
    paths, opened, _ = stand_in
    assert _main(["--model", paths["zeros.onnx"], "--model", paths["perfect.onnx"],
                          "--data", synth_root, "--limit", "2", "--per-class"]) == 0
    out = capsys.readouterr().out
    assert "2 images" in out
    row = next(line for line in out.splitlines() if line.startswith("perfect.onnx"))
    assert "100.00" in row
    assert any(line.startswith("ring") for line in out.splitlines())  # per-class rows
    assert all(seg.calls == 2 for seg, _ in opened)


def test_official_resize_warns_when_graph_size_differs(stand_in, synth_root, capsys):
    paths, opened, _ = stand_in
    assert _main(["--model", paths["perfect.onnx"], "--data", synth_root, "--resize", "official",
                          "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    # synthetic preset: short side 256 -> a 48x64 scene's official size is 256x352, not the graph's 48x64
    assert doc["models"][0]["official_size_mismatch"] == 4
    assert "official" in captured.err and "stretched" in captured.err
    assert opened[0][1] == "stretch"


def test_class_count_mismatch_is_a_user_error(stand_in, synth_root, monkeypatch):
    paths, _, _ = stand_in
    original_init = StandIn.__init__

    def cityscapes_sized(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.class_names = tuple(f"c{i}" for i in range(19))

    monkeypatch.setattr(StandIn, "__init__", cityscapes_sized)
    from lrformer_deploy.errors import UserError
    with pytest.raises(UserError, match="predicts 19 classes"):
        eval_cli.main.__wrapped__(["--model", str(paths["perfect.onnx"]), "--data", str(synth_root)])


def test_default_model_used_without_model_flag(stand_in, synth_root, capsys):
    _, opened, _ = stand_in
    assert _main(["--data", synth_root, "--json"]) == 0
    assert opened[0][0].model_path is None  # the runtime resolves the demo model from None
    json.loads(capsys.readouterr().out)


# ----------------------------------------------------------------------------- real ONNX, real runtime
def _pixel_classifier_onnx(path, weight, bias):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    h, w = SIZE
    conv_w = numpy_helper.from_array(weight.reshape(6, 3, 1, 1).astype(np.float32), "w")
    conv_b = numpy_helper.from_array(bias.astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["logits"]),
         helper.make_node("ArgMax", ["logits"], ["ids"], axis=1, keepdims=0),
         helper.make_node("Cast", ["ids"], ["mask"], to=TensorProto.INT32)],
        "pixel_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, h, w])],
        [helper.make_tensor_value_info("mask", TensorProto.INT32, [1, h, w])],
        [conv_w, conv_b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_real_onnx_graph_through_the_runtime(tmp_path, synth_root, capsys):
    pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(6, 3)), rng.normal(size=6) * 0.1
    model = tmp_path / "pixel.onnx"
    _pixel_classifier_onnx(model, weight, bias)
    assert _main(["--model", model, "--data", synth_root, "--backend", "onnxruntime", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    # The same per-pixel classifier in numpy (graph input size == image size, so no resize).
    folder = open_eval_folder(synth_root)
    cm = ConfusionMatrix(6)
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    for s in folder.samples:
        rgb = cv2.imread(str(s.image))[..., ::-1].astype(np.float64)
        logits = ((rgb - mean) / std) @ weight.T + bias
        cm.update(logits.argmax(-1), folder.read_label(s))
    expected = cm.metrics()
    assert doc["models"][0]["mIoU"] == pytest.approx(expected.miou, abs=1e-3)
    assert doc["models"][0]["aAcc"] == pytest.approx(expected.aacc, abs=1e-3)
    assert doc["models"][0]["backend"]
