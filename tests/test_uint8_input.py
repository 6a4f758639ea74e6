"""lrformer-export --input uint8 / --mask-dtype uint8: the graph casts, normalises and transposes the frame
itself. Masks must be identical to the float-input graph's on real frames under ONNX Runtime, and every
runtime path (Segmenter, video pipeline, Triton configs, engine verification) feeds uint8 when the
manifest says so."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import read_video, to_uint8_model
from lrformer_deploy.build.request import BuildRequest
from lrformer_deploy.errors import UserError


def uint8_tiny(tiny_model, **kw):
    return to_uint8_model(tiny_model(**kw))


def test_segmenter_feeds_uint8_frames_and_masks_match_the_float_graph(tiny_model, shared_video):
    from lrformer_deploy.runtime import Segmenter

    frames = read_video(shared_video)[0][::50]
    float_graph = tiny_model(size=(64, 96))
    u8 = uint8_tiny(tiny_model, size=(64, 96))
    with Segmenter(float_graph) as a, Segmenter(u8) as b:
        assert b.spec.input_dtype == "uint8" and b.spec.model_input_shape == (1, 64, 96, 3)
        tensor, _ = b.preprocessor.batch(frames[:1], 1)
        assert tensor.dtype == np.uint8 and tensor.shape == (1, 64, 96, 3)
        # 4x fewer bytes per frame from the host to the model
        assert a.preprocessor.batch(frames[:1], 1)[0].nbytes == 4 * tensor.nbytes
        for fa, fb in zip(a.segment_batch(frames), b.segment_batch(frames)):
            assert np.array_equal(fa, fb)


def test_uint8_rewrite_records_the_io_and_checks_its_limits(tiny_model):
    import onnx

    from lrformer_deploy.build.uint8 import uint8_input, uint8_mask

    u8 = uint8_tiny(tiny_model, size=(64, 96))
    proto = onnx.load(str(u8))
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 64, 96, 3]
    assert out.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    manifest = json.loads(u8.with_suffix(".json").read_text())
    assert manifest["input"]["dtype"] == "uint8" and manifest["input"]["layout"] == "NHWC"
    assert manifest["input"]["shape"] == [1, 64, 96, 3] and manifest["output"]["dtype"] == "uint8"
    import jsonschema

    from lrformer_deploy.manifest import SCHEMA_PATH

    schema = json.loads(SCHEMA_PATH.read_text())  # the tiny manifest is partial: its input/output records
    jsonschema.validate(manifest["input"], schema["properties"]["input"])
    jsonschema.validate(manifest["output"], schema["properties"]["output"])
    with pytest.raises(UserError, match="at most 256"):
        uint8_mask(onnx.load(str(tiny_model())), 300)
    with pytest.raises(UserError, match="not a float"):
        uint8_input(proto, [0, 0, 0], [1, 1, 1])  # already uint8


def test_uint8_with_reduced_precision_is_refused_before_any_work(tmp_path):
    from lrformer_deploy.build.request import validate

    for options in ({"input_dtype": "uint8"}, {"mask_dtype": "uint8"}):
        with pytest.raises(UserError, match="FP32 graph only"):
            validate(BuildRequest(variant="demo", precisions=("fp16",), export_options=options, output_dir=tmp_path))


def test_video_pipeline_masks_equal_the_float_graphs(tiny_model, shared_video, tmp_path):
    """lrformer-infer's video pipeline (threads, batches) feeds the uint8 graph through the same preprocessor."""
    import cv2

    from lrformer_deploy.cli.infer import main

    float_graph = tiny_model(size=(64, 96))
    u8 = uint8_tiny(tiny_model, size=(64, 96))
    for model, out in ((float_graph, tmp_path / "f"), (u8, tmp_path / "u")):
        assert main([str(shared_video), "--model", str(model), "--backend", "onnxruntime", "--no-overlay",
                     "--save-mask", str(out), "--max-frames", "6", "--quiet"]) == 0
    names = sorted(p.name for p in (tmp_path / "f").iterdir())
    assert len(names) == 6 and names == sorted(p.name for p in (tmp_path / "u").iterdir())
    for name in names:
        a = cv2.imread(str(tmp_path / "f" / name), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(tmp_path / "u" / name), cv2.IMREAD_UNCHANGED)
        assert a is not None and np.array_equal(a, b)


@pytest.mark.slow
def test_lrformer_uint8_graph_masks_identical_on_real_frames(tmp_path, shared_video):
    """The real exporter: LRFormer (demo configuration, random weights) at a small size, float vs uint8."""
    pytest.importorskip("torch")
    from lrformer_deploy.build import build
    from lrformer_deploy.runtime import Segmenter

    common = dict(variant="demo", size=(96, 160), engine="off", quiet=True, output_dir=tmp_path)
    f = build(BuildRequest(name="f", **common))["fp32"]
    u = build(BuildRequest(name="u", export_options={"input_dtype": "uint8", "mask_dtype": "uint8"}, **common))["fp32"]
    assert u.manifest["verification"]["io_rewrite"]["identical"]
    assert u.manifest["input"]["dtype"] == "uint8" and u.manifest["output"]["dtype"] == "uint8"
    from manifest_schema import validate_manifest

    validate_manifest(json.loads(u.manifest_path.read_text()))
    frames = read_video(shared_video)[0][::40]
    with Segmenter(f.onnx, backend="onnxruntime") as a, Segmenter(u.onnx, backend="onnxruntime") as b:
        masks_a, masks_b = a.segment_batch(frames), b.segment_batch(frames)
    assert len(masks_a) == len(frames) >= 9
    for ma, mb in zip(masks_a, masks_b):
        assert np.array_equal(ma, mb)


def test_bench_refuses_a_uint8_graph_in_one_line(tiny_model, capsys):
    from lrformer_deploy.cli.bench import main

    u8 = uint8_tiny(tiny_model, size=(64, 96))
    assert main(["--model", str(u8)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "uint8" in err and len(err.strip().splitlines()) == 1


def test_reuse_never_mixes_float_and_uint8_graphs():
    from lrformer_deploy.build.pipeline import _same_fp32
    from lrformer_deploy.build.uint8 import manifest_io

    m = {"model": {"checkpoint_sha256": None, "variant": "T", "num_classes": 150}, "opset": 17, "target": "cpu",
         "input": {"shape": [1, 3, 64, 96], "dtype": "float32"}, "output": {"kind": "mask", "dtype": "int32"}}
    args = ((64, 96), "mask", 150, None, "T")
    float_req = BuildRequest(variant="T", target="cpu")
    u8_req = BuildRequest(variant="T", target="cpu", export_options={"input_dtype": "uint8", "mask_dtype": "uint8"})
    assert _same_fp32(m, float_req, *args) and not _same_fp32(m, u8_req, *args)
    manifest_io(m, "uint8", "uint8")
    assert _same_fp32(m, u8_req, *args) and not _same_fp32(m, float_req, *args)
