"""TensorRT backend, written to the TensorRT 10/11 name-based I/O API.

Engines are deserialised with `trt.Runtime.deserialize_cuda_engine`; I/O tensors are found with
`num_io_tensors` / `get_tensor_name` / `get_tensor_mode`, bound with `set_tensor_address` (and
`set_input_shape` for dynamic inputs) and run with `execute_async_v3(stream_handle)`. No binding-index
APIs (removed in TensorRT 10) are used.

Device memory comes from runtime/backends/cuda.py: pycuda (primary context, so it coexists with torch and
TensorRT's own runtime API use) or, when pycuda is missing, torch.cuda. Inputs already on the GPU (objects with
`__cuda_array_interface__`, or CUDA DLPack capsules via torch/cupy) are bound directly, no copy; the
engine's stream first waits for the stream that produced them (the interface's v3 `stream` field;
torch's current stream for torch tensors, which export v2; the legacy default stream otherwise), as
the CUDA Array Interface asks consumers to do. TensorRT binds only 256-byte aligned addresses
(`set_tensor_address` keeps the old address when refusing one, so a refusal is an error here); an
offset view that is not aligned is copied on the GPU into the runner's own buffer instead.
A caller's CUDA stream may be passed as an int handle, a pycuda Stream or a torch.cuda.Stream. Every
stream the runner creates is created once, in `activate()`, inside the device's context (a pycuda
Stream needs a current context).

Static-shape engines replay a CUDA graph of `execute_async_v3` (captured once through the driver API
after one plain execution) while the inputs are bound to the runner's own buffers; dynamic-shape
engines, the legacy default stream and a failed capture run plainly. `cuda_graph=False` or
LRFORMER_TRT_CUDA_GRAPH=0 turns it off; `cuda_graph_status` says which applies. `submit()`/`collect()`
overlap the host->device copy of the next batch with the execution of the current one (video pipeline).

An engine only loads with the TensorRT version and GPU generation that built it, so the manifest's
engine record is compared with the running ones first and a mismatch is one clear UserError.

NOTE: this module cannot run on the development machines (no GPU, no TensorRT). On CPU, the tests
drive it with a fake `tensorrt` module and a recording memory provider (call order and return-value
handling only, never a TensorRT result); tests/test_tensorrt_api.py checks every TensorRT name used
here against the real bindings' symbol tables; samples/gpu_check.py runs it on a GPU.

Why ~540 lines in one module: the runner's engine cache, buffer sets, CUDA-graph replay and submit/collect
all act on one execution context's state; CUDA memory and streams are apart in cuda.py.
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from lrformer_deploy.errors import UserError, missing_package
from lrformer_deploy.runtime.backends import cuda
from lrformer_deploy.runtime.backends.base import Runner
from lrformer_deploy.runtime.backends.cuda import ADDRESS_ALIGNMENT


def _version_tuple(version: str, parts: int = 3) -> tuple[int, ...]:
    out = []
    for piece in str(version).replace("-", ".").split(".")[:parts]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def _cc_tuple(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    text = str(value).lower().replace("sm_", "").replace("sm", "")
    if "." in text:
        major, minor = text.split(".", 1)
        return int(major), int(minor)
    if text.isdigit() and len(text) >= 2:
        return int(text[:-1]), int(text[-1])
    return None


def check_engine_record(record: dict[str, Any] | None, trt_version: str, gpu_name: str,
                        compute_capability: tuple[int, int] | None) -> list[str]:
    """Refuse an engine built for another TensorRT version or GPU; return warnings for soft mismatches.

    Record keys read (written by the engine builder): "tensorrt" (version string), "gpu" (device name),
    "compute_capability" ("8.9", [8, 9] or "sm_89"), optional "version_compatible" (bool) and
    "hardware_compatibility" (e.g. "ampere+"), which relax the checks the way TensorRT does.
    """
    if not record:
        return ["the engine has no manifest record; TensorRT version and GPU cannot be checked before loading"]
    warnings: list[str] = []
    built_trt = record.get("tensorrt") or record.get("tensorrt_version")
    if built_trt:
        built, running = _version_tuple(built_trt), _version_tuple(trt_version)
        # A version-compatible engine runs on the same or a LATER release of the same major version,
        # never on an older one (TensorRT's forward-compatibility rule).
        same = (built == running if not record.get("version_compatible")
                else built[0] == running[0] and running >= built)
        if not same:
            raise UserError(f"engine was built with TensorRT {built_trt} but TensorRT {trt_version} is installed; "
                            "rebuild it on this machine (lrformer-export ... --engine) or install the matching TensorRT")
    built_cc = _cc_tuple(record.get("compute_capability") or record.get("gpu_compute_capability"))
    built_gpu = record.get("gpu") or record.get("gpu_name")
    hw_compat = str(record.get("hardware_compatibility") or "none").lower()
    if hw_compat in ("none", "", "false"):
        if built_cc and compute_capability and built_cc != tuple(compute_capability):
            raise UserError(f"engine was built for {built_gpu or 'a GPU'} (compute capability {built_cc[0]}.{built_cc[1]}) "
                            f"but this GPU is {gpu_name} ({compute_capability[0]}.{compute_capability[1]}); "
                            "TensorRT engines only run on the GPU generation that built them: rebuild it here")
        if built_gpu and gpu_name and str(built_gpu) != str(gpu_name):
            warnings.append(f"engine was built on {built_gpu}, running on {gpu_name}: it loads, but the kernels "
                            "were tuned for the other GPU; rebuild for best speed")
    elif hw_compat == "same-cc":
        if built_cc and compute_capability and built_cc != tuple(compute_capability):
            raise UserError(f"engine was built for GPUs of compute capability {built_cc[0]}.{built_cc[1]} "
                            f"(same-cc); this GPU is {gpu_name} ({compute_capability[0]}.{compute_capability[1]})")
    elif compute_capability and tuple(compute_capability) < (8, 0):
        raise UserError(f"engine was built hardware-compatible ({hw_compat}), which needs an Ampere or newer GPU; "
                        f"this GPU is {gpu_name}")
    return warnings


class SharedEngines:
    """One deserialized engine per (file, device), shared by every runner that loads it.

    Each runner (one per Segmenter, e.g. one per thread) gets its own execution context, streams and
    buffers from the shared ICudaEngine, which TensorRT allows (an engine is thread-safe, a context is
    not); the weights are on the GPU once instead of once per runner. The engine is dropped when the
    last runner releases it.
    """

    _lock = threading.Lock()
    _entries: dict[tuple, list] = {}  # key -> [runtime, engine, users, logger]

    @classmethod
    def key(cls, path: Path, device_id: int) -> tuple:
        st = path.stat()
        return (str(path.resolve()), st.st_size, st.st_mtime_ns, device_id)

    @classmethod
    def acquire(cls, key: tuple, load) -> tuple[Any, Any]:
        """(runtime, engine) for `key`; `load()` -> (runtime, engine, logger) deserializes it, once, under the lock."""
        with cls._lock:
            entry = cls._entries.get(key)
            if entry is None:
                runtime, engine, logger = load()  # the logger must outlive the runtime
                entry = cls._entries[key] = [runtime, engine, 0, logger]
            entry[2] += 1
            return entry[0], entry[1]

    @classmethod
    def release(cls, key: tuple) -> None:
        with cls._lock:
            entry = cls._entries.get(key)
            if entry is not None:
                entry[2] -= 1
                if entry[2] <= 0:
                    del cls._entries[key]


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise UserError(missing_package("tensorrt", "the tensorrt backend") + "; use --backend onnxruntime "
                        "otherwise") from None
    return trt


class TensorRTRunner(Runner):
    # An IExecutionContext must not be used by two threads at once: callers serialise (the Segmenter
    # holds a lock) or create one runner per thread.
    thread_safe = False

    def __init__(self, engine_path: str | Path, engine_record: dict[str, Any] | None = None, device_id: int = 0,
                 stream: Any = None, memory: str = "auto", cuda_graph: bool | None = None) -> None:
        super().__init__()
        self.engine_path = Path(engine_path)
        self.engine_record = engine_record
        self.device_id = device_id
        self.user_stream = stream
        self.memory_kind = memory
        # CUDA-graph replay of execute_async_v3 for static-shape engines (see _execute); on by default,
        # LRFORMER_TRT_CUDA_GRAPH=0 or cuda_graph=False turns it off.
        self.cuda_graph = (os.environ.get("LRFORMER_TRT_CUDA_GRAPH", "1") != "0") if cuda_graph is None else cuda_graph
        self.cuda_graph_status = "not activated"
        self._graphs: dict[int, int] = {}  # buffer slot -> executable graph
        self._inflight: list[_Ticket] = []
        self.name = "tensorrt"

    def _activate(self) -> None:
        trt = _import_tensorrt()
        if not self.engine_path.is_file():
            raise UserError(f"engine file not found: {self.engine_path}")
        self.mem = cuda.make_memory(self.device_id, self.memory_kind)
        gpu_name, cc = self.mem.gpu()
        for warning in check_engine_record(self.engine_record, trt.__version__, gpu_name, cc):
            print(f"warning: {warning}", file=sys.stderr)
        self.mem.push()
        self._engine_key = None
        try:
            key = SharedEngines.key(self.engine_path, self.device_id)
            self._runtime, engine = SharedEngines.acquire(key, lambda: self._load(trt, gpu_name))
            self._engine_key = key
            self.engine = engine
            self.context = engine.create_execution_context()
            if self.context is None:
                raise UserError(f"TensorRT could not create an execution context for {self.engine_path.name} "
                                "(out of GPU memory?)")
            self.inputs: dict[str, tuple[tuple[int, ...], np.dtype, int]] = {}
            # Pinned (page-locked) host staging per input: an asynchronous copy from pageable memory
            # would be staged and serialised by the driver.
            self._staging: dict[str, np.ndarray] = {}
            self.outputs: dict[str, tuple[tuple[int, ...], np.dtype, int, np.ndarray]] = {}
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
            self.dynamic = False
            # Shapes as the engine declares them (-1 for dynamic dims), for io_info().
            self.declared = {n: tuple(int(d) for d in engine.get_tensor_shape(n)) for n in names}
            for name in (n for n in names if is_input[n]):
                shape = tuple(int(d) for d in engine.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    # Engines built with a batch profile: buffers for the profile's largest shape,
                    # which is also bound by default (set_input_shape again per call).
                    shape = tuple(int(d) for d in engine.get_tensor_profile_shape(name, 0)[2])
                    self._set_shape(name, shape)
                    self.dynamic = True
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
                ptr = self.mem.alloc(int(np.prod(shape)) * dtype.itemsize)
                self._bind(name, ptr)
                self.inputs[name] = (shape, dtype, ptr)
                self._staging[name] = self.mem.pinned(shape, dtype)
            for name in (n for n in names if not is_input[n]):
                # With every input shape set, the context knows the (largest) output shapes.
                shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
                ptr = self.mem.alloc(int(np.prod(shape)) * dtype.itemsize)
                self._bind(name, ptr)
                self.outputs[name] = (shape, dtype, ptr, self.mem.pinned(shape, dtype))
            # Streams are made here, inside the pushed context (pycuda needs one), never in infer().
            self.stream = self.user_stream if self.user_stream is not None else self.mem.new_stream()
            self._stream_handle, copy_stream = self._handle()
            self._own_copies = copy_stream is None
            # The caller's stream cannot carry our copies: copy on a private stream, synchronised on both sides.
            self._copy_stream = self.mem.new_stream() if self._own_copies else copy_stream
            self._graphs = {}
            self.cuda_graph_status = self._graph_eligibility()
            # submit()/collect(): slot 1's buffers and the two copy streams are made on first use.
            self._slots: dict[int, tuple[dict, dict]] = {
                0: ({n: (ptr, self._staging[n]) for n, (_, _, ptr) in self.inputs.items()},
                    {n: (ptr, host) for n, (_, _, ptr, host) in self.outputs.items()})}
            self._bound_outputs = 0
            self._next_slot = 0
            self._overlap_streams: tuple[Any, Any] | None = None
            self._inflight = []
        except BaseException:
            self._release_engine()
            raise
        finally:
            self.mem.pop()
        self.name = f"tensorrt[{gpu_name}]"

    def _load(self, trt, gpu_name: str) -> tuple[Any, Any, Any]:
        logger = trt.Logger(trt.Logger.ERROR)
        runtime = trt.Runtime(logger)
        if (self.engine_record or {}).get("version_compatible"):
            # A version-compatible plan carries its own lean runtime, which TensorRT only runs when
            # host code in engines is allowed (set before deserializing).
            runtime.engine_host_code_allowed = True
        engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if engine is None:
            raise UserError(f"TensorRT {trt.__version__} could not load {self.engine_path.name} on {gpu_name}: "
                            "it was probably built by another TensorRT version or for another GPU; rebuild it here")
        return runtime, engine, logger

    def _graph_eligibility(self) -> str:
        """"warm-up" when capture will be tried after the first plain execution, else why it never is."""
        if not self.cuda_graph:
            return "off (disabled)"
        if self.dynamic:
            # A graph freezes the shapes it was captured with; re-capturing per batch size is not worth it.
            return "off (dynamic input shapes)"
        if any(d < 0 for shape, *_ in self.outputs.values() for d in shape):
            # Data-dependent output shapes need an output allocator during enqueue: not capturable.
            return "off (data-dependent output shapes)"
        if self._stream_handle in (0, cuda.LEGACY_DEFAULT_STREAM):
            return "off (the legacy default stream cannot be captured)"
        return "warm-up"

    def _execute(self, handle: int, slot: int | None) -> None:
        """execute_async_v3, or the replay of its CUDA graph when every tensor is bound to buffer slot `slot`.

        A graph holds the addresses bound at capture, so there is one per slot of the runner's own buffers
        (slot None: an input is bound somewhere else, e.g. a GPU input bound in place, which runs
        plainly). Capture follows a plain execution (TensorRT does deferred setup on the first enqueue,
        which must not land in the graph); a failure is remembered and every later call runs plainly.
        """
        graph = self._graphs.get(slot) if slot is not None else None
        if graph is not None:
            self.mem.graph_launch(graph, handle)
            return
        if not self.context.execute_async_v3(handle):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.engine_path.name}")
        if slot is not None and self.cuda_graph_status in ("warm-up", "replaying"):
            self._capture(handle, slot)

    def _capture(self, handle: int, slot: int) -> None:
        # Capturing records the enqueued work without running it: this call's results come from the
        # plain execution just issued.
        try:
            self.mem.capture_begin(handle)
        except Exception as exc:
            self.cuda_graph_status = f"off (capture failed: {exc})"
            return
        ok, error, graph = False, None, None
        try:
            ok = bool(self.context.execute_async_v3(handle))
        except Exception as exc:
            error = exc
        finally:
            try:  # always end the capture, so the stream leaves capture mode
                graph = self.mem.capture_end(handle)
            except Exception as exc:
                error = error or exc
        if ok and graph is not None:
            self._graphs[slot] = graph
            self.cuda_graph_status = "replaying"
            return
        if graph is not None:
            self.mem.graph_destroy(graph)
        reason = f"capture failed: {error or 'execute_async_v3 returned False'}"
        # Graphs already captured for other buffer slots stay valid and keep being replayed.
        self.cuda_graph_status = (f"replaying slot(s) {sorted(self._graphs)} only ({reason})" if self._graphs
                                  else f"off ({reason})")

    def _release_engine(self) -> None:
        for graph in self._graphs.values():
            self.mem.graph_destroy(graph)
        self._graphs = {}
        self.context = None
        self.engine = None
        if getattr(self, "_engine_key", None) is not None:
            SharedEngines.release(self._engine_key)
            self._engine_key = None

    def _deactivate(self) -> None:
        self.mem.push()
        try:
            for ticket in list(self._inflight):  # the GPU may still write into buffers about to be freed
                self._finish(ticket)
            self._release_engine()
            self.mem.release()
        finally:
            self.mem.pop()

    def io_info(self) -> tuple[list[tuple[str, tuple]], list[tuple[str, tuple]]]:
        return ([(n, self.declared[n]) for n in self.inputs], [(n, self.declared[n]) for n in self.outputs])

    def _bind(self, name: str, ptr: int) -> None:
        # On refusal TensorRT keeps the previous address: running anyway would read stale data.
        if not self.context.set_tensor_address(name, ptr):
            raise UserError(f"TensorRT refused address {ptr:#x} for tensor {name} of {self.engine_path.name} "
                            f"(addresses must be {ADDRESS_ALIGNMENT}-byte aligned)")

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if not self.context.set_input_shape(name, tuple(int(d) for d in shape)):
            raise UserError(f"TensorRT refused shape {tuple(shape)} for input {name} of {self.engine_path.name} "
                            "(outside the engine's optimization profile)")

    def _handle(self) -> tuple[int, Any]:
        """(raw stream handle for TensorRT, stream object usable for our copies or None)."""
        stream = self.stream
        if isinstance(stream, int):
            return stream, None
        if self.mem.owns(stream):  # the provider's own stream type can carry our copies
            return self.mem.stream_handle(stream), stream
        if hasattr(stream, "cuda_stream"):  # torch.cuda.Stream
            return int(stream.cuda_stream), None
        if hasattr(stream, "handle"):  # pycuda Stream
            return int(stream.handle), None
        raise UserError(f"unsupported CUDA stream object {type(stream).__name__}: pass an int handle, "
                        "a pycuda Stream or a torch.cuda.Stream")

    def infer(self, feed: dict[str, Any]) -> dict[str, np.ndarray]:
        handle, copy_stream, own_copies = self._stream_handle, self._copy_stream, self._own_copies
        self.mem.push()
        try:
            self._drain()  # submit()'s batches still in flight use the streams and may use slot 0
            if self._bound_outputs != 0:
                for name, (_, _, ptr, _) in self.outputs.items():
                    self._bind(name, ptr)
                self._bound_outputs = 0
            producers, device_copies, own_buffers = [], [], True
            for name, (shape, dtype, ptr) in self.inputs.items():
                value = feed[name]
                on_gpu = cuda.device_pointer(value, dtype, shape, self.dynamic)
                if on_gpu is not None:
                    gpu_ptr, gpu_shape, producer = on_gpu
                    if self.dynamic:  # else the previous call's shape would stay in effect
                        self._set_shape(name, gpu_shape)
                    if gpu_ptr % ADDRESS_ALIGNMENT:
                        # TensorRT binds only aligned addresses: an offset view is copied on the GPU into
                        # our own (aligned) buffer, on the engine's stream after its producer.
                        self._bind(name, ptr)
                        device_copies.append((ptr, gpu_ptr, int(np.prod(gpu_shape)) * dtype.itemsize))
                    else:
                        self._bind(name, gpu_ptr)
                        own_buffers = own_buffers and gpu_ptr == ptr
                    if producer is not None and producer != handle:
                        producers.append(producer)
                    continue
                value = self._host_input(name, value, shape)
                if self.dynamic:
                    self._set_shape(name, value.shape)
                self._bind(name, ptr)
                host = self._staging[name].reshape(-1)[: value.size].reshape(value.shape)
                np.copyto(host, value, casting="unsafe")
                self.mem.htod(ptr, host, copy_stream)
            for producer in dict.fromkeys(producers):
                self.mem.stream_wait(handle, producer)
            for dst, src, nbytes in device_copies:
                self.mem.dtod(dst, src, nbytes, handle)
            if own_copies:
                self.mem.synchronize(copy_stream)
            self._execute(handle, 0 if own_buffers else None)
            if own_copies:
                self._sync_handle(handle)
            results = {}
            for name, (_, _, ptr, host) in self.outputs.items():
                if self.dynamic:
                    # Only the leading part of the buffer holds this call's (smaller) output.
                    shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
                    host = host.reshape(-1)[: int(np.prod(shape))].reshape(shape)
                self.mem.dtoh(host, ptr, copy_stream)
                results[name] = host
            self.mem.synchronize(copy_stream)
            return {name: host.copy() for name, host in results.items()}
        finally:
            self.mem.pop()

    def _sync_handle(self, handle: int) -> None:
        self.mem.sync_handle(handle)

    def _host_input(self, name: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
        value = np.asarray(value)
        if value.shape != shape:
            fits = self.dynamic and value.ndim == len(shape) and all(a <= b for a, b in zip(value.shape, shape))
            if not fits:
                raise UserError(f"input {name} has shape {value.shape}; the engine wants {shape}")
        return value

    # ------------------------------------------------------------------ overlapped submit / collect
    def submit(self, feed: dict[str, Any]) -> "_Ticket":
        """Start one batch without waiting for it; `collect(ticket)` returns its outputs.

        Calling `submit(k+1)` before `collect(k)` overlaps the host->device copy of batch k+1 (on a private
        input stream) with the execution of batch k (on the engine stream, which waits for each copy by
        an event); outputs come back on a private output stream, so the next copy never queues behind
        them. Two slots of device and pinned buffers alternate, so at most two batches are in flight: a
        third submit first completes the oldest. Inputs already on the GPU run through `infer` (nothing
        to copy, so nothing to overlap).
        """
        if any(not isinstance(v, np.ndarray) for v in feed.values()):
            return _Ticket(result=self.infer(feed))
        handle = self._stream_handle
        self.mem.push()
        try:
            while len(self._inflight) >= 2:
                self._finish(self._inflight[0])
            slot, self._next_slot = self._next_slot, self._next_slot ^ 1
            ins, outs = self._slot(slot)
            in_stream, out_stream = self._streams_for_overlap()
            for name, (shape, _, _) in self.inputs.items():
                value = self._host_input(name, feed[name], shape)
                if self.dynamic:
                    self._set_shape(name, value.shape)
                ptr, staging = ins[name]
                self._bind(name, ptr)
                host = staging.reshape(-1)[: value.size].reshape(value.shape)
                np.copyto(host, value, casting="unsafe")
                self.mem.htod(ptr, host, in_stream)
            if self._bound_outputs != slot:
                for name, (ptr, _) in outs.items():
                    self._bind(name, ptr)
                self._bound_outputs = slot
            self.mem.stream_wait(handle, self.mem.stream_handle(in_stream))
            self._execute(handle, slot)
            self.mem.stream_wait(self.mem.stream_handle(out_stream), handle)
            views = []
            for name, (ptr, host) in outs.items():
                if self.dynamic:
                    shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
                    host = host.reshape(-1)[: int(np.prod(shape))].reshape(shape)
                self.mem.dtoh(host, ptr, out_stream)
                views.append((name, host))
            ticket = _Ticket(event=self.mem.record_event(self.mem.stream_handle(out_stream)), views=views)
            self._inflight.append(ticket)
            return ticket
        finally:
            self.mem.pop()

    def collect(self, ticket: "_Ticket") -> dict[str, np.ndarray]:
        """The outputs of a submitted batch, waiting for that batch only."""
        if ticket.result is None:
            self.mem.push()
            try:
                self._finish(ticket)
            finally:
                self.mem.pop()
        return ticket.result  # type: ignore[return-value]

    def _finish(self, ticket: "_Ticket") -> None:
        self.mem.event_wait(ticket.event)
        ticket.result = {name: host.copy() for name, host in ticket.views}
        ticket.views = []
        self._inflight.remove(ticket)

    def _drain(self) -> None:
        for ticket in list(self._inflight):
            self._finish(ticket)

    def _slot(self, slot: int) -> tuple[dict, dict]:
        if slot not in self._slots:
            ins = {n: (self.mem.alloc(int(np.prod(shape)) * dtype.itemsize), self.mem.pinned(shape, dtype))
                   for n, (shape, dtype, _) in self.inputs.items()}
            outs = {n: (self.mem.alloc(int(np.prod(shape)) * dtype.itemsize), self.mem.pinned(shape, dtype))
                    for n, (shape, dtype, _, _) in self.outputs.items()}
            self._slots[slot] = (ins, outs)
        return self._slots[slot]

    def _streams_for_overlap(self) -> tuple[Any, Any]:
        # Made on first use, inside the pushed context; never the engine stream (see submit).
        if self._overlap_streams is None:
            self._overlap_streams = (self.mem.new_stream(), self.mem.new_stream())
        return self._overlap_streams


class _Ticket:
    """One submitted batch: the event after its outputs' copy, the host views they land in, then the result."""

    __slots__ = ("event", "views", "result")

    def __init__(self, event: Any = None, views: list | None = None, result: dict | None = None) -> None:
        self.event, self.views, self.result = event, views or [], result
