"""Shared pytest fixtures: the real sample video, and tiny ONNX models with manifests in the contract format."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

# `import openvino` sends OpenVINO's usage telemetry and writes ~/intel unless it runs "in CI"; tests never do.
os.environ.setdefault("CI", "true")

REPO = Path(__file__).resolve().parent.parent
SHARED_VIDEO = Path(os.environ.get("LRFORMER_SHARED_VIDEO", REPO.parent / "shared" / "data" / "car-detection.mp4"))

# The tiny models classify each pixel by its dominant colour: class 0 red, 1 green, 2 blue.
TINY_CLASS_NAMES = ["red", "green", "blue"]
TINY_PALETTE = [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]


@pytest.fixture(scope="session")
def shared_video() -> Path:
    """The real traffic clip (768x432, 12.5 fps, 377 frames; CC BY 4.0, Intel IoT DevKit sample videos)."""
    if not SHARED_VIDEO.is_file():
        pytest.skip(f"sample video not present: {SHARED_VIDEO}")
    return SHARED_VIDEO


def default_signals() -> None:
    """preexec_fn for a child a test sends signals to: the terminal's default handling of SIGINT, SIGTERM
    and SIGHUP. A runner started in the background or under nohup passes them on ignored, and an
    ignored signal stays ignored in our CLIs (on purpose: nohup must keep working)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def build_tiny_model(
    folder: Path,
    name: str = "tiny",
    head: str = "mask",
    size: tuple[int, int] = (64, 64),
    batch: int = 1,
    num_classes: int = 3,
    manifest: bool = True,
) -> Path:
    """Write NAME.onnx (+ NAME.json) following the exporter's I/O contract and return the .onnx path.

    head="mask":   image -> 1x1 Conv to classes -> ArgMax -> Cast int32 -> "mask" [N, H, W]
    head="logits": image -> AveragePool 8x8/8 -> 1x1 Conv -> "logits" [N, C, H/8, W/8]
    The conv is the identity on the three colour channels (extra classes get a large negative bias), so
    a pixel's class is its dominant normalised colour channel.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    assert num_classes >= 3
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    H, W = size
    weight = np.zeros((num_classes, 3, 1, 1), dtype=np.float32)
    for c in range(3):
        weight[c, c, 0, 0] = 1.0
    bias = np.zeros(num_classes, dtype=np.float32)
    bias[3:] = -100.0
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, H, W])
    if head == "mask":
        nodes = [
            helper.make_node("Conv", ["image", "w", "b"], ["scores"]),
            helper.make_node("ArgMax", ["scores"], ["ids"], axis=1, keepdims=0),
            helper.make_node("Cast", ["ids"], ["mask"], to=TensorProto.INT32),
        ]
        output = helper.make_tensor_value_info("mask", TensorProto.INT32, [batch, H, W])
        out_shape, out_dtype, stride = [batch, H, W], "int32", 1
    elif head == "logits":
        nodes = [
            helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
            helper.make_node("Conv", ["pooled", "w", "b"], ["logits"]),
        ]
        output = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, num_classes, H // 8, W // 8])
        out_shape, out_dtype, stride = [batch, num_classes, H // 8, W // 8], "float32", 8
    else:
        raise ValueError(head)
    graph = helper.make_graph(nodes, name, [image], [output], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx_path = folder / f"{name}.onnx"
    onnx.save(model, str(onnx_path))
    if manifest:
        names = TINY_CLASS_NAMES + [f"extra{i}" for i in range(3, num_classes)]
        palette = TINY_PALETTE + [[(37 * i) % 256, (91 * i) % 256, (53 * i) % 256] for i in range(3, num_classes)]
        data = {
            "format": "lrformer-deploy-manifest", "schema_version": 1, "name": name,
            "model": {"variant": "tiny-test", "num_classes": num_classes, "dataset": "test-colours",
                      "class_names": names, "palette": palette},
            "input": {"name": "image", "shape": [batch, 3, H, W], "layout": "NCHW", "dtype": "float32",
                      "color_order": "RGB", "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                      "scale": "0..255 before mean/std"},
            "output": {"name": head, "kind": head, "shape": out_shape, "dtype": out_dtype, "stride": stride,
                       "meaning": "test model: dominant colour channel"},
            "precision": "fp32", "opset": 17,
            "artifacts": {"onnx": {"file": onnx_path.name, "sha256": ""}},
            "created": "2025-01-01T00:00:00Z",
        }
        (folder / f"{name}.json").write_text(json.dumps(data, indent=2))
    return onnx_path


def to_uint8_model(onnx_path: Path) -> Path:
    """Rewrite a model from build_tiny_model (and its manifest) in place for uint8 frames in and, for a mask
    head, uint8 class ids out, as lrformer-export --input uint8 --mask-dtype uint8 does (no torch needed)."""
    import onnx

    from lrformer_deploy.build.uint8 import manifest_io, uint8_input, uint8_mask

    man_path = onnx_path.with_suffix(".json")
    manifest = json.loads(man_path.read_text())
    proto = onnx.load(str(onnx_path))
    uint8_input(proto, manifest["input"]["mean"], manifest["input"]["std"])
    mask = manifest["output"]["kind"] == "mask"
    if mask:
        uint8_mask(proto, manifest["model"]["num_classes"])
    onnx.checker.check_model(proto)
    onnx.save(proto, str(onnx_path))
    manifest_io(manifest, "uint8", "uint8" if mask else "int32")
    man_path.write_text(json.dumps(manifest))
    return onnx_path


@pytest.fixture
def tiny_model(tmp_path_factory):
    """Factory: tiny_model(head="mask"|"logits", size=(H, W), batch=1, num_classes=3, manifest=True) -> .onnx path."""
    def make(**kwargs) -> Path:
        folder = tmp_path_factory.mktemp("tiny-model")
        return build_tiny_model(folder, **kwargs)

    return make


def read_video(path) -> tuple[list, float]:
    """Every decodable frame of a video (BGR) and its fps; fails the test when the file does not open."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"cannot open {path}"
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames, fps


