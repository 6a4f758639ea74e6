"""FP16 graph: a mixed-precision ONNX derived from the FP32 export, decided by measurement.

TensorRT 11 has no FP16 builder flag: a strongly typed network runs each layer in the type the ONNX
graph gives it. So this pass writes the precision into the graph:

1. run the FP32 graph in ONNX Runtime (CPU) on calibration frames, one frame per run, with reduction
   nodes added after every float tensor (measure.py): per tensor the max |x| and the relative error an
   FP16 round trip would cause (||x - fp16(x)|| / ||x||, estimated on a strided sample; large when much
   of the tensor sits below FP16's normal range). Memory stays that of plain inference;
2. keep in FP32: the numerically sensitive op types (policy list below), the final upsampling and the
   class decision, ops with no float16 variant, and every op that produces or consumes a tensor (or a
   weight) the measurement flags (|x| > overflow threshold, or FP16 rounding error above threshold);
3. everything else runs in FP16: weights converted to float16, Cast nodes inserted where an FP16 and
   an FP32 region meet, graph input "image" and the outputs keep their FP32/INT32 types.

The returned dict (decisions, reasons, measured ranges) is stored in the manifest's precision_details.

Why one module of ~500 lines: the policy, the plan it produces and the graph edit that applies it are
one decision read top to bottom, and int8.py reuses the plan and the edit for its float remainder.
"""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from lrformer_deploy.errors import UserError
from lrformer_deploy.precision.measure import TensorStats, float_types, sig4, stream, tensor_bytes

FP16_MAX = 65504.0
FP16_MIN_NORMAL = 6.103515625e-05

# Op types kept in FP32 regardless of measurements, with the reason recorded in the manifest.
POLICY_FP32_OPS: dict[str, str] = {
    "LayerNormalization": "normalisation: mean/variance reductions overflow or lose precision in FP16",
    "GroupNormalization": "normalisation: mean/variance reductions overflow or lose precision in FP16",
    "InstanceNormalization": "normalisation: mean/variance reductions overflow or lose precision in FP16",
    "Softmax": "attention softmax: exp and sum reduction are range-sensitive in FP16",
    "LogSoftmax": "exp and sum reduction are range-sensitive in FP16",
    "ReduceMean": "reduction: sums over many elements lose precision / overflow in FP16",
    "ReduceSum": "reduction: sums over many elements lose precision / overflow in FP16",
    "ReduceSumSquare": "reduction: sums of squares overflow in FP16",
    "ReduceL2": "reduction: sums of squares overflow in FP16",
    "ReduceLogSumExp": "reduction with exp: range-sensitive in FP16",
    "ReduceMax": "reduction around attention/normalisation, kept with its neighbours",
    "ReduceMin": "reduction around attention/normalisation, kept with its neighbours",
    "ReduceProd": "reduction: products overflow in FP16",
    "Pow": "power (decomposed normalisation): squares overflow in FP16",
    "Sqrt": "square root of a variance (decomposed normalisation)",
    "Reciprocal": "reciprocal of a small value overflows in FP16",
    "Exp": "exp overflows FP16 for inputs above ~11",
    "Log": "log of tiny values underflows in FP16",
    "ArgMax": "final class decision: ties between close logits must be resolved in FP32",
    "ArgMin": "final class decision",
    "TopK": "ranking: ties between close values",
}
HEAD_RESIZE_REASON = "final upsampling of the logits feeding the class decision / graph output"

OVERFLOW_THRESHOLD = 60000.0  # a little margin below FP16's largest finite value 65504
# An FP16 round trip of values in the normal range costs ~3e-4 relative (norm-wise); a tensor above
# 1e-3 has much of its mass in FP16's subnormal range (e.g. layer-scale products of ~1e-6).
ROUNDING_THRESHOLD = 1e-3


def _load(path):
    import onnx

    model = onnx.load(str(path))
    return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)


_elem_types = float_types
_tensor_bytes = tensor_bytes


def measure_tensor_stats(
    model_or_path,
    inputs: Iterable[np.ndarray] | np.ndarray,
    *,
    total: int | None = None,
    quiet: bool = True,
) -> dict[str, TensorStats]:
    """FP16 statistics of every float tensor of the FP32 graph over `inputs` (N x C x H x W array or an
    iterable of frames), one frame per run with the reductions inside the graph (see measure.py)."""
    model = _load(model_or_path) if not hasattr(model_or_path, "graph") else model_or_path
    if total is None:
        inputs = np.asarray(inputs, np.float32) if not isinstance(inputs, np.ndarray) else inputs
        total = len(inputs) if inputs.ndim == 4 else 1
    return stream(model, _frames(inputs), total, quiet=quiet, desc="fp16 ranges").stats


