"""One streaming pass over calibration frames: FP16 range statistics and INT8 histograms.

Memory is bounded by design: frames are decoded one at a time, and the graph runs once per frame.
- FP16 statistics (max |x| over the whole tensor; sum x^2 and the squared error of an FP16 round trip
  on an evenly strided sample) are computed INSIDE the graph: a few reduction nodes per tensor,
  emitted right after the tensor's producer, so ONNX Runtime frees every intermediate as usual and
  returns scalars only. Only the tensors a decision reads are measured, and tensors that are a pure
  rearrangement of another (Reshape, Transpose, ...) share its statistics.
- INT8 ranges: for each tensor to calibrate the graph also returns the min and max of the whole
  tensor and an evenly strided sample of at most COLLECT_SAMPLE values, so one run per frame returns
  a bounded amount at any input size; each frame is folded into ONNX Runtime's histogram layout
  (ranges.py) or a running min/max before the next frame runs.

Nothing is kept per frame, so peak memory does not depend on the number of calibration frames.
"""
from __future__ import annotations

import collections
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np

# Ops whose float output holds exactly (or a subset of) the values of their first input.
_SAME_VALUES = ("Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Split",
                "Gather", "Expand", "Tile", "DepthToSpace", "SpaceToDepth")
# Values per tensor and frame handed to the INT8 range collector: 32 frames give 8M values per tensor
# for a 512-bin histogram, and the run returns at most ~1 MiB per tensor at any input size.
COLLECT_SAMPLE = 1 << 18


def progress(total: int, desc: str, quiet: bool = False, unit: str = "frame"):
    """A tqdm bar on stderr (frames done, frames/s); silent when quiet or when stderr is not a terminal."""
    from tqdm import tqdm

    disable = bool(quiet) or not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, leave=False, dynamic_ncols=True)


@dataclass
class TensorStats:
    """Per-tensor FP16 suitability: largest magnitude, and the relative error of an FP16 round trip
    (||x - fp16(x)|| / ||x||, large when much of the tensor lies below FP16's normal range)."""

    max_abs: float = 0.0
    sq_sum: float = 0.0
    sq_err: float = 0.0
    nonfinite: bool = False

    def add(self, max_abs: float, sq_sum: float, sq_err: float) -> None:
        if not (np.isfinite(max_abs) and np.isfinite(sq_sum)):
            self.nonfinite = True
            return
        self.max_abs = max(self.max_abs, float(max_abs))
        self.sq_sum += float(sq_sum)
        self.sq_err += float(sq_err) if np.isfinite(sq_err) else float("inf")

    def update(self, x: np.ndarray) -> None:
        """The same statistics from an array (weights, tests)."""
        x = np.asarray(x, dtype=np.float32)
        if x.size == 0:
            return
        if not np.all(np.isfinite(x)):
            self.nonfinite = True
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        with np.errstate(over="ignore"):
            rt = x.astype(np.float16).astype(np.float32)
        d = np.where(np.isfinite(rt), x - rt, 0.0).ravel().astype(np.float64)
        flat = x.ravel().astype(np.float64)
        self.add(float(np.max(np.abs(x))), float(flat @ flat), float(d @ d))

    def merge(self, other: "TensorStats") -> None:
        self.nonfinite |= other.nonfinite
        self.max_abs = max(self.max_abs, other.max_abs)
        self.sq_sum += other.sq_sum
        self.sq_err += other.sq_err

    @property
    def rel_err(self) -> float:
        return float(np.sqrt(self.sq_err / self.sq_sum)) if self.sq_sum > 0 else 0.0

    def as_dict(self) -> dict:
        return {"max_abs": sig4(self.max_abs), "fp16_rel_err": sig4(self.rel_err)}


def sig4(v: float) -> float:
    """`v` rounded to 4 significant digits (what the manifests record)."""
    return float(f"{v:.4g}")


def float_types(model) -> dict[str, int]:
    g = model.graph
    types = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    for node in g.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "value":
                    types[node.output[0]] = a.t.data_type
    return types


