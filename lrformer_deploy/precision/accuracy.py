"""Accuracy of a reduced-precision graph against its FP32 reference, measured in ONNX Runtime (CPU).

Three figures per graph:
- logits relative error ||test - ref|| / ||ref|| (float64 norms over the whole batch of logits);
- pixel agreement of the class masks (fraction of pixels with the same class id);
- argmax agreement on the stride-8 logits themselves (the class decision before upsampling).

Mask-head graphs end in Resize -> ArgMax -> Cast(int32), so their logits are internal. The report
exposes the stride-8 logits (the input of the final Resize, found by walking back from the ArgMax
through Cast/Identity nodes) as an extra output of a temporary copy of both graphs. The conversion
passes keep tensor names, so the same tensor is found in the FP16 and the Q/DQ graph. The error is
measured there, before the (linear) upsampling, i.e. on exactly what a logits-head export would give.
The upsampled pre-ArgMax tensor of the reference (for the CPU graphs' top-K tail: the interpolated scores
of each pixel's candidate classes) is also exposed to tell how many disagreeing pixels were near-ties in FP32 (top-2 margin below 1% of the logit range): those flip under any rounding.

The graph under test runs on ONNX Runtime, or (test_backend="openvino") on OpenVINO's CPU plugin with the
inference precision it would run with: that is how bf16 (the FP32 graph computed in bf16) is measured.

Thresholds (min_agreement): FP16 0.995 — FP16 storage rounding (~5e-4 relative) only flips pixels
whose two best classes are within that margin, which in a trained model is a thin band on class
boundaries; losing more than 0.5% of pixels means something overflowed or underflowed. INT8 0.98 —
8-bit activations add ~1% relative logit noise, published PTQ results for segmentation transformers
lose well under 1 mIoU, and 2% disagreeing pixels is the point where boundaries visibly degrade. BF16
0.99 — bf16 keeps 8 mantissa bits (~0.4% relative rounding, 8x FP16's), with FP32 accumulation in
OpenVINO's kernels; ~1% of pixels near class boundaries may flip.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from lrformer_deploy.errors import UserError

DEFAULT_MIN_AGREEMENT = {"fp16": 0.995, "int8": 0.98, "bf16": 0.99}


class AccuracyBelowThreshold(UserError):
    """Mask agreement under min_agreement; `.report` holds the full measurement."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report
NEAR_TIE_FRACTION = 0.01


def _infer(path):
    import onnx

    model = onnx.load(str(path))
    return onnx.shape_inference.infer_shapes(model, strict_mode=False)


def _producers(model) -> dict:
    return {o: n for n in model.graph.node for o in n.output}


def _through_casts(producer: dict, name: str) -> tuple[str, object]:
    node = producer.get(name)
    while node is not None and node.op_type in ("Cast", "Identity"):
        name = node.input[0]
        node = producer.get(name)
    return name, node


def compare_points(model) -> dict:
    """Which tensors to compare: {"head", "logits", "pre_argmax", "mask"} (names; None when absent)."""
    outputs = [o.name for o in model.graph.output]
    producer = _producers(model)
    if "logits" in outputs or len(outputs) == 1 and "mask" not in outputs:
        name = "logits" if "logits" in outputs else outputs[0]
        return {"head": "logits", "logits": name, "pre_argmax": None, "mask": None}
    if "mask" not in outputs:
        raise UserError(f"graph has neither a 'mask' nor a 'logits' output (outputs: {outputs}).")
    pad = next((n for n in model.graph.node if n.name == "masktail_pad"), None)
    if pad is not None:  # the CPU graphs' top-K tail (build/mask_tail.py): candidates' scores, classes on axis 1
        return {"head": "mask", "logits": pad.input[0], "pre_argmax": "masktail_scores", "mask": "mask",
                "class_axis": 1}
    _, argmax = _through_casts(producer, "mask")
    if argmax is None or argmax.op_type != "ArgMax":
        raise UserError("the 'mask' output is not produced by an ArgMax: cannot locate the logits to compare.")
    pre = argmax.input[0]
    src, resize = _through_casts(producer, pre)
    logits = resize.input[0] if resize is not None and resize.op_type == "Resize" else src
    logits, _ = _through_casts(producer, logits)
    # The exporter's tail is channels-last (ArgMax over axis 3), other graphs may reduce axis 1.
    class_axis = next((a.i for a in argmax.attribute if a.name == "axis"), 0)
    return {"head": "mask", "logits": logits, "pre_argmax": pre, "mask": "mask", "class_axis": class_axis}


