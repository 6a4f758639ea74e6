"""The mask head's tails: NCHW (TensorRT) and NHWC give the same masks; the CPU graphs' top-K tail
(build/mask_tail.py) agrees with them on >= 0.999 of real pixels on ONNX Runtime and OpenVINO.

Both graphs are exported from the shipped demo checkpoint and run by ONNX Runtime on real frames of
car-detection.mp4 (CC BY 4.0, Intel IoT DevKit sample videos).
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import cv2  # noqa: E402
import onnx  # noqa: E402

from lrformer_deploy.errors import UserError  # noqa: E402

SIZE = (256, 448)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """{"nchw": (onnx path, manifest path), "nhwc": ...} of the demo checkpoint at 256x448.

    One export (a dynamo export costs tens of seconds on 2 cores): the NCHW graph, then the NHWC one
    from it with the same rewrite export_onnx(mask_tail="nhwc") applies.
    """
    from lrformer_deploy.build import demo
    from lrformer_deploy.model.checkpoint import load_checkpoint
    from lrformer_deploy.data.datasets import get_dataset
    from lrformer_deploy.build.export import channels_last_mask_tail, export_onnx

    folder = tmp_path_factory.mktemp("tails")
    model = load_checkpoint(demo.CHECKPOINT, verbose=False)
    result = export_onnx(model, folder, "demo-nchw", size=SIZE, head="mask", quiet=True,
                         dataset=get_dataset("synthetic"), mask_tail="nchw")
    proto = onnx.load(str(result.onnx_path))
    assert channels_last_mask_tail(proto)
    nhwc = folder / "demo-nhwc.onnx"
    onnx.save(proto, str(nhwc))
    from lrformer_deploy.build.mask_tail import replace_with_topk_tail

    proto = onnx.load(str(result.onnx_path))
    assert replace_with_topk_tail(proto)
    onnx.checker.check_model(proto)
    topk = folder / "demo-topk.onnx"
    onnx.save(proto, str(topk))
    return {"nchw": (result.onnx_path, result.manifest_path), "nhwc": (nhwc, None), "topk": (topk, None)}


def _frames(video, count=6):
    cap = cv2.VideoCapture(str(video))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = []
    for index in np.linspace(0, total - 1, count).astype(int):
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(index))
        ok, frame = cap.read()
        assert ok, index
        frames.append(frame)
    cap.release()
    return frames


def test_each_graph_has_the_tail_it_was_asked_for(graphs):
    from lrformer_deploy.build.export import mask_tail_layout
    from lrformer_deploy.manifest import load_manifest

    for tail, (path, manifest_path) in graphs.items():
        proto = onnx.load(str(path))
        if tail == "topk":
            assert mask_tail_layout(proto) == "topk"
            ops = [n.op_type for n in proto.graph.node]
            full = [n.op_type for n in onnx.load(str(graphs["nchw"][0])).graph.node]
            # the final Resize (full-resolution class planes) is gone; the decoder's own Resizes stay
            assert "TopK" in ops and ops.count("Resize") == full.count("Resize") - 1
            continue
        assert mask_tail_layout(proto) == tail
        ops = [n.op_type for n in proto.graph.node][-4:]
        assert ops[-3:] == ["Resize", "ArgMax", "Cast"]
        assert (ops[0] == "Transpose") == (tail == "nhwc")
        argmax = next(n for n in proto.graph.node if n.op_type == "ArgMax")
        assert next(a.i for a in argmax.attribute if a.name == "axis") == (1 if tail == "nchw" else 3)
        sizes = next(i for i in proto.graph.initializer if i.name == proto.graph.node[-3].input[3])
        # NCHW resizes only H and W (what TensorRT's IResizeLayer wants): the class dim keeps its size.
        expect = [1, 6, *SIZE] if tail == "nchw" else [1, *SIZE, 6]
        assert onnx.numpy_helper.to_array(sizes).tolist() == expect
        if manifest_path is not None:
            assert load_manifest(manifest_path)["output"]["mask_tail"] == tail


def test_both_tails_give_identical_masks_on_real_frames(graphs, shared_video):
    from lrformer_deploy.data.datasets import get_dataset
    from lrformer_deploy.runtime.preprocess import preprocess_image

    preset = get_dataset("synthetic")
    batch = np.concatenate([preprocess_image(f, SIZE, preset.mean, preset.std, "RGB", "stretch")[0]
                            for f in _frames(shared_video)])
    masks = {}
    for tail, (path, _) in graphs.items():
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        masks[tail] = np.concatenate([sess.run(None, {"image": x[None]})[0] for x in batch])
    assert masks["nchw"].shape == (len(batch), *SIZE)
    assert len(np.unique(masks["nchw"])) > 1  # real content, not one class everywhere
    assert np.array_equal(masks["nchw"], masks["nhwc"])
    assert masks["topk"].shape == masks["nchw"].shape and masks["topk"].dtype == masks["nchw"].dtype
    assert (masks["topk"] == masks["nchw"]).mean() >= 0.999
    if importlib.util.find_spec("openvino") is not None:  # the same top-K graph on OpenVINO, f32
        from lrformer_deploy.runtime.backends.openvino import OpenVINORunner

        with OpenVINORunner(graphs["topk"][0], cache=False) as runner:
            ov = np.concatenate([runner.infer({"image": x[None]})["mask"] for x in batch])
        assert (ov == masks["nchw"]).mean() >= 0.999


def test_topk_tail_is_exact_where_few_classes_compete_and_bounded_elsewhere():
    """On a tail-only graph: logits whose cells hold at most K competing classes give exactly the Resize ->
    ArgMax masks; K = number of classes is exact everywhere; fewer candidates than competitors is not."""
    from onnx import TensorProto, helper

    from lrformer_deploy.build.mask_tail import replace_with_topk_tail

    def tail_graph(c, h, w, H, W):
        sizes = onnx.numpy_helper.from_array(np.array([1, c, H, W], np.int64), "sizes")
        nodes = [helper.make_node("Resize", ["logits", "", "", "sizes"], ["up"], mode="linear"),
                 helper.make_node("ArgMax", ["up"], ["ids"], axis=1, keepdims=0),
                 helper.make_node("Cast", ["ids"], ["mask"], to=TensorProto.INT32)]
        g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, c, h, w])],
                              [helper.make_tensor_value_info("mask", TensorProto.INT32, [1, H, W])], [sizes])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return m

    def run(model, x):
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"logits": x})[0]

    rng = np.random.default_rng(0)
    c, h, w, H, W = 12, 8, 10, 64, 80
    # smooth maps of 3 regions: every cell sees at most 3 classes well above the rest
    yy, xx = np.mgrid[0:h, 0:w]
    region = ((xx > 3).astype(int) + (yy > 4)).astype(int)
    x = rng.normal(-5, 0.3, (1, c, h, w)).astype(np.float32)
    for k in range(3):
        x[0, k] += np.where(region == k, 4.0, 0.0) + rng.normal(0, 0.5, (h, w))
    ref = run(tail_graph(c, h, w, H, W), x)
    for k, exact in ((3, True), (c, True)):
        m = tail_graph(c, h, w, H, W)
        assert replace_with_topk_tail(m, k=k)
        got = run(m, x)
        assert (got == ref).mean() == 1.0 if exact else True
    noise = rng.normal(0, 1, (1, c, h, w)).astype(np.float32)  # every class competes everywhere
    full, one = tail_graph(c, h, w, H, W), tail_graph(c, h, w, H, W)
    assert replace_with_topk_tail(full, k=c) and replace_with_topk_tail(one, k=1)
    ref = run(tail_graph(c, h, w, H, W), noise)
    assert (run(full, noise) == ref).mean() >= 0.9999  # all classes are candidates: exact up to rounding
    assert (run(one, noise) == ref).mean() < 0.99  # one candidate cannot follow a boundary


def test_cpu_export_records_the_topk_tail(tmp_path):
    from lrformer_deploy.build.export import export_onnx
    from lrformer_deploy.manifest import load_manifest
    from lrformer_deploy.model.lrformer import build_model

    result = export_onnx(build_model("demo", 6), tmp_path, size=(64, 64), mask_tail="topk", quiet=True)
    m = load_manifest(result.manifest_path)
    assert m["output"]["mask_tail"] == "topk"
    assert m["verification"]["mask_agreement"] >= 0.999  # vs PyTorch's upsample + argmax


def test_the_manifest_records_the_nhwc_tail_too(tmp_path):
    from lrformer_deploy.build.export import export_onnx
    from lrformer_deploy.manifest import load_manifest
    from lrformer_deploy.model.lrformer import build_model

    result = export_onnx(build_model("demo", 6), tmp_path, size=(64, 64), mask_tail="nhwc", quiet=True, verify=False)
    assert load_manifest(result.manifest_path)["output"]["mask_tail"] == "nhwc"


def test_unknown_tail_is_a_user_error(tmp_path):
    from lrformer_deploy.build.export import export_onnx
    from lrformer_deploy.model.lrformer import build_model

    with pytest.raises(UserError, match="mask tail"):
        export_onnx(build_model("demo", 6), tmp_path, size=(64, 64), mask_tail="nwhc", quiet=True)