def tensor_bytes(model) -> dict[str, int]:
    """Bytes per tensor from the inferred static shapes (float32 assumed; unknown dims count as 1)."""
    sizes = {}
    for vi in list(model.graph.value_info) + list(model.graph.output):
        n = 1
        for d in vi.type.tensor_type.shape.dim:
            n *= d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
        sizes[vi.name] = 4 * n
    return sizes


def _measured_and_aliases(model, types) -> tuple[list[str], dict[str, list[str]]]:
    """Float activations measured in the graph, and the tensors that take their stats from others."""
    from onnx import TensorProto

    FLOAT = TensorProto.FLOAT
    inits = {i.name for i in model.graph.initializer}
    measured, alias, seen = [], {}, set()
    for node in model.graph.node:
        for out in node.output:
            if not out or out in seen or types.get(out) != FLOAT or out in inits:
                continue
            seen.add(out)
            src = [i for i in node.input if i and types.get(i) == FLOAT]
            if node.op_type in _SAME_VALUES and src[:1]:
                alias[out] = src[:1]
            elif node.op_type == "Concat" and src and len(src) == len([i for i in node.input if i]):
                alias[out] = src
            else:
                measured.append(out)
    return measured, alias


SAMPLE_ELEMENTS = 1 << 14  # a norm ratio: 16k values estimate it to ~1%, at a quarter of 64k's cost


def _reduce(op, x, y, name, axes, opset, consts):
    """Reduce* over `axes` (None: all), as an attribute before opset 18 and as an input from 18 on."""
    from onnx import helper, numpy_helper

    if axes is None:
        return helper.make_node(op, [x], [y], name=name, keepdims=0)
    if opset < 18:
        return helper.make_node(op, [x], [y], name=name, axes=list(axes), keepdims=0)
    consts.append(numpy_helper.from_array(np.array(axes, np.int64), f"{name}/axes"))
    return helper.make_node(op, [x, f"{name}/axes"], [y], name=name, keepdims=0)


def _rows(numel: int) -> int:
    """Rows for the extremes: ONNX Runtime reduces rows in parallel, a whole tensor on one thread."""
    for rows in (256, 128, 64, 32, 16, 8, 4, 2):
        if numel % rows == 0 and numel // rows >= 64:
            return rows
    return 1


def _extreme_nodes(name: str, p: str, numel: int, opset: int, consts: list) -> tuple[list, list[str]]:
    """Row-wise max and min of the whole tensor (an overflow or a range must not be missed)."""
    from onnx import helper, numpy_helper

    consts.append(numpy_helper.from_array(np.array([_rows(numel), -1], np.int64), f"{p}_rows"))
    outs = [f"{p}_max", f"{p}_min"]
    return [
        helper.make_node("Reshape", [name, f"{p}_rows"], [f"{p}_r"], name=f"{p}/rows"),
        _reduce("ReduceMax", f"{p}_r", outs[0], f"{p}/max", [1], opset, consts),
        _reduce("ReduceMin", f"{p}_r", outs[1], f"{p}/min", [1], opset, consts),
    ], outs


def _sample_nodes(name: str, p: str, numel: int, limit: int, consts: list) -> tuple[list, str]:
    """An evenly strided sample of at most ~`limit` values of the flattened tensor."""
    from onnx import helper, numpy_helper

    step = max(1, -(-numel // limit)) | 1  # odd: does not lock onto a channel pattern
    consts.extend([
        numpy_helper.from_array(np.array([-1], np.int64), f"{p}_flat"),
        numpy_helper.from_array(np.array([0], np.int64), f"{p}_start"),
        numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), f"{p}_end"),
        numpy_helper.from_array(np.array([step], np.int64), f"{p}_step"),
    ])
    return [
        helper.make_node("Reshape", [name, f"{p}_flat"], [f"{p}_v"], name=f"{p}/flat"),
        helper.make_node("Slice", [f"{p}_v", f"{p}_start", f"{p}_end", f"{p}_start", f"{p}_step"], [f"{p}_s"],
                         name=f"{p}/sample"),
    ], f"{p}_s"