def _top2_margin(scores: np.ndarray) -> np.ndarray:
    """Best minus second-best score along axis 1 (0 where the best is tied); a max and a masked max
    instead of a sort over the classes (0.9 s -> 0.5 s per 150-class 512x896 frame)."""
    top = scores.max(axis=1, keepdims=True)
    is_top = scores == top
    second = np.where(is_top, -np.inf, scores).max(axis=1)
    return np.where(is_top.sum(axis=1) > 1, 0, top[:, 0] - second)


def _tensor_names(model) -> set[str]:
    g = model.graph
    return {o for n in g.node for o in n.output} | {i.name for i in g.initializer} | {i.name for i in g.input}


def _with_outputs(path, extra: list[str]):
    import onnx

    model = _infer(path)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(model.graph.value_info) + list(model.graph.output)}
    present = {o.name for o in model.graph.output}
    for name in extra:
        if name and name not in present:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, types.get(name, 1), None))
    return model


def _session_with(path, extra: list[str]):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(_with_outputs(path, extra).SerializeToString(), opts, providers=["CPUExecutionProvider"])


class _OpenVINOSession:
    """The two calls of an ORT session the report uses, on OpenVINO's CPU plugin at `precision`."""

    def __init__(self, path, extra: list[str], precision: str, folder: Path):
        import onnx

        from lrformer_deploy.runtime.backends.openvino import OpenVINORunner

        model = _with_outputs(path, extra)
        copy = folder / "test-with-outputs.onnx"
        onnx.save(model, str(copy))
        self.input = model.graph.input[0]
        self.runner = OpenVINORunner(copy, precision=precision, cache=False).activate()
        self.names = [o.name for o in model.graph.output]
        self.inference_precision = self.runner.inference_precision()

    def get_inputs(self):
        return [self.input]

    def get_outputs(self):
        import types

        return [types.SimpleNamespace(name=n) for n in self.names]

    def run(self, _names, feed):
        out = self.runner.infer({self.input.name: next(iter(feed.values()))})
        return [out[n] for n in self.names]


