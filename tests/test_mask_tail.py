"""The mask head's two tails (NCHW for TensorRT, NHWC for ONNX Runtime on CPUs) give the same masks.

Both graphs are exported from the shipped demo checkpoint and run by ONNX Runtime on real frames of
car-detection.mp4 (CC BY 4.0, Intel IoT DevKit sample videos).
"""
from __future__ import annotations

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
    return {"nchw": (result.onnx_path, result.manifest_path), "nhwc": (nhwc, None)}


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