def _stats_nodes(name: str, index: int, numel: int, opset: int = 17):
    """Nodes computing [max x, min x, sum s^2, sum (s - fp16(s))^2] of tensor `name` (row-wise extremes
    and two scalars), where s is an evenly strided sample of at most ~SAMPLE_ELEMENTS values. The
    extremes read the whole tensor; the FP16 rounding error is a ratio of sums, estimated on the sample
    so that no full-size temporary is made."""
    from onnx import TensorProto, helper

    p = f"__stat{index}"
    consts: list = []
    nodes, outs = _extreme_nodes(name, p, numel, opset, consts)
    sample_nodes, s = _sample_nodes(name, p, numel, SAMPLE_ELEMENTS, consts)
    outs = outs + [f"{p}_sq", f"{p}_err"]
    nodes += sample_nodes + [
        _reduce("ReduceSumSquare", s, outs[2], f"{p}/sq", None, opset, consts),
        helper.make_node("Cast", [s], [f"{p}_h"], name=f"{p}/h", to=TensorProto.FLOAT16),
        helper.make_node("Cast", [f"{p}_h"], [f"{p}_f"], name=f"{p}/f", to=TensorProto.FLOAT),
        helper.make_node("Sub", [s, f"{p}_f"], [f"{p}_d"], name=f"{p}/d"),
        _reduce("ReduceSumSquare", f"{p}_d", outs[3], f"{p}/err", None, opset, consts),
    ]
    return nodes, outs, consts


def _prune(graph) -> None:
    """Drop the nodes (and initializers) no graph output depends on. The measurement graph returns
    statistics only, so e.g. the final full-resolution Resize and ArgMax (a third of a frame's time at
    512x896) need not run when nothing decided from them is measured."""
    wanted = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in wanted for o in node.output):
            keep.append(node)
            wanted.update(i for i in node.input if i)
    keep.reverse()
    if len(keep) < len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
    inits = [i for i in graph.initializer if i.name in wanted]
    if len(inits) < len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(inits)