# --------------------------------------------------------------------------- markers that really skip
_PRESENT: dict[str, str | None] = {}


def _gpu_missing() -> str | None:
    """None when an NVIDIA GPU answers nvidia-smi, else why not (asked once per session)."""
    if "gpu" not in _PRESENT:
        import shutil
        import subprocess

        smi = shutil.which("nvidia-smi")
        reason = "no NVIDIA GPU (nvidia-smi is not installed)"
        if smi is not None:
            try:
                out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=False)
                reason = None if out.returncode == 0 and "GPU" in out.stdout else "nvidia-smi lists no GPU"
            except (OSError, subprocess.TimeoutExpired) as exc:
                reason = f"nvidia-smi failed: {exc}"
        _PRESENT["gpu"] = reason
    return _PRESENT["gpu"]


def _tensorrt_missing() -> str | None:
    if "tensorrt" not in _PRESENT:
        try:
            import tensorrt  # noqa: F401
            _PRESENT["tensorrt"] = None
        except Exception as exc:  # ImportError, or OSError from a wheel without its CUDA libraries
            _PRESENT["tensorrt"] = f"TensorRT is not importable ({exc.__class__.__name__}: {exc})"
    return _PRESENT["tensorrt"]


def pytest_runtest_setup(item):
    """`gpu`-marked tests skip without an NVIDIA GPU, `tensorrt`-marked ones without importable TensorRT
    (declared markers alone skip nothing: on a machine with TensorRT and no GPU they would error)."""
    if item.get_closest_marker("tensorrt") is not None:
        reason = _tensorrt_missing()
        if reason:
            pytest.skip(reason)
    if item.get_closest_marker("gpu") is not None:
        reason = _gpu_missing()
        if reason:
            pytest.skip(reason)


def serve_module(name: str):
    """A module of the serve extra: required in the `serve` nox session (LRFORMER_REQUIRE_SERVE=1), where these
    tests must run, and a skip elsewhere (the `tests` session has numpy 2, which PyTriton cannot share)."""
    import importlib

    if os.environ.get("LRFORMER_REQUIRE_SERVE"):
        return importlib.import_module(name)
    return pytest.importorskip(name, reason="needs the serve extra; `nox -s serve` runs it")


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid PNG of a few tens of kB declaring width x height pixels (1-bit grey, all zero)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))