def _frames(inputs) -> Iterable[np.ndarray]:
    if isinstance(inputs, np.ndarray):
        arr = inputs.astype(np.float32, copy=False)
        return iter(arr[None] if arr.ndim == 3 else arr)
    return iter(inputs)


def batches(inputs, shape) -> Iterable[np.ndarray]:
    """Split N x ... inputs into the graph's static batch size (1 when the batch dim is symbolic)."""
    batch = shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else 1
    if isinstance(inputs, np.ndarray):
        arr = inputs.astype(np.float32, copy=False)
        if arr.ndim == len(shape) - 1:
            arr = arr[None]
        for i in range(0, len(arr) - batch + 1, batch):
            yield arr[i:i + batch]
    else:
        for item in inputs:
            yield from batches(np.asarray(item), shape)


@dataclass
class Plan:
    half: bool
    half_inputs: set[int] = field(default_factory=set)
    half_outputs: set[int] = field(default_factory=set)
    reason: str = ""
    category: str = ""


def _formal_types(schema, n_inputs: int, n_outputs: int) -> tuple[list[str], list[str]]:
    from onnx.defs import OpSchema

    def expand(params, n):
        out = []
        for i in range(n):
            p = params[min(i, len(params) - 1)]
            if i >= len(params) and p.option != OpSchema.FormalParameterOption.Variadic:
                out.append("")
            else:
                out.append(p.type_str)
        return out

    return expand(schema.inputs, n_inputs), expand(schema.outputs, n_outputs)