def _probe(model, stat_tensors: Sequence[str], collect: Sequence[str] = (), sample: int = COLLECT_SAMPLE):
    """A copy of `model` that returns only: the FP16 stats of `stat_tensors`, and for each `collect`
    tensor its row-wise extremes and a strided sample of at most ~`sample` values (the nodes nothing
    of that depends on are pruned). Returns (probe, {tensor: stat outputs}, {tensor: (max, min, sample)})."""
    import onnx
    from onnx import TensorProto, helper

    sizes = tensor_bytes(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    g = probe.graph
    del g.value_info[:]
    index = {t: i for i, t in enumerate(stat_tensors)}
    wanted = set(index) | set(collect)
    inputs = {i.name for i in g.input}
    nodes, stat_outputs, collect_outputs = [], {}, {}

    def emit(t):
        numel = max(1, sizes.get(t, 4) // 4)
        consts: list = []
        if t in index:
            new, outs, consts = _stats_nodes(t, index[t], numel, opset)
            nodes.extend(new)  # right after the producer: ORT may free the tensor early
            stat_outputs[t] = outs
        if t in collect:
            p = f"__col{len(collect_outputs)}"
            if t in index:  # the FP16 statistics already read its extremes
                extremes = stat_outputs[t][:2]
            else:
                new, extremes = _extreme_nodes(t, p, numel, opset, consts)
                nodes.extend(new)
            new, s = _sample_nodes(t, p, numel, sample, consts)
            nodes.extend(new)
            collect_outputs[t] = (*extremes, s)
        g.initializer.extend(consts)

    for t in list(stat_tensors) + list(collect):
        if t in inputs and t not in stat_outputs and t not in collect_outputs:
            emit(t)
    for node in list(g.node):
        nodes.append(node)
        for out in node.output:
            if out in wanted:
                emit(out)
    del g.node[:]
    g.node.extend(nodes)
    original = list(g.output)
    del g.output[:]  # the original outputs are not needed during measurement
    names = list(dict.fromkeys([o for outs in stat_outputs.values() for o in outs] +
                               [o for outs in collect_outputs.values() for o in outs]))
    g.output.extend(helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in names)
    if not g.output:  # nothing to measure: keep the graph valid
        g.output.extend(original)
    _prune(g)
    return probe, stat_outputs, collect_outputs


def _session(model):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Basic optimisations only: constant folding helps, but fusions could hide measured tensors.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    # The default order runs the statistics nodes late and keeps every intermediate alive (7 GiB at
    # 512x896 for T); priority order consumes each tensor right away (0.9 GiB, like plain inference).
    opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


class Sampled(NamedTuple):
    """One frame of a calibrated tensor: a strided sample of its values, and the min and max of all."""

    values: np.ndarray
    lo: np.float32
    hi: np.float32


@dataclass
class StreamResult:
    stats: dict[str, TensorStats]
    frames: int
    seconds: float


def stream(
    model,
    frames: Iterable[np.ndarray],
    total: int,
    *,
    fp16_stats: bool = True,
    fp16_tensors: Iterable[str] | None = None,
    collect: Sequence[str] = (),
    collector: Callable[[dict[str, Sampled]], None] | None = None,
    sample: int = COLLECT_SAMPLE,
    quiet: bool = False,
    desc: str = "measuring",
) -> StreamResult:
    """Run `model` (an onnx.ModelProto with inferred shapes) once per frame of `frames` (3 x H x W or
    1 x 3 x H x W float32, one at a time); accumulate FP16 statistics of its float tensors when
    fp16_stats, and pass `collector` one dict per frame: `collect` tensor -> Sampled(values, lo, hi),
    a strided sample of at most ~`sample` values and the min and max of the whole tensor. Returns the
    statistics (activations and float weights).

    fp16_tensors: the tensors whose statistics a decision reads (fp16.fp16_candidate_tensors); None
    measures every float tensor. Rearrangements among them are resolved to the tensors they copy."""
    import time

    from onnx import TensorProto, numpy_helper

    t0 = time.perf_counter()
    types = float_types(model)
    stats: dict[str, TensorStats] = collections.defaultdict(TensorStats)
    measured, alias = _measured_and_aliases(model, types) if fp16_stats else ([], {})
    if fp16_stats:
        measured = measured + [i.name for i in model.graph.input if types.get(i.name) == TensorProto.FLOAT
                               and i.name not in {x.name for x in model.graph.initializer}]
    if fp16_stats and fp16_tensors is not None:
        need, todo, seen = set(), list(fp16_tensors), set()
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            if t in alias:
                todo.extend(alias[t])
            else:
                need.add(t)
        measured = [t for t in measured if t in need]
        alias = {t: srcs for t, srcs in alias.items() if t in seen}
    collect = list(dict.fromkeys(collect))
    probe, stat_outputs, collect_outputs = _probe(model, measured, collect, sample)
    sess = _session(probe)
    del probe
    in_name = sess.get_inputs()[0].name
    order = [o.name for o in sess.get_outputs()]
    n = 0
    with progress(total, desc, quiet) as bar:
        for frame in frames:
            x = np.asarray(frame, np.float32)
            if x.ndim == 3:
                x = x[None]
            values = dict(zip(order, sess.run(order, {in_name: x})))
            for t, (mx, mn, sq, err) in stat_outputs.items():
                peak = max(abs(float(np.max(values[mx]))), abs(float(np.min(values[mn]))))
                stats[t].add(peak, float(values[sq]), float(values[err]))
            if collect and collector is not None:
                collector({t: Sampled(values[s], np.float32(np.min(values[mn])), np.float32(np.max(values[mx])))
                           for t, (mx, mn, s) in collect_outputs.items()})
            del values
            n += 1
            bar.update(1)
    if fp16_stats:
        for init in model.graph.initializer:
            if init.data_type == TensorProto.FLOAT:
                stats[init.name].update(numpy_helper.to_array(init))

        def resolve(t, depth=0):
            if t in stats or t not in alias or depth > 64:
                return stats.get(t)
            merged = TensorStats()
            for src in alias[t]:
                s = resolve(src, depth + 1)
                if s is not None:
                    merged.merge(s)
            stats[t] = merged
            return merged

        for t in list(alias):
            resolve(t)
    return StreamResult(dict(stats), n, time.perf_counter() - t0)
