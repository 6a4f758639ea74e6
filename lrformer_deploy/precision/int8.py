"""INT8 graph: explicit Q/DQ post-training quantization calibrated on the CPU with ONNX Runtime.

TensorRT 10 deprecated implicit INT8 calibration and TensorRT 11 removed it, so the INT8 decision is
written into the ONNX graph as QuantizeLinear/DequantizeLinear pairs, in the form TensorRT fuses:
symmetric int8 (zero point 0) activations and weights, per-channel weight scales on the output-channel
axis, per-tensor activation scales, Q/DQ only on the inputs of Conv / MatMul / Gemm, biases left in
float (TensorRT adds them after the integer product), everything else (LayerNormalization, Softmax,
Resize, ArgMax, element-wise ops) stays float.

Tool choice: onnxruntime.quantization.quantize_static (QDQ format). It is already a dependency, runs
on the CPU and can take precomputed tensor ranges. NVIDIA ModelOpt (nvidia-modelopt[onnx]) was tried
with `pip install --dry-run`: it would replace onnxruntime 1.32 with onnxruntime-gpu 1.24, downgrade
onnx to 1.21 and pull cupy-cuda12x, i.e. break the CPU environment this project tests in.

Calibration ranges are cached next to the artifact (NAME-int8.calib.json), keyed by the FP32 graph's
sha256, the calibration source (file names + sizes + mtimes, or the array's content hash), method,
count, input size, mean/std and the ONNX Runtime version; a matching cache skips frame decoding and
calibration entirely.
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

from ..errors import UserError
from ..manifest import sha256_file
from .calibration import DEFAULT_MEAN, DEFAULT_STD, load_calibration_frames, source_fingerprint

METHODS = ("entropy", "percentile", "minmax")
QUANTIZED_OP_TYPES = ("Conv", "MatMul", "Gemm")
CACHE_FORMAT = "lrformer-deploy-int8-calibration"
CACHE_VERSION = 1


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

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inp = [i for i in model.graph.input if i.name not in inits][0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    return inp.name, dims


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


class _FrameReader:
    """onnxruntime CalibrationDataReader over an N x 3 x H x W array, one graph batch at a time."""

    def __init__(self, name: str, frames: np.ndarray, batch: int):
        self.name, self.frames, self.batch, self.pos = name, frames, max(1, batch), 0

    def get_next(self):
        if self.pos + self.batch > len(self.frames):
            return None
        item = {self.name: self.frames[self.pos:self.pos + self.batch]}
        self.pos += self.batch
        return item

    def rewind(self):
        self.pos = 0

    def __len__(self):
        return len(self.frames) // self.batch

    def set_range(self, start_index: int, end_index: int):  # used by ORT's strided calibration
        self.pos = start_index


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


def _calibrate(model_path: Path, reader, method: str, percentile: float, entropy_bins: int, out_json: Path) -> None:
    """Tensor ranges with ONNX Runtime's calibrators, saved in ORT's calibration-cache JSON format.

    Called directly (not through quantize_static) because quantize_static does not forward the
    histogram size: its entropy default of 128 bins for 128 quantized bins leaves a single candidate
    threshold, i.e. plain min/max. TensorRT's entropy calibration used 2048 bins; 512 keeps the
    KL search affordable on a CPU while leaving 192 candidate thresholds.
    """
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    options: dict = {"symmetric": True}
    if method == "entropy":
        calib_method = CalibrationMethod.Entropy
        options.update(num_bins=int(entropy_bins), num_quantized_bins=128)
    elif method == "percentile":
        calib_method = CalibrationMethod.Percentile
        options.update(num_bins=2048, percentile=float(percentile))
    else:
        calib_method = CalibrationMethod.MinMax
    calibrator = create_calibrator(
        model_path, list(QUANTIZED_OP_TYPES),
        augmented_model_path=str(out_json.with_name("augmented.onnx")),
        calibrate_method=calib_method, extra_options=options,
    )
    # ORT's calibrators print progress with print(); keep stdout clean for `lrformer-export --json`.
    with contextlib.redirect_stdout(io.StringIO()):
        calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
    save_tensors_data(ranges, out_json)
    del calibrator


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


def quantize_int8(
    fp32_onnx: str | Path,
    out_onnx: str | Path,
    calib_source: str | os.PathLike | np.ndarray,
    count: int = 64,
    method: str = "entropy",
    cache_dir: str | Path | None = None,
    *,
    size: tuple[int, int] | None = None,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
    percentile: float = 99.99,
    entropy_bins: int = 512,
    quantize_attention: bool = False,
    keep_float_nodes: Iterable[str] = (),
    pre_process: bool = True,
) -> dict:
    """Write an explicit Q/DQ INT8 copy of `fp32_onnx` to `out_onnx`; return the record for the manifest.

    calib_source: a folder of images, a video file (frames sampled evenly) or an already preprocessed
    N x 3 x H x W float32 array. count: frames to use. method: entropy | percentile | minmax.
    cache_dir: where NAME.calib.json lives (default: beside out_onnx). size: (H, W), default the graph's.
    quantize_attention: also put Q/DQ on the activation x activation MatMuls of attention (off: the
    softmax probabilities lose too much at 8 bits per tensor; TensorRT runs them in the graph's float).
    The result's "calibration"["cache_hit"] says whether the ranges came from the cache.
    """
    import onnx
    import onnxruntime
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    t_start = time.perf_counter()
    fp32_onnx, out_onnx = Path(fp32_onnx), Path(out_onnx)
    if not fp32_onnx.is_file():
        raise UserError(f"FP32 ONNX {fp32_onnx} does not exist.")
    method = method.lower()
    if method not in METHODS:
        raise UserError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}.")
    if count < 1:
        raise UserError(f"--calib-count must be at least 1, got {count}.")
    input_name, dims = _graph_input(fp32_onnx)
    if size is None:
        if len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in dims[2:]):
            raise UserError("the FP32 graph's input has no static H, W; pass size=(H, W).")
        size = (dims[2], dims[3])
    batch = dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else 1

    fingerprint = source_fingerprint(calib_source)
    key_parts = {
        "fp32_onnx_sha256": graph_sha256(fp32_onnx), "source": fingerprint, "method": method, "count": int(count),
        "size": list(size), "mean": [float(m) for m in mean], "std": [float(s) for s in std],
        "percentile": percentile if method == "percentile" else None, "pre_process": pre_process,
        "entropy_bins": entropy_bins if method == "entropy" else None,
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
        except (OSError, ValueError):
            cached = None

    with tempfile.TemporaryDirectory(prefix="lrformer-int8-") as tmp:
        tmp = Path(tmp)
        pre_path = tmp / "pre.onnx"
        pre_note = _pre_process(fp32_onnx, pre_path) if pre_process else "not requested"
        if not pre_process:
            _copy_graph(fp32_onnx, pre_path)
        model = onnx.load(str(pre_path))
        excluded = {name: "kept float on request" for name in keep_float_nodes}
        if not quantize_attention:
            for name in activation_matmuls(model):
                excluded.setdefault(name, "attention product of two activations (softmax probabilities)")

        ort_cache = tmp / "ranges.json"
        t_cal = time.perf_counter()
        n_frames = None
        if cached is not None:
            ort_cache.write_text(json.dumps(cached["tensors_data"]))
            n_frames = cached.get("frames")
        else:
            if isinstance(calib_source, np.ndarray):
                frames = np.asarray(calib_source, np.float32)[:count]
            else:
                frames = load_calibration_frames(calib_source, count, size, mean, std)
            if len(frames) < batch:
                raise UserError(f"calibration needs at least {batch} frame(s), got {len(frames)}.")
            n_frames = int(len(frames))
            reader = _FrameReader(input_name, frames, batch)
            _calibrate(pre_path, reader, method, percentile, entropy_bins, ort_cache)
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
        quantize_static(  # ranges always come from the cache file: computed above or reused
            str(pre_path), _mkparent(out_onnx),
            calibration_data_reader=None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OP_TYPES),
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=sorted(excluded),
            calibrate_method=calib_method,
            extra_options=extra,
            calibration_cache_path=str(ort_cache),
        )
        quantize_seconds = time.perf_counter() - t_cal - ranges_seconds
        if cached is None:
            payload = {
                "format": CACHE_FORMAT, "version": CACHE_VERSION, "key": key, "key_parts": key_parts,
                "frames": n_frames, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "tensors_data": json.loads(ort_cache.read_text()),
            }
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp_cache = cache_path.with_suffix(".json.tmp")
            tmp_cache.write_text(json.dumps(payload))
            os.replace(tmp_cache, cache_path)

    qmodel = onnx.load(str(out_onnx))
    # ORT's optimizer declares its private domains (com.microsoft, ...); no node uses them here, and
    # other consumers (TensorRT's parser) should not see them.
    used = {n.domain or "" for n in qmodel.graph.node} | {""}
    if any(o.domain not in used for o in qmodel.opset_import):
        keep = [o for o in qmodel.opset_import if o.domain in used]
        del qmodel.opset_import[:]
        qmodel.opset_import.extend(keep)
        onnx.save(qmodel, str(out_onnx))
    onnx.checker.check_model(str(out_onnx), full_check=True)
    qdq = check_qdq(qmodel)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    ort.InferenceSession(str(out_onnx), opts, providers=["CPUExecutionProvider"])  # loads and plans on CPU

    return {
        "precision": "int8",
        "scheme": "explicit Q/DQ (QuantizeLinear/DequantizeLinear), onnxruntime.quantization.quantize_static",
        "activations": "int8 symmetric (zero point 0), per-tensor scales",
        "weights": "int8 symmetric (zero point 0), per-channel scales on the output-channel axis",
        "bias": "float (not quantized)",
        "op_types_quantized": list(QUANTIZED_OP_TYPES),
        "kept_float": [{"node": n, "reason": r} for n, r in sorted(excluded.items())],
        "kept_float_op_types": "all other ops (LayerNormalization, Softmax, Resize, ArgMax, element-wise) "
                               "run in float between the Q/DQ pairs",
        "graph": qdq,
        "pre_process": pre_note,
        "calibration": {
            "method": method, "percentile": key_parts["percentile"], "count": int(count), "frames": n_frames,
            "size": list(size), "source": fingerprint if fingerprint.get("kind") == "array" else
            {"kind": fingerprint["kind"], "path": fingerprint["path"], "files": len(fingerprint["files"])},
            "cache_file": cache_path.name, "cache_key": key, "cache_hit": cached is not None,
            "seconds": round(ranges_seconds, 3),  # frame decoding + range collection (0 on a cache hit)
            "quantize_seconds": round(quantize_seconds, 3),
        },
        "onnx": out_onnx.name,
        "seconds": round(time.perf_counter() - t_start, 3),
    }


def _mkparent(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)