def _head_resizes(model) -> set[str]:
    """Resize nodes whose result reaches ArgMax or a graph output through Cast/Identity only."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    targets = [n.input[0] for n in g.node if n.op_type in ("ArgMax", "ArgMin") and n.input]
    targets += [o.name for o in g.output]
    found = set()
    for t in targets:
        node = producer.get(t)
        while node is not None and node.op_type in ("Cast", "Identity"):
            node = producer.get(node.input[0])
        if node is not None and node.op_type == "Resize":
            found.add(node.name)
    return found


def plan_precision(
    model,
    stats: Mapping[str, TensorStats],
    overflow_threshold: float = OVERFLOW_THRESHOLD,
    rounding_threshold: float = ROUNDING_THRESHOLD,
    keep_fp32_ops: Mapping[str, str] | None = None,
    keep_fp32_nodes: Iterable[str] = (),
) -> dict[str, Plan]:
    """Decide per node: FP16 (with which inputs/outputs turn float16) or FP32 (with a reason)."""
    import onnx.defs
    from onnx import TensorProto

    policy = dict(POLICY_FP32_OPS if keep_fp32_ops is None else keep_fp32_ops)
    forced = set(keep_fp32_nodes)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    types = _elem_types(model)
    heads = _head_resizes(model)
    FLOAT = TensorProto.FLOAT

    def flagged(name: str) -> str:
        s = stats.get(name)
        if s is None:
            return ""
        if s.nonfinite:
            return f"measured: tensor '{name}' has inf/nan in FP32"
        if s.max_abs > overflow_threshold:
            return f"measured: tensor '{name}' reaches |x| = {sig4(s.max_abs)} > {overflow_threshold:g} (FP16 overflow)"
        if s.rel_err > rounding_threshold:
            return (f"measured: tensor '{name}' loses {sig4(s.rel_err)} relative to FP16 rounding "
                    f"(> {rounding_threshold:g}; values below FP16's normal range, max |x| = {sig4(s.max_abs)})")
        return ""

    plans: dict[str, Plan] = {}
    for node in model.graph.node:
        float_in = [i for i, t in enumerate(node.input) if t and types.get(t) == FLOAT]
        float_out = [i for i, t in enumerate(node.output) if t and types.get(t) == FLOAT]
        if not float_in and not float_out:
            plans[node.name] = Plan(False, category="neutral", reason="no float tensors")
            continue
        if node.op_type in ("Cast", "CastLike"):
            plans[node.name] = Plan(False, category="boundary", reason="existing Cast keeps its target type")
            continue
        if node.op_type == "Constant":
            plans[node.name] = Plan(False, category="constant", reason="constant (converted if all consumers are FP16)")
            continue
        if node.name in forced:
            plans[node.name] = Plan(False, category="requested", reason="kept in FP32 on request")
            continue
        if node.op_type in policy and node.domain in ("", "ai.onnx"):
            plans[node.name] = Plan(False, category="policy", reason=f"policy: {policy[node.op_type]}")
            continue
        if node.name in heads:
            plans[node.name] = Plan(False, category="head", reason=f"policy: {HEAD_RESIZE_REASON}")
            continue
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            plans[node.name] = Plan(False, category="unsupported", reason="control flow: subgraphs stay as exported")
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, opset, node.domain or "")
        except Exception:  # unknown or custom op
            plans[node.name] = Plan(False, category="unsupported", reason=f"no ONNX schema for {node.domain}:{node.op_type}")
            continue
        fin, fout = _formal_types(schema, len(node.input), len(node.output))
        main = fout[0] if fout else ""
        allowed = {tc.type_param_str: set(tc.allowed_type_strs) for tc in schema.type_constraints}
        if main not in allowed or "tensor(float16)" not in allowed[main]:
            plans[node.name] = Plan(False, category="unsupported", reason=f"{node.op_type} has no float16 variant")
            continue
        if node.op_type == "BatchNormalization":  # scale/bias/mean/var follow X in practice (TensorRT folds them)
            half_in = set(float_in)
        else:
            half_in = {i for i in float_in if fin[i] == main}
        half_out = {i for i in float_out if fout[i] == main}
        if any(t and types.get(t) is None for t in node.output):
            plans[node.name] = Plan(False, category="unsupported", reason="output dtype unknown after shape inference")
            continue
        why = ""
        for t in [node.input[i] for i in sorted(half_in)] + [node.output[i] for i in sorted(half_out)]:
            why = flagged(t)
            if why:
                break
        if why:
            plans[node.name] = Plan(False, category="measured", reason=why)
            continue
        plans[node.name] = Plan(True, half_in, half_out, reason="fp16", category="fp16")
    return plans


def fp16_candidate_tensors(model, keep_fp32_ops: Mapping[str, str] | None = None,
                           keep_fp32_nodes: Iterable[str] = ()) -> set[str]:
    """The tensors whose measured statistics can change a decision: the FP16-typed inputs and outputs
    of every op that could run in FP16. Tensors between FP32-by-policy ops (normalisation internals,
    the final upsampling and class decision) need no measurement."""
    plans = plan_precision(model, {}, keep_fp32_ops=keep_fp32_ops, keep_fp32_nodes=keep_fp32_nodes)
    wanted = set()
    for node in model.graph.node:
        p = plans.get(node.name)
        if p is not None and p.half:
            wanted.update(node.input[i] for i in p.half_inputs)
            wanted.update(node.output[i] for i in p.half_outputs)
    return wanted


def name_nodes(model) -> None:
    seen = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def apply_precision(model, plans: Mapping[str, Plan]) -> tuple[object, int]:
    """Rewrite `model` (in place) per the plans: float16 weights, Casts at region boundaries."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    g = model.graph
    types = _elem_types(model)
    inits = {i.name: i for i in g.initializer}
    graph_inputs = {i.name for i in g.input}

    # Final dtype of every tensor produced by a converted node.
    new_type = dict(types)
    for node in g.node:
        p = plans[node.name]
        if p.half:
            for i in p.half_outputs:
                new_type[node.output[i]] = HALF

    # What each consumer wants for each float tensor it reads.
    wants: dict[str, set[int]] = collections.defaultdict(set)
    for node in g.node:
        p = plans[node.name]
        for i, t in enumerate(node.input):
            if t and types.get(t) == FLOAT:
                wants[t].add(HALF if (p.half and i in p.half_inputs) else FLOAT)
    for o in g.output:
        wants[o.name].add(types.get(o.name, FLOAT))

    # Constants and initializers read only by FP16 consumers are stored as float16 outright.
    for node in g.node:
        if node.op_type == "Constant" and types.get(node.output[0]) == FLOAT and wants.get(node.output[0]) == {HALF}:
            for a in node.attribute:
                if a.name == "value":
                    arr = numpy_helper.to_array(a.t).astype(np.float16)
                    a.t.CopyFrom(numpy_helper.from_array(arr, a.t.name))
            new_type[node.output[0]] = HALF
    for name, init in inits.items():
        if init.data_type == FLOAT and name not in graph_inputs and wants.get(name) == {HALF}:
            arr = numpy_helper.to_array(init).astype(np.float16)
            init.CopyFrom(numpy_helper.from_array(arr, name))
            new_type[name] = HALF

    # Graph outputs produced in FP16: the producer writes NAME__fp16, a Cast restores NAME in FP32.
    renamed = {}
    for o in g.output:
        if new_type.get(o.name) == HALF and types.get(o.name) == FLOAT:
            renamed[o.name] = f"{o.name}__fp16"
    for node in g.node:
        for i, t in enumerate(node.output):
            if t in renamed:
                node.output[i] = renamed[t]
        for i, t in enumerate(node.input):
            if t in renamed:
                node.input[i] = renamed[t]
    for old, new in renamed.items():
        new_type[new] = HALF
        new_type[old] = FLOAT

    renamed_to = set(renamed.values())
    cache: dict[tuple[str, int], str] = {}
    new_nodes = []
    extra_inits = []
    casts = 0

    def convert(name: str, want: int) -> str:
        nonlocal casts
        have = new_type.get(name)
        if have == want or have not in (FLOAT, HALF):
            return name
        key = (name, want)
        if key in cache:
            return cache[key]
        suffix = "__fp16" if want == HALF else "__fp32"
        if name in inits and name not in graph_inputs:  # weight shared by both regions: a typed copy
            arr = numpy_helper.to_array(inits[name]).astype(np.float16 if want == HALF else np.float32)
            extra_inits.append(numpy_helper.from_array(arr, name + suffix))
        else:
            new_nodes.append(helper.make_node("Cast", [name], [name + suffix], name=f"cast{suffix}/{name}", to=want))
            casts += 1
        cache[key] = name + suffix
        new_type[name + suffix] = want
        return name + suffix

    for node in g.node:
        p = plans[node.name]
        for i, t in enumerate(node.input):
            if not t or (types.get(t) != FLOAT and t not in renamed_to):
                continue  # only tensors that were float32 in the FP32 graph change type
            want = HALF if (p.half and i in p.half_inputs) else FLOAT
            node.input[i] = convert(t, want)
        new_nodes.append(node)
    for old, new in renamed.items():
        new_nodes.append(helper.make_node("Cast", [new], [old], name=f"cast__fp32/{old}", to=FLOAT))
        casts += 1

    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(extra_inits)
    del g.value_info[:]  # stale dtypes; re-inferred below
    model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    return model, casts


