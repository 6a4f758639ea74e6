"""INT8 graph: explicit Q/DQ post-training quantization, calibrated on the CPU with ONNX Runtime.

TensorRT 10 deprecated implicit INT8 calibration and TensorRT 11 removed it, so the INT8 decision is
written into the ONNX graph as QuantizeLinear/DequantizeLinear pairs, in the form TensorRT fuses:
symmetric int8 (zero point 0), per-channel weight scales on the output-channel axis, per-tensor
activation scales, biases left in float (TensorRT adds them after the integer product).

Placement (NVIDIA's explicit-quantization guidance): Q/DQ on the inputs of Conv, Gemm and the MatMuls
with a weight. Not quantized, with the reason recorded: the constant LRSA pooling matrices (averages,
no GEMM worth quantizing, and their reduction axis is no valid TensorRT scale axis), the attention
products of two activations (`quantize_attention`), residual Adds (in LRFormer they follow a
layer-scale Mul, not a Conv, so TensorRT has no Conv+Add fusion to gain; quantizing the residual
stream costs accuracy).

Also kept float by default (`keep_sensitive_float`), because one per-tensor INT8 activation scale
cannot serve them: depthwise convs, stride-2 patch-embedding convs that read the residual stream,
convs that read a Concat of differently scaled features (the head's squeeze convs), and the final
classifier. Measured on a randomised LRFormer-T (150 classes, 512x896, 8 held-out car-detection
frames, entropy ranges from 32 frames): quantizing everything gives logits rel. err 0.065, stride-8
argmax agreement 0.949, mask agreement 0.958; these four groups in float (29% of the Conv/MatMul
MACs, 71% stay INT8): 0.035 / 0.982 / 0.985. Each group alone in float recovers little (the errors
compound through the network); the depthwise convs matter most for their cost (2% of the MACs; with
them quantized the other three give 0.961). The MLP 1x1 convs, 58% of the MACs, add almost no error
and stay INT8. No calibration method fixes it instead: percentile 99.99 / 99.999 / minmax with
everything quantized give argmax agreement 0.952 / 0.952 / 0.932.

Target: "tensorrt" (default) writes the float ops between the Q/DQ pairs in FP16 wherever the FP16
analysis (fp16.py, measured on the same frames in the same pass) allows; a strongly typed TensorRT
network runs every op in the type the graph states, so an FP32 remainder would be slower than the FP16
engine. The opset is raised to 19 for FP16 Q/DQ scales. "cpu" keeps float ops in FP32: ONNX Runtime's
CPU provider has no fast FP16 kernels, and its INT8 kernels (VNNI/AMX) run the Q/DQ Conv/MatMul.

Tool choice: ranges streamed frame by frame into ONNX Runtime's histogram layout (ranges.py: ORT's
merge rule and entropy search, faster binning; percentile: ORT's HistogramCollector) or a running
min/max, then onnxruntime.quantization.quantize_static with those ranges.
NVIDIA ModelOpt's ONNX PTQ was measured on the same graph (see README: less accurate on LRFormer
with its own placement, and its pins replace this project's onnxruntime/onnx).

Calibration ranges (and the FP16 statistics) are cached next to the artifact (NAME-int8.calib.json),
keyed by the FP32 graph's sha256, the calibration source (file names + sizes + mtimes, or the array's
content hash), method, count, input size, mean/std, placement and the ONNX Runtime version; a
matching cache skips frame decoding and calibration entirely.

Why one module of ~570 lines: placement, calibration cache and the Q/DQ rewrite share the placement
record (what was kept float and why) that the manifest stores; ranges.py and measure.py already hold
the parts that stand alone (histograms, the streaming pass).
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from lrformer_deploy.errors import UserError
from lrformer_deploy.manifest import sha256_file
from lrformer_deploy.atomic import atomic_output, write_text
from lrformer_deploy.contract import CALIB_METHODS, IMAGENET_MEAN, IMAGENET_STD, TARGETS, graph_input
from lrformer_deploy.precision.calibration import source_fingerprint
from lrformer_deploy.precision.measure import COLLECT_SAMPLE
from lrformer_deploy.precision.ranges import RangeCollector

QUANTIZED_OP_TYPES = ("Conv", "MatMul", "Gemm")
CACHE_FORMAT = "lrformer-deploy-int8-calibration"
CACHE_VERSION = 3  # 2: streaming collection, new placement, FP16 statistics; 3: sampled histograms (ranges.py)
QDQ_OPSET = 19  # FP16 scales on QuantizeLinear/DequantizeLinear


def graph_sha256(path: Path) -> str:
    """sha256 of the .onnx plus every external-data file it references (the weights may live there)."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    locations = sorted({
        entry.value for t in _get_all_tensors(model) if uses_external_data(t)
        for entry in t.external_data if entry.key == "location"
    })
    if not locations:
        return sha256_file(path)
    h = hashlib.sha256(sha256_file(path).encode())
    for loc in locations:
        data = path.parent / loc
        h.update(loc.encode())
        h.update(sha256_file(data).encode() if data.is_file() else b"missing")
    return h.hexdigest()