def accuracy_report(
    ref_onnx: str | Path,
    test_onnx: str | Path,
    inputs: np.ndarray,
    *,
    precision: str | None = None,
    min_agreement: float | None = None,
    quiet: bool = True,
    test_backend: str = "onnxruntime",
) -> dict:
    """Compare `test_onnx` with the FP32 `ref_onnx` on `inputs` (N x 3 x H x W float32, preprocessed).

    min_agreement: mask agreement below it raises UserError; None takes DEFAULT_MIN_AGREEMENT[precision]
    (no check when neither is given). Returns the dict stored in the manifest's precision_details.
    test_backend "openvino" runs `test_onnx` on OpenVINO's CPU plugin at `precision` (bf16: the FP32 graph).
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lrformer-accuracy-") as tmp:
        return _accuracy_report(ref_onnx, test_onnx, inputs, precision, min_agreement, quiet, test_backend, Path(tmp))


def _accuracy_report(ref_onnx, test_onnx, inputs, precision, min_agreement, quiet, test_backend, tmp: Path) -> dict:
    from lrformer_deploy.precision.fp16 import batches
    from lrformer_deploy.precision.measure import progress

    inputs = np.asarray(inputs, dtype=np.float32)
    if inputs.ndim != 4 or len(inputs) == 0:
        raise UserError("the accuracy check needs at least one input frame (N x 3 x H x W).")
    ref_model, test_model = _infer(ref_onnx), _infer(test_onnx)
    points = compare_points(ref_model)
    test_names = _tensor_names(test_model)
    logits_name = points["logits"]
    if logits_name not in test_names:  # fall back to the tensor ArgMax reads in the test graph
        logits_name = compare_points(test_model)["pre_argmax"] if points["head"] == "mask" else points["logits"]
    ref_extra = [points["logits"], points["pre_argmax"]]
    ref_sess = _session_with(ref_onnx, [n for n in ref_extra if n])
    if test_backend == "openvino":
        test_sess = _OpenVINOSession(test_onnx, [logits_name], precision or "fp32", tmp)
        backend = f"openvino CPU, inference precision {test_sess.inference_precision}"
    else:
        test_sess = _session_with(test_onnx, [logits_name])
        backend = "onnxruntime CPUExecutionProvider"
    ref_in = ref_sess.get_inputs()[0]

    diff_sq = ref_sq = 0.0
    per_frame_err, agree, agree_clear, agree_logits = [], [], [], []
    near_tie_disagreements = disagreements = 0
    t_ref, t_test = [], []
    bar = progress(len(inputs), "accuracy check", quiet)
    for batch in batches(inputs, ref_in.shape):
        t = time.perf_counter()
        ref_out = dict(zip([o.name for o in ref_sess.get_outputs()], ref_sess.run(None, {ref_in.name: batch})))
        t_ref.append(time.perf_counter() - t)
        t = time.perf_counter()
        test_out = dict(zip([o.name for o in test_sess.get_outputs()],
                            test_sess.run(None, {test_sess.get_inputs()[0].name: batch})))
        t_test.append(time.perf_counter() - t)
        a = np.asarray(test_out[logits_name], np.float64)
        b = np.asarray(ref_out[points["logits"]], np.float64)
        if a.shape != b.shape:
            raise UserError(f"logits shapes differ between the graphs: {a.shape} vs {b.shape}.")
        d2, r2 = float(np.sum((a - b) ** 2)), float(np.sum(b * b))
        diff_sq += d2
        ref_sq += r2
        per_frame_err.append(np.sqrt(d2 / r2) if r2 > 0 else 0.0)
        axis = points.get("class_axis", 1)
        agree_logits.append(float(np.mean(a.argmax(axis=axis) == b.argmax(axis=axis))))
        if points["head"] == "mask":
            m_ref, m_test = ref_out["mask"], test_out["mask"]
            scores = np.moveaxis(np.asarray(ref_out[points["pre_argmax"]], np.float32), points["class_axis"], 1)
        else:  # logits head: the class decision at the logits' own stride
            m_ref, m_test = b.argmax(axis=1), a.argmax(axis=1)
            scores = b.astype(np.float32)
        same = m_ref == m_test
        agree.append(float(same.mean()))
        margin = _top2_margin(scores)
        near_tie = margin < NEAR_TIE_FRACTION * float(scores.max() - scores.min() + 1e-12)
        disagreements += int((~same).sum())
        near_tie_disagreements += int((~same & near_tie).sum())
        clear = ~near_tie
        agree_clear.append(float(same[clear].mean()) if clear.any() else 1.0)
        bar.update(len(batch))

    bar.close()
    agreement = float(np.mean(agree))
    threshold = min_agreement if min_agreement is not None else DEFAULT_MIN_AGREEMENT.get(precision or "")
    report = {
        "reference": Path(ref_onnx).name,
        "graph": Path(test_onnx).name,
        "backend": backend,
        "reference_backend": "onnxruntime CPUExecutionProvider",
        "frames": int(len(inputs)),
        "compared_tensor": points["logits"] if points["head"] == "logits" else
        f"{points['logits']} (stride-8 logits before the final Resize)",
        "logits_rel_error": float(f"{np.sqrt(diff_sq / ref_sq) if ref_sq > 0 else 0.0:.4g}"),
        "logits_rel_error_max_frame": float(f"{max(per_frame_err):.4g}"),
        "mask_agreement": round(agreement, 6),
        "mask_agreement_min_frame": round(float(min(agree)), 6),
        # the class decision on the compared logits themselves (stride 8 for LRFormer), before upsampling
        "logits_argmax_agreement": round(float(np.mean(agree_logits)), 6),
        "mask_agreement_excluding_near_ties": round(float(np.mean(agree_clear)), 6),
        "disagreeing_pixels_near_ties": f"{near_tie_disagreements}/{disagreements}",
        "min_agreement": threshold,
        "passed": threshold is None or agreement >= threshold,
        ("ort_cpu_ms_median" if test_backend == "onnxruntime" else "cpu_ms_median"): {"reference": round(1000 * float(np.median(t_ref)), 2),
                              "graph": round(1000 * float(np.median(t_test)), 2)},
    }
    if threshold is not None and agreement < threshold:
        raise AccuracyBelowThreshold(
            f"{Path(test_onnx).name}: mask agreement with FP32 is {agreement:.4f}, below the required "
            f"{threshold:.4f} (logits relative error {report['logits_rel_error']:.3g}); "
            "lower the threshold only if you accept the loss.",
            report,
        )
    return report
