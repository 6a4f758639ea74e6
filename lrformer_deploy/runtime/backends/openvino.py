"""OpenVINO backend: the same ONNX graph as ONNX Runtime, compiled by OpenVINO (the `openvino` extra).

    with OpenVINORunner("m.onnx", precision="fp32") as runner:   # FP32 graph -> f32, never a silent bf16
        runner.infer({"image": batch})

Why a second CPU backend: OpenVINO runs our Q/DQ INT8 graph as real u8 convolutions (its low-precision
transformations) where ONNX Runtime keeps most Convs in FP32, and it offers bf16 on CPUs with AVX512-BF16
or AMX. The ONNX graph stays the artifact: OpenVINO reads it directly and its model cache (CACHE_DIR, under
the user's cache folder) makes a second start load the compiled blob instead of recompiling.

Precision is explicit: OpenVINO's CPU plugin defaults to bf16 on CPUs that have it, which would silently
change an FP32 model's results. The runner always sets INFERENCE_PRECISION_HINT from the precision the
manifest states: fp32 / int8 (Q/DQ, float ops FP32) / fp16 -> f32 on the CPU, bf16 -> bf16.

Layout: LRFormer normalises the channels of NCHW maps as Transpose -> LayerNormalization -> Transpose (one
ONNX op that ONNX Runtime runs well). OpenVINO's CPU plugin keeps maps in blocked channel layouts and
turned each of those transposes into a layout copy: on LRFormer-T 512x512, 25 Reorders and 73 Transposes
cost ~25 ms of a 150 ms f32 run. channel_norms_to_nchw() rewrites them, in the model OpenVINO read, into
one MVN over the channel axis (the same arithmetic, no copies): f32 130 -> 119 ms, INT8 89 -> 77 ms
(samples/bench_cpu_backends.py prints the current figures). The ONNX file is untouched.

Devices: "CPU" is what this project tests. "GPU", "NPU" and "AUTO" (Intel GPUs / NPUs) are passed through
to OpenVINO unchanged; they are written to the API and not run here.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from lrformer_deploy.errors import UserError
from lrformer_deploy.runtime.backends import openvino_missing
from lrformer_deploy.runtime.backends.base import Runner

DEVICES = ("CPU", "GPU", "NPU", "AUTO")
# The precision a graph's manifest states -> OpenVINO's inference precision on a CPU. A Q/DQ INT8 graph
# keeps its quantized convolutions in u8/i8 whatever the hint; the hint is for the float ops around them.
# An FP16 graph's FP16 islands are computed in f32 on a CPU without native FP16 arithmetic.
CPU_HINTS = {"fp32": "f32", "int8": "f32", "fp16": "f32", "bf16": "bf16"}
GPU_HINTS = {"fp32": "f32", "int8": "f32", "fp16": "f16", "bf16": "f16"}  # Intel GPUs have no bf16 mode


def _constant(output) -> np.ndarray | None:
    """The value of a Constant (or of a Range of Constants, how the ONNX reader states LayerNorm's axes)."""
    node = output.get_node()
    kind = node.get_type_name()
    if kind == "Constant":
        return node.get_data()
    if kind == "Range":
        bounds = [_constant(node.input_value(i)) for i in range(3)]
        if all(b is not None and b.size == 1 for b in bounds):
            return np.arange(*(b.item() for b in bounds))
    return None


def _is_transpose(node, perm: list[int]) -> bool:
    if node.get_type_name() != "Transpose":
        return False
    order = _constant(node.input_value(1))
    return order is not None and list(order) == perm


def _only_user(output, kind: str):
    users = [i.get_node() for i in output.get_target_inputs()]
    return users[0] if len(users) == 1 and users[0].get_type_name() == kind else None


def _operand(node, exclude) -> np.ndarray | None:
    """The constant operand of a binary node (the one that is not `exclude`)."""
    for i in range(2):
        if node.input_value(i).get_node() is not exclude:
            return _constant(node.input_value(i))
    return None


def channel_norms_to_nchw(model) -> int:
    """Rewrite Transpose(NCHW->NHWC) -> MVN(last axis) -> Multiply(w) -> Add(b) -> Transpose(back) in an
    ov.Model into MVN(channel axis) -> Multiply -> Add on the NCHW map; return how many were rewritten.

    The pattern is what OpenVINO's ONNX reader makes of ChannelLayerNorm (model/lrformer.py). Anything
    else (other axes, a tensor read elsewhere, a non-constant scale) is left as it is.
    """
    from openvino import opset13 as ops

    done = 0
    for mvn in list(model.get_ordered_ops()):
        if mvn.get_type_name() != "MVN":
            continue
        first = mvn.input_value(0).get_node()
        axes = _constant(mvn.input_value(1))
        if not _is_transpose(first, [0, 2, 3, 1]) or axes is None or [int(a) % 4 for a in axes.ravel()] != [3]:
            continue
        if len(first.output(0).get_target_inputs()) != 1:
            continue
        mul = _only_user(mvn.output(0), "Multiply")
        add = mul and _only_user(mul.output(0), "Add")
        if add is None:
            continue
        scale, shift = _operand(mul, mvn), _operand(add, mul)
        x = first.input_value(0)
        channels = x.get_partial_shape()[1]
        if scale is None or shift is None or not channels.is_static:
            continue
        c = channels.get_length()
        if scale.size != c or shift.size != c:
            continue
        lasts = [i.get_node() for i in add.output(0).get_target_inputs()]
        if not lasts or not all(_is_transpose(t, [0, 3, 1, 2]) for t in lasts):
            continue
        attrs = mvn.get_attributes()
        norm = ops.mvn(x, ops.constant(np.array([1], dtype=np.int64)), attrs["normalize_variance"], attrs["eps"],
                       str(attrs["eps_mode"]).lower())
        out = ops.add(ops.multiply(norm, ops.constant(scale.astype(np.float32).reshape(1, c, 1, 1))),
                      ops.constant(shift.astype(np.float32).reshape(1, c, 1, 1)))
        for last in lasts:
            last.output(0).replace(out.output(0))
        done += 1
    if done:
        model.validate_nodes_and_infer_types()
    return done


def model_cache_dir() -> Path:
    """Where compiled models are cached: <user cache folder>/openvino (LRFORMER_DEPLOY_CACHE moves it)."""
    from lrformer_deploy.cache import cache_dir

    return cache_dir() / "openvino"


def normalise_device(device: str | None) -> str:
    """None/"auto"/"cpu" -> "CPU"; "gpu", "gpu.1", "npu", "AUTO:GPU,CPU" upper-cased and passed through."""
    dev = (device or "cpu").strip()
    if dev.lower() == "auto":  # the CLI's generic default means "here", i.e. the CPU
        return "CPU"
    upper = dev.upper()
    if upper.split(".")[0].split(":")[0] not in DEVICES:
        raise UserError(f"unknown OpenVINO device {device!r}: use CPU (tested), or GPU, GPU.N, NPU, AUTO "
                        "(Intel hardware, passed to OpenVINO as they are)")
    return upper


def compile_config(device: str, precision: str, threads: int | None, cache: Path | None) -> dict[str, Any]:
    """The compile properties for `device`: the precision hint the graph states, threads, the model cache."""
    if precision not in CPU_HINTS:
        raise UserError(f"OpenVINO cannot run precision {precision!r} (known: {', '.join(CPU_HINTS)})")
    kind = device.split(".")[0].split(":")[0]
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if kind == "CPU":
        config["INFERENCE_PRECISION_HINT"] = CPU_HINTS[precision]
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
    elif kind == "GPU":
        config["INFERENCE_PRECISION_HINT"] = GPU_HINTS[precision]
    # NPU / AUTO: the device (or the one AUTO picks) decides; passed through untested.
    if cache is not None:
        config["CACHE_DIR"] = str(cache)
    return config


class OpenVINORunner(Runner):
    # One CompiledModel, InferRequests lent from a pool (one per concurrent call): requests are not
    # shareable, the model is. Not thread-local: a thread that Python did not start (a GStreamer streaming
    # thread, any C caller) gets a fresh Python thread state for each call, and deleting that state
    # destroyed its thread-local InferRequest inside the interpreter's teardown of the state: a SIGSEGV
    # (tests/test_openvino.py calls the runner from such a thread).
    thread_safe = True

    def __init__(self, onnx_path: str | Path, device: str | None = None, precision: str = "fp32",
                 threads: int | None = None, cache: bool | str | Path = True, layout_rewrite: bool = True) -> None:
        super().__init__()
        self.onnx_path = Path(onnx_path)
        self.device = normalise_device(device)
        self.precision = precision
        self.threads = threads or int(os.environ.get("LRFORMER_OV_THREADS", "0") or 0) or None
        self.cache = (model_cache_dir() if cache is True else None if cache is False else Path(cache))
        self.compiled = None
        self.loaded_from_cache = False
        self.layout_rewrite = layout_rewrite
        self.layout_rewrites = 0  # channel LayerNorms run as MVN on the NCHW map (channel_norms_to_nchw)
        self._idle: list[Any] = []  # InferRequests not in use
        self._idle_lock = threading.Lock()
        self._outputs: list[str] = []
        self.name = f"openvino[{self.device}]"

    def _activate(self) -> None:
        reason = openvino_missing()
        if reason:
            raise UserError(reason)
        if not self.onnx_path.is_file():
            raise UserError(f"model file not found: {self.onnx_path}")
        import openvino as ov

        config = compile_config(self.device, self.precision, self.threads, self.cache)
        if self.cache is not None:
            try:
                self.cache.mkdir(parents=True, exist_ok=True)
            except OSError:  # a read-only home: run without the cache rather than fail
                config.pop("CACHE_DIR", None)
        core = ov.Core()
        try:
            # Read, rewritten, then compiled: the cache is keyed by the rewritten model's content, and reading
            # the ONNX file costs ~0.1 s of a ~0.5 s cached start (LRFormer-T).
            model = core.read_model(str(self.onnx_path))
            if self.layout_rewrite and self.device == "CPU":  # measured on CPUs only; other devices get the graph as it is
                self.layout_rewrites = channel_norms_to_nchw(model)
            self.compiled = core.compile_model(model, self.device, config)
        except Exception as exc:  # OpenVINO raises RuntimeError with multi-line texts
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise UserError(f"OpenVINO cannot compile {self.onnx_path.name} for {self.device}: {detail[:300]}") from None
        try:
            self.loaded_from_cache = bool(self.compiled.get_property("LOADED_FROM_CACHE"))
        except Exception:  # older releases or devices without the property
            self.loaded_from_cache = False
        # OpenVINO merges tensor names: an ONNX output may come back as {"argmax", "mask"}. Every name of a
        # port is listed and returned (the same array), so the graph's own output name is always there.
        self._outputs = [sorted(o.get_names()) or [o.get_any_name()] for o in self.compiled.outputs]
        hint = config.get("INFERENCE_PRECISION_HINT")
        self.name = f"openvino[{self.device}{', ' + str(hint) if hint else ''}]"

    def _deactivate(self) -> None:
        with self._idle_lock:
            self._idle.clear()
        self.compiled = None

    def inference_precision(self) -> str | None:
        """What the compiled model reports it computes float ops in (e.g. "f32", "bf16")."""
        assert self.compiled is not None, "activate() first"
        try:
            value = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        except Exception:
            return None
        return value.to_string() if hasattr(value, "to_string") else str(value)

    def io_info(self) -> tuple[list[tuple[str, tuple]], list[tuple[str, tuple]]]:
        assert self.compiled is not None, "activate() first"

        def shape(port) -> tuple:
            return tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())

        return ([(name, shape(i)) for i in self.compiled.inputs for name in sorted(i.get_names()) or [i.get_any_name()]],
                [(name, shape(o)) for o, names in zip(self.compiled.outputs, self._outputs) for name in names])

    def infer(self, feed: dict[str, Any]) -> dict[str, np.ndarray]:
        if self.compiled is None:
            raise RuntimeError("OpenVINORunner.infer() called before activate()")
        with self._idle_lock:
            request = self._idle.pop() if self._idle else None
        if request is None:
            request = self.compiled.create_infer_request()
        host = {name: value if isinstance(value, np.ndarray) else np.asarray(value) for name, value in feed.items()}
        try:
            result = request.infer(host)  # copies of the outputs (share_outputs=False): safe to keep
        finally:
            with self._idle_lock:
                self._idle.append(request)
        return {name: result[i] for i, names in enumerate(self._outputs) for name in names}