def _graph_input(path: Path) -> tuple[str, list]:
    import onnx

    name, dims = graph_input(onnx.load(str(path), load_external_data=False))
    return name, [d if isinstance(d, int) else None for d in dims]


def activation_matmuls(model) -> list[str]:
    """MatMul nodes with no constant operand: the attention products (q @ k^T, softmax @ v)."""
    g = model.graph
    consts = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in g.node for o in n.output}

    def constant(name: str) -> bool:
        # A weight may reach the MatMul through Transpose/Cast/Reshape of an initializer.
        node = producer.get(name)
        while node is not None and node.op_type in ("Transpose", "Cast", "Reshape", "Identity", "Unsqueeze"):
            name = node.input[0]
            node = producer.get(name)
        return name in consts

    return [n.name for n in g.node if n.op_type == "MatMul" and not any(constant(i) for i in n.input[:2])]


def calibration_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _pre_process(src: Path, dst: Path) -> str:
    """ORT's quantization pre-processing (shape inference + basic graph optimization); optional."""
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        return "onnxruntime quant_pre_process"
    except Exception as exc:  # pre-processing only helps; quantize the exported graph as is
        _copy_graph(src, dst)
        return f"skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"


def _copy_graph(src: Path, dst: Path) -> None:
    import onnx

    onnx.save(onnx.load(str(src)), str(dst))  # loads external data, writes one self-contained file


def check_qdq(model) -> dict:
    """Verify the TensorRT Q/DQ contract; return counts. Raises AssertionError-free ValueError on breach."""
    from onnx import TensorProto, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    counts = collections.Counter(n.op_type for n in g.node)
    problems, per_channel, per_tensor = [], 0, 0
    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(n.input) > 2 and n.input[2]:
            zp = inits.get(n.input[2])
            if zp is None:
                problems.append(f"{n.name}: zero point is not a constant")
                continue
            arr = numpy_helper.to_array(zp)
            if zp.data_type != TensorProto.INT8 and not (n.op_type == "DequantizeLinear" and zp.data_type == TensorProto.INT32):
                problems.append(f"{n.name}: zero point type {zp.data_type} is not int8")
            if np.any(arr != 0):
                problems.append(f"{n.name}: non-zero zero point")
        scale = inits.get(n.input[1])
        if scale is not None and len(scale.dims) == 1 and scale.dims[0] > 1:
            per_channel += 1
        elif n.op_type == "QuantizeLinear":
            per_tensor += 1
    if problems:
        raise ValueError("Q/DQ graph breaks the TensorRT contract: " + "; ".join(problems[:5]))
    quantized = collections.Counter()
    for n in g.node:
        if n.op_type in QUANTIZED_OP_TYPES and any(
            producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input[:2]
        ):
            quantized[n.op_type] += 1
    return {
        "quantize_linear": counts.get("QuantizeLinear", 0),
        "dequantize_linear": counts.get("DequantizeLinear", 0),
        "per_channel_weight_scales": per_channel,
        "per_tensor_activation_scales": per_tensor,
        "quantized_ops": dict(quantized),
    }