def _graph_dtype_census(model, plans) -> tuple[dict, dict]:
    half, full = collections.Counter(), collections.Counter()
    for node in model.graph.node:
        p = plans.get(node.name)
        if p is None or p.category in ("neutral", "boundary", "constant"):
            continue
        (half if p.half else full)[node.op_type] += 1
    return dict(half), dict(full)


def kept_fp32_record(model, plans, stats) -> list[dict]:
    """Every float op the plans keep in FP32, with its reason and the magnitudes measured around it."""
    init_names = {i.name for i in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        p = plans.get(node.name)
        if p is None or p.half or p.category in ("neutral", "boundary", "constant", "qdq"):
            continue
        outs = [stats[t].max_abs for t in node.output if t in stats]
        ins = [stats[t].max_abs for t in node.input if t in stats and t not in init_names]
        weights = [stats[t].max_abs for t in node.input if t in stats and t in init_names]
        kept.append({
            "node": node.name, "op": node.op_type, "category": p.category, "reason": p.reason,
            "max_abs_in": sig4(max(ins)) if ins else None, "max_abs_out": sig4(max(outs)) if outs else None,
            "max_abs_weights": sig4(max(weights)) if weights else None,
        })
    return kept


def flagged_tensors(stats, overflow_threshold=OVERFLOW_THRESHOLD, rounding_threshold=ROUNDING_THRESHOLD) -> dict:
    return {
        name: s.as_dict() for name, s in stats.items()
        if s.nonfinite or s.max_abs > overflow_threshold or s.rel_err > rounding_threshold
    }


def convert_fp16(
    fp32_onnx: str | Path,
    out_onnx: str | Path,
    calib_inputs: np.ndarray | Iterable[np.ndarray],
    *,
    overflow_threshold: float = OVERFLOW_THRESHOLD,
    rounding_threshold: float = ROUNDING_THRESHOLD,
    keep_fp32_ops: Mapping[str, str] | None = None,
    keep_fp32_nodes: Iterable[str] = (),
    count: int | None = None,
    quiet: bool = True,
) -> dict:
    """Write a mixed FP16/FP32 copy of `fp32_onnx` to `out_onnx`; return the decision record.

    calib_inputs: N x 3 x H x W float32 array, or an iterable of 3 x H x W frames (decoded lazily;
    pass `count` for the progress bar). Frames are measured one at a time: memory does not grow with N.
    keep_fp32_ops: op type -> reason, replaces POLICY_FP32_OPS; keep_fp32_nodes: node names to pin.
    The result passes onnx.checker and is run once in ONNX Runtime (CPU) before this returns.
    """
    import onnx
    import onnxruntime as ort

    from lrformer_deploy.precision.macs import precision_census

    t0 = time.perf_counter()
    fp32_onnx, out_onnx = Path(fp32_onnx), Path(out_onnx)
    if not fp32_onnx.is_file():
        raise UserError(f"FP32 ONNX {fp32_onnx} does not exist.")
    if isinstance(calib_inputs, np.ndarray):
        calib_inputs = np.asarray(calib_inputs, dtype=np.float32)
        if calib_inputs.ndim != 4 or len(calib_inputs) == 0:
            raise UserError("FP16 conversion needs at least one calibration input (N x 3 x H x W).")
        count = len(calib_inputs)
    model = _load(fp32_onnx)
    name_nodes(model)
    first = []

    def keep_first(frames):
        for f in frames:
            if not first:
                first.append(np.asarray(f, np.float32))
            yield f

    wanted = fp16_candidate_tensors(model, keep_fp32_ops, keep_fp32_nodes)
    result = stream(model, keep_first(_frames(calib_inputs)), count or 0, fp16_tensors=wanted, quiet=quiet,
                    desc="fp16 ranges")
    if result.frames == 0:
        raise UserError("FP16 conversion needs at least one calibration input (N x 3 x H x W).")
    stats = result.stats
    plans = plan_precision(model, stats, overflow_threshold, rounding_threshold, keep_fp32_ops, keep_fp32_nodes)

    types = _elem_types(model)
    kept = kept_fp32_record(model, plans, stats)
    flagged = flagged_tensors(stats, overflow_threshold, rounding_threshold)
    half_ops, full_ops = _graph_dtype_census(model, plans)

    model, casts = apply_precision(model, plans)
    out_onnx.parent.mkdir(parents=True, exist_ok=True)
    model.producer_name = "lrformer-deploy"
    onnx.save(model, str(out_onnx))
    onnx.checker.check_model(str(out_onnx), full_check=True)
    census = precision_census(model, kept)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(out_onnx), opts, providers=["CPUExecutionProvider"])
    x = first[0] if first[0].ndim == 4 else first[0][None]
    sess.run(None, {sess.get_inputs()[0].name: x})

    overall = max((s.max_abs for n, s in stats.items() if types.get(n) is not None), default=0.0)
    return {
        "precision": "fp16",
        "tool": "lrformer-deploy FP16 pass (measured ranges, ONNX Runtime CPU)",
        "method": "measured: FP32 graph run in ONNX Runtime (CPU) one frame at a time, range statistics "
                  "reduced inside the graph",
        "calibration_inputs": int(result.frames),
        "measure_seconds": round(result.seconds, 3),
        "thresholds": {"overflow_abs": overflow_threshold, "fp16_rounding_rel": rounding_threshold},
        "policy_ops": sorted((keep_fp32_ops if keep_fp32_ops is not None else POLICY_FP32_OPS).keys()),
        "nodes_fp16": int(sum(half_ops.values())),
        "nodes_fp32": len(kept),
        "fp16_op_counts": half_ops,
        "fp32_op_counts": full_ops,
        "kept_fp32": kept,
        "flagged_tensors": flagged,
        "max_abs_overall": sig4(overall),
        "casts_inserted": casts,
        "compute": census,
        "onnx": out_onnx.name,
        "seconds": round(time.perf_counter() - t0, 3),
    }