def _constant_values(model):
    """name -> numpy value for initializers and Constant outputs, seen through Transpose/Identity/Cast."""
    from onnx import numpy_helper

    g = model.graph
    values = {i.name: i for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    values[n.output[0]] = a.t
    producer = {o: n for n in g.node for o in n.output}

    def value(name):
        node = producer.get(name)
        while node is not None and node.op_type in ("Transpose", "Identity", "Cast") and name not in values:
            name = node.input[0]
            node = producer.get(name)
        t = values.get(name)
        return None if t is None else numpy_helper.to_array(t)

    return value


def _is_pooling_matrix(w) -> bool:
    """Adaptive-average-pooling matrix: non-negative, every row (or every column) sums to one."""
    if w is None or w.ndim != 2 or w.size == 0 or np.any(w < 0):
        return False
    return bool(np.allclose(w.sum(axis=1), 1, atol=1e-5) or np.allclose(w.sum(axis=0), 1, atol=1e-5))


def final_products(model) -> set[str]:
    """Conv/MatMul/Gemm nodes whose output reaches a graph output through no other such node: the
    classifier (conv_seg), followed only by Resize/ArgMax/Cast."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found, seen = set(), set()
    todo = [o.name for o in model.graph.output]
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in QUANTIZED_OP_TYPES:
            found.add(node.name)
        else:
            todo.extend(node.input)
    return found


def sensitive_reason(node, producer: dict, final: set[str]) -> str | None:
    """Why a Conv/MatMul/Gemm must stay float for accuracy (see the module docstring), or None."""
    attrs = {a.name: a for a in node.attribute}
    src = producer.get(node.input[0])
    if node.name in final:
        return "final classifier: its rounding error lands on the logits unaveraged (near-tied classes flip)"
    if node.op_type != "Conv":
        return None
    if "group" in attrs and attrs["group"].i > 1:
        return ("depthwise conv: one per-tensor scale over channels of very different magnitude, and no "
                "reduction over channels to average the rounding out (2% of the MACs)")
    if src is not None and src.op_type == "Concat":
        return "reads a Concat of features from different stages: one per-tensor scale cannot fit all of them"
    if src is not None and src.op_type == "Add" and any(s > 1 for s in (attrs["strides"].ints if "strides" in attrs else ())):
        return "patch embedding (strided conv) on the residual stream, whose channel outliers set the per-tensor scale"
    return None


def placement(model, quantize_attention: bool = False, keep_float_nodes: Iterable[str] = (),
              keep_sensitive_float: bool = True) -> tuple[dict, dict]:
    """({node: [activation tensors to calibrate]}, {node: reason kept float}) for Conv/MatMul/Gemm."""
    value = _constant_values(model)
    graph_inputs = {i.name for i in model.graph.input}
    keep = set(keep_float_nodes)
    attention = set(activation_matmuls(model))
    producer = {o: n for n in model.graph.node for o in n.output}
    final = final_products(model) - attention if keep_sensitive_float else set()  # a classifier has a weight
    quantize, excluded = {}, {}
    for n in model.graph.node:
        if n.op_type not in QUANTIZED_OP_TYPES:
            continue
        if n.name in keep:
            excluded[n.name] = "kept float on request"
            continue
        operands = list(n.input[:2])
        consts = {i: value(i) for i in operands}
        if n.op_type == "MatMul" and any(_is_pooling_matrix(v) for v in consts.values()):
            excluded[n.name] = ("LRSA pooling: product with a constant averaging matrix (no Q/DQ: its reduction "
                                "axis is no valid TensorRT scale axis, and the op is an average, not a GEMM worth INT8)")
            continue
        if n.name in attention and not quantize_attention:
            excluded[n.name] = "attention product of two activations (softmax probabilities)"
            continue
        reason = sensitive_reason(n, producer, final) if keep_sensitive_float else None
        if reason:
            excluded[n.name] = reason
            continue
        acts = [i for i in operands if consts[i] is None or i in graph_inputs]
        if n.op_type in ("Conv", "Gemm"):
            acts = acts[:1]
        quantize[n.name] = acts
    return quantize, excluded


def _stats_to_json(stats) -> dict:
    return {k: [s.max_abs, s.sq_sum, s.sq_err, bool(s.nonfinite)] for k, s in stats.items()}


def _stats_from_json(data) -> dict:
    from lrformer_deploy.precision.measure import TensorStats

    return {k: TensorStats(float(a), float(b), float(c), bool(d)) for k, (a, b, c, d) in data.items()}


def fp16_form(qmodel, stats):
    """Rewrite a Q/DQ graph so that the float ops run in FP16 where the FP16 analysis allows: Q takes
    its input's type, DQ produces what its consumers read. Returns (model, kept_fp32 record)."""
    import onnx

    from lrformer_deploy.precision.fp16 import name_nodes, Plan, apply_precision, kept_fp32_record, plan_precision

    if next((o.version for o in qmodel.opset_import if o.domain in ("", "ai.onnx")), 17) < QDQ_OPSET:
        qmodel = onnx.version_converter.convert_version(qmodel, QDQ_OPSET)
    qmodel = onnx.shape_inference.infer_shapes(qmodel, strict_mode=False, data_prop=True)
    name_nodes(qmodel)
    plans = plan_precision(qmodel, stats)
    g = qmodel.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers = collections.defaultdict(list)
    for n in g.node:
        for i, t in enumerate(n.input):
            consumers[t].append((n, i))
    for n in g.node:
        if n.op_type == "QuantizeLinear":
            src = producer.get(n.input[0])
            sp = plans.get(src.name) if src is not None else None
            half = bool(sp and sp.half and list(src.output).index(n.input[0]) in sp.half_outputs)
            plans[n.name] = Plan(half, {0, 1} if half else set(), set(), category="qdq",
                                  reason="follows its input's type")
    for n in g.node:
        if n.op_type == "DequantizeLinear":
            users = consumers.get(n.output[0], [])
            half = bool(users) and all(plans[u.name].half and i in plans[u.name].half_inputs for u, i in users)
            plans[n.name] = Plan(half, {1} if half else set(), {0} if half else set(), category="qdq",
                                  reason="produces its consumers' type")
    kept = kept_fp32_record(qmodel, plans, stats)
    qmodel, _ = apply_precision(qmodel, plans)
    return qmodel, kept


def quantize_int8(
    fp32_onnx: str | Path,
    out_onnx: str | Path,
    calib_source: str | os.PathLike | np.ndarray,
    count: int = 64,
    method: str = "entropy",
    cache_dir: str | Path | None = None,
    *,
    size: tuple[int, int] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    percentile: float = 99.99,
    entropy_bins: int = 512,
    quantize_attention: bool = False,
    keep_float_nodes: Iterable[str] = (),
    keep_sensitive_float: bool = True,
    pre_process: bool = True,
    target: str = "tensorrt",
    quiet: bool = True,
) -> dict:
    """Write an explicit Q/DQ INT8 copy of `fp32_onnx` to `out_onnx`; return the record for the manifest.

    calib_source: a folder of images, a video file (frames sampled evenly) or an already preprocessed
    N x 3 x H x W float32 array. count: frames to use (decoded and measured one at a time). method:
    entropy | percentile | minmax. keep_sensitive_float: leave the convs one per-tensor scale cannot
    serve in float (depthwise, patch embedding on the residual stream, after a Concat, the final
    classifier; see the module docstring for the measurement). cache_dir: where NAME.calib.json lives
    (default: beside out_onnx).
    size: (H, W), default the graph's. target: "tensorrt" (float ops in FP16 where measured safe) or
    "cpu" (float ops in FP32). quantize_attention: also put Q/DQ on the activation x activation MatMuls.
    The result's "calibration"["cache_hit"] says whether the ranges came from the cache.
    """
    import onnx
    import onnxruntime
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    from lrformer_deploy.precision.fp16 import name_nodes, fp16_candidate_tensors
    from lrformer_deploy.precision.macs import precision_census
    from lrformer_deploy.precision.measure import stream

    t_start = time.perf_counter()
    fp32_onnx, out_onnx = Path(fp32_onnx), Path(out_onnx)
    if not fp32_onnx.is_file():
        raise UserError(f"FP32 ONNX {fp32_onnx} does not exist.")
    method = method.lower()
    if method not in CALIB_METHODS:
        raise UserError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIB_METHODS)}.")
    if target not in TARGETS:
        raise UserError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}.")
    if count < 1:
        raise UserError(f"--calib-count must be at least 1, got {count}.")
    input_name, dims = _graph_input(fp32_onnx)
    if size is None:
        if len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in dims[2:]):
            raise UserError("the FP32 graph's input has no static H, W; pass size=(H, W).")
        size = (dims[2], dims[3])
    batch = dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else 1
    if batch != 1:
        raise UserError(f"INT8 calibration runs one frame per graph run: export with batch 1 (graph has {batch}).")

    fingerprint = source_fingerprint(calib_source)
    key_parts = {
        "fp32_onnx_sha256": graph_sha256(fp32_onnx), "source": fingerprint, "method": method, "count": int(count),
        "size": list(size), "mean": [float(m) for m in mean], "std": [float(s) for s in std],
        "percentile": percentile if method == "percentile" else None, "pre_process": pre_process,
        "entropy_bins": entropy_bins if method == "entropy" else None,
        "quantize_attention": bool(quantize_attention), "keep_float_nodes": sorted(keep_float_nodes),
        "keep_sensitive_float": bool(keep_sensitive_float),
        "onnxruntime": ".".join(onnxruntime.__version__.split(".")[:2]), "version": CACHE_VERSION,
    }
    key = calibration_key(key_parts)
    cache_path = Path(cache_dir) if cache_dir is not None else out_onnx.parent
    cache_path = cache_path / f"{out_onnx.stem}.calib.json"
    cached = None
    if cache_path.is_file():
        try:
            cached = json.loads(cache_path.read_text())
            if cached.get("format") != CACHE_FORMAT or cached.get("key") != key:
                cached = None
            elif target == "tensorrt" and not cached.get("fp16_stats"):
                cached = None  # ranges from a CPU-target run: the FP16 statistics are still needed
        except (OSError, ValueError):
            cached = None

    # TemporaryDirectory: removed on SIGTERM too (cli_entry turns it into a KeyboardInterrupt).
    with tempfile.TemporaryDirectory(prefix="lrformer-int8-") as tmp:
        tmp = Path(tmp)
        pre_path = tmp / "pre.onnx"
        pre_note = _pre_process(fp32_onnx, pre_path) if pre_process else "not requested"
        if not pre_process:
            _copy_graph(fp32_onnx, pre_path)
        model = onnx.shape_inference.infer_shapes(onnx.load(str(pre_path)), strict_mode=False, data_prop=True)
        name_nodes(model)
        onnx.save(model, str(pre_path))  # node names are what nodes_to_quantize refers to
        to_quantize, excluded = placement(model, quantize_attention, keep_float_nodes, keep_sensitive_float)
        tensors = list(dict.fromkeys(t for ts in to_quantize.values() for t in ts))

        ort_cache = tmp / "ranges.json"
        t_cal = time.perf_counter()
        n_frames = None
        if cached is not None:
            ort_cache.write_text(json.dumps(cached["tensors_data"]))
            n_frames = cached.get("frames")
            stats = _stats_from_json(cached.get("fp16_stats") or {})
        else:
            from lrformer_deploy.precision.calibration import count_calibration_frames, iter_calibration_frames

            total = min(count, len(calib_source)) if isinstance(calib_source, np.ndarray) else \
                count_calibration_frames(calib_source, count)
            collector = RangeCollector(method, percentile, entropy_bins)
            try:
                result = stream(model, iter_calibration_frames(calib_source, count, size, mean, std), total,
                                fp16_stats=(target == "tensorrt"), fp16_tensors=fp16_candidate_tensors(model),
                                collect=tensors, collector=collector, quiet=quiet, desc="int8 calibration")
                if result.frames < 1:
                    raise UserError("calibration needs at least 1 frame, got 0.")
                n_frames, stats = result.frames, result.stats
                save_tensors_data(collector.tensors_data(), ort_cache)
            finally:
                collector.close()
        ranges_seconds = time.perf_counter() - t_cal

        calib_method = {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile,
                        "minmax": CalibrationMethod.MinMax}[method]
        extra = {
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "QuantizeBias": False,  # TensorRT adds a float bias after the int8 product
            # Q/DQ on the inputs only (TensorRT's placement): a quantized Conv/MatMul output would
            # round the values that feed float ops (LayerNorm, residual adds, the logits) to 8 bits.
            "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OP_TYPES),
        }
        q_path = tmp / "qdq.onnx"
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(  # ranges always come from the cache file: computed above or reused
                str(pre_path), str(q_path),
                calibration_data_reader=None,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OP_TYPES),
                nodes_to_quantize=sorted(to_quantize),
                per_channel=True,
                reduce_range=False,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=calib_method,
                extra_options=extra,
                calibration_cache_path=str(ort_cache),
            )
        qmodel = onnx.load(str(q_path))
        _unquantize_inputs(qmodel, excluded)
        quantize_seconds = time.perf_counter() - t_cal - ranges_seconds
        if cached is None:
            payload = {
                "format": CACHE_FORMAT, "version": CACHE_VERSION, "key": key, "key_parts": key_parts,
                "frames": n_frames, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "tensors_data": json.loads(ort_cache.read_text()),
                "fp16_stats": _stats_to_json(stats) if target == "tensorrt" else None,
            }
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            write_text(cache_path, json.dumps(payload))

    # ORT's optimizer declares its private domains (com.microsoft, ...); no node uses them here, and
    # other consumers (TensorRT's parser) should not see them.
    used = {n.domain or "" for n in qmodel.graph.node} | {""}
    keep = [o for o in qmodel.opset_import if o.domain in used]
    del qmodel.opset_import[:]
    qmodel.opset_import.extend(keep)
    kept_fp32 = []
    if target == "tensorrt":
        qmodel, kept_fp32 = fp16_form(qmodel, stats)
    else:
        qmodel = onnx.shape_inference.infer_shapes(qmodel, strict_mode=False, data_prop=True)
    qmodel.producer_name = "lrformer-deploy"
    with atomic_output(_mkparent(out_onnx)) as tmp_out:
        onnx.save(qmodel, str(tmp_out))
    onnx.checker.check_model(str(out_onnx), full_check=True)
    qdq = check_qdq(qmodel)
    census = precision_census(qmodel, kept_fp32, None if target == "tensorrt" else
                              "target cpu: float ops stay FP32 (ONNX Runtime's CPU provider has no fast FP16 kernels)")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    ort.InferenceSession(str(out_onnx), opts, providers=["CPUExecutionProvider"])  # loads and plans on CPU

    return {
        "precision": "int8",
        "target": target,
        "tool": "onnxruntime.quantization (streamed ranges in ORT's histogram layout + quantize_static, QDQ)",
        "scheme": "explicit Q/DQ (QuantizeLinear/DequantizeLinear), onnxruntime.quantization.quantize_static",
        "activations": "int8 symmetric (zero point 0), per-tensor scales",
        "weights": "int8 symmetric (zero point 0), per-channel scales on the output-channel axis",
        "bias": "float (not quantized)",
        "float_ops": "fp16 where the FP16 analysis allows (kept_fp32 lists the rest)" if target == "tensorrt"
        else "fp32 (target cpu)",
        "op_types_quantized": list(QUANTIZED_OP_TYPES),
        "quantized_nodes": len(to_quantize),
        "kept_float": [{"node": n, "reason": r} for n, r in sorted(excluded.items())],
        "kept_fp32": kept_fp32,
        "compute": census,
        "graph": qdq,
        "opset": next((o.version for o in qmodel.opset_import if o.domain in ("", "ai.onnx")), None),
        "pre_process": pre_note,
        "calibration": {
            "method": method, "percentile": key_parts["percentile"], "count": int(count), "frames": n_frames,
            "size": list(size), "source": fingerprint if fingerprint.get("kind") == "array" else
            {"kind": fingerprint["kind"], "path": fingerprint["path"], "files": len(fingerprint["files"])},
            "cache_file": cache_path.name, "cache_key": key, "cache_hit": cached is not None,
            "tensors": len(tensors), "values_per_tensor_and_frame": COLLECT_SAMPLE,
            "seconds": round(ranges_seconds, 3),  # frame decoding + range collection (0 on a cache hit)
            "quantize_seconds": round(quantize_seconds, 3),
        },
        "onnx": out_onnx.name,
        "seconds": round(time.perf_counter() - t_start, 3),
    }


def _unquantize_inputs(qmodel, excluded: dict) -> None:
    """ORT's QDQ quantizer gives every consumer of a quantized activation the DequantizeLinear output,
    also the nodes placement() kept float (a depthwise conv beside a quantized conv on one tensor):
    point those back at the float tensor so that what the manifest says is float really is."""
    producer = {o: n for n in qmodel.graph.node for o in n.output}
    for node in qmodel.graph.node:
        if node.name not in excluded:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]


def _mkparent(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)
