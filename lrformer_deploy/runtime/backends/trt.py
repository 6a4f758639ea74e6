"""TensorRT backend, written to the TensorRT 10/11 name-based I/O API.

Engines are deserialised with `trt.Runtime.deserialize_cuda_engine`; I/O tensors are found with
`num_io_tensors` / `get_tensor_name` / `get_tensor_mode`, bound with `set_tensor_address` (and
`set_input_shape` for dynamic inputs) and run with `execute_async_v3(stream_handle)`. No binding-index
APIs (removed in TensorRT 10) are used.

Device memory comes from pycuda (primary context, so it coexists with torch and TensorRT's own runtime
API use) or, when pycuda is missing, from torch.cuda. Inputs already on the GPU (objects with
`__cuda_array_interface__`, or CUDA DLPack capsules via torch/cupy) are bound directly, no copy; the
engine's stream first waits for the stream that produced them (the interface's v3 `stream` field;
torch's current stream for torch tensors, which export v2; the legacy default stream otherwise), as
the CUDA Array Interface asks consumers to do. Their pointers must be 256-byte aligned (TensorRT's
rule; `set_tensor_address` keeps the old address when refusing one, so a refusal is an error here).
A caller's CUDA stream may be passed as an int handle, a pycuda Stream or a torch.cuda.Stream. Every
stream the runner creates is created once, in `activate()`, inside the device's context (a pycuda
Stream needs a current context).

An engine only loads with the TensorRT version and GPU generation that built it, so the manifest's
engine record is compared with the running ones first and a mismatch is one clear UserError.

NOTE: this module cannot run on the development machines (no GPU, no TensorRT). On CPU, the tests
drive it with a fake `tensorrt` module and a recording memory provider (call order and return-value
handling only, never a TensorRT result); tests/test_tensorrt_api.py checks every TensorRT name used
here against the real bindings' symbol tables; samples/gpu_check.py runs it on a GPU.
"""
from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from typing import Any

import numpy as np

from lrformer_deploy.errors import UserError
from lrformer_deploy.runtime.backends.base import Runner


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
        same = built == running if not record.get("version_compatible") else built[0] == running[0]
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
    elif compute_capability and tuple(compute_capability) < (8, 0):
        raise UserError(f"engine was built hardware-compatible ({hw_compat}), which needs an Ampere or newer GPU; "
                        f"this GPU is {gpu_name}")
    return warnings


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise UserError("the tensorrt backend needs the TensorRT Python package (pip install tensorrt); "
                        "use --backend onnxruntime otherwise") from None
    return trt


# TensorRT requires I/O addresses aligned to this many bytes (IExecutionContext::setTensorAddress).
ADDRESS_ALIGNMENT = 256
# CUDA's special stream handles (same values in the driver and runtime APIs).
LEGACY_DEFAULT_STREAM = 1


class _CudaDriver:
    """The three driver calls pycuda cannot make on raw stream handles (event record / stream wait)."""

    _lib = None

    @classmethod
    def lib(cls):
        if cls._lib is None:
            cls._lib = ctypes.CDLL("nvcuda.dll" if sys.platform.startswith("win") else "libcuda.so.1")
        return cls._lib

    @classmethod
    def stream_wait(cls, consumer: int, producer: int) -> None:
        lib, event = cls.lib(), ctypes.c_void_p()
        for call, args in (("cuEventCreate", (ctypes.byref(event), 2)),  # CU_EVENT_DISABLE_TIMING
                           ("cuEventRecord", (event, ctypes.c_void_p(producer))),
                           ("cuStreamWaitEvent", (ctypes.c_void_p(consumer), event, 0))):
            rc = getattr(lib, call)(*args)
            if rc != 0:
                raise RuntimeError(f"{call} failed with CUDA error {rc}")
        lib.cuEventDestroy_v2(event)  # released once the wait has been satisfied

    @classmethod
    def stream_synchronize(cls, handle: int) -> None:
        rc = cls.lib().cuStreamSynchronize(ctypes.c_void_p(handle))
        if rc != 0:
            raise RuntimeError(f"cuStreamSynchronize failed with CUDA error {rc}")


class _PycudaMemory:
    """Device buffers, pinned host buffers and copies through pycuda on the device's primary context."""

    kind = "pycuda"

    def __init__(self, device_id: int) -> None:
        import pycuda.driver as cuda

        cuda.init()
        self.cuda = cuda
        self.device = cuda.Device(device_id)
        self.context = self.device.retain_primary_context()
        self._keep: list[Any] = []

    def gpu(self) -> tuple[str, tuple[int, int]]:
        return self.device.name(), tuple(self.device.compute_capability())  # type: ignore[return-value]

    def push(self) -> None:
        self.context.push()

    def pop(self) -> None:
        self.cuda.Context.pop()

    def alloc(self, nbytes: int) -> int:
        buf = self.cuda.mem_alloc(max(1, nbytes))
        self._keep.append(buf)
        return int(buf)

    def pinned(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return self.cuda.pagelocked_empty(shape, dtype)

    def new_stream(self) -> Any:
        return self.cuda.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def htod(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self.cuda.memcpy_htod_async(dst, src, stream)

    def dtoh(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self.cuda.memcpy_dtoh_async(dst, src, stream)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def owns(self, stream: Any) -> bool:
        return isinstance(stream, self.cuda.Stream)

    def stream_wait(self, consumer: int, producer: int) -> None:
        _CudaDriver.stream_wait(consumer, producer)

    def sync_handle(self, handle: int) -> None:
        _CudaDriver.stream_synchronize(handle)

    def release(self) -> None:
        for buf in self._keep:
            buf.free()
        self._keep.clear()


class _TorchMemory:
    """The same services through torch.cuda, for machines that have torch but not pycuda."""

    kind = "torch.cuda"

    def __init__(self, device_id: int) -> None:
        import torch

        if not torch.cuda.is_available():
            raise UserError("the tensorrt backend needs a CUDA GPU; torch sees none")
        self.torch = torch
        self.device = torch.device("cuda", device_id)
        self._keep: list[Any] = []

    def gpu(self) -> tuple[str, tuple[int, int]]:
        return self.torch.cuda.get_device_name(self.device), tuple(self.torch.cuda.get_device_capability(self.device))

    def push(self) -> None:
        self.torch.cuda.set_device(self.device)

    def pop(self) -> None:
        pass

    def alloc(self, nbytes: int) -> int:
        buf = self.torch.empty(max(1, nbytes), dtype=self.torch.uint8, device=self.device)
        self._keep.append(buf)
        return int(buf.data_ptr())

    def pinned(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        host = self.torch.from_numpy(np.empty(shape, dtype)).pin_memory()
        self._keep.append(host)
        return host.numpy()

    def new_stream(self) -> Any:
        return self.torch.cuda.Stream(device=self.device)

    def stream_handle(self, stream: Any) -> int:
        return int(stream.cuda_stream)

    def _view(self, ptr: int, nbytes: int) -> Any:
        for buf in self._keep:
            if buf.is_cuda and buf.data_ptr() == ptr:
                return buf[:nbytes]
        raise RuntimeError("unknown device buffer")

    def htod(self, dst: int, src: np.ndarray, stream: Any) -> None:
        with self.torch.cuda.stream(stream):
            self._view(dst, src.nbytes).copy_(self.torch.from_numpy(src.reshape(-1).view(np.uint8)), non_blocking=True)

    def dtoh(self, dst: np.ndarray, src: int, stream: Any) -> None:
        with self.torch.cuda.stream(stream):
            self.torch.from_numpy(dst.reshape(-1).view(np.uint8)).copy_(self._view(src, dst.nbytes), non_blocking=True)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def owns(self, stream: Any) -> bool:
        return isinstance(stream, self.torch.cuda.Stream)

    def stream_wait(self, consumer: int, producer: int) -> None:
        ext = self.torch.cuda.ExternalStream
        ext(consumer, device=self.device).wait_stream(ext(producer, device=self.device))

    def sync_handle(self, handle: int) -> None:
        self.torch.cuda.ExternalStream(handle, device=self.device).synchronize()

    def release(self) -> None:
        self._keep.clear()


def _make_memory(device_id: int, prefer: str) -> Any:
    errors = []
    order = {"auto": ("pycuda", "torch"), "pycuda": ("pycuda",), "torch": ("torch",)}.get(prefer)
    if order is None:
        raise UserError(f"unknown CUDA memory provider {prefer!r}: use auto, pycuda or torch")
    for name in order:
        try:
            return _PycudaMemory(device_id) if name == "pycuda" else _TorchMemory(device_id)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
        except UserError:
            raise
        except Exception as exc:  # pycuda raises its own driver errors when no usable GPU is present
            raise UserError(f"cannot initialise CUDA device {device_id} through {name}: {exc}") from None
    raise UserError("the tensorrt backend needs pycuda (pip install pycuda) or torch with CUDA for device memory")


def _is_torch_tensor(value: Any) -> bool:
    # Without importing torch (the runtime must not need it).
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "data_ptr")


def _producer_stream(value: Any, iface: dict) -> int | None:
    """The stream the engine must wait for before reading `value`, or None when no wait is needed."""
    if "stream" in iface:  # CUDA Array Interface v3: None means the data is ready
        stream = iface["stream"]
        return None if stream is None else (LEGACY_DEFAULT_STREAM if int(stream) == 0 else int(stream))
    if _is_torch_tensor(value):  # torch exports v2 with no stream; its kernels ran on the current stream
        import torch

        return int(torch.cuda.current_stream(value.device).cuda_stream)
    # Unknown producer: an event on the legacy default stream follows all prior work on blocking streams.
    return LEGACY_DEFAULT_STREAM


def _device_pointer(value: Any, dtype: np.dtype, shape: tuple[int, ...],
                    dynamic: bool = False) -> tuple[int, tuple[int, ...], int | None] | None:
    """(pointer, shape, producer stream) of an input that already lives on the GPU, or None for host data.

    `shape` is the engine's (largest) shape; a dynamic engine accepts any shape that fits in it.
    """
    iface = getattr(value, "__cuda_array_interface__", None)
    if iface is None and hasattr(value, "__dlpack_device__"):
        dev_type, _ = value.__dlpack_device__()
        if int(dev_type) == 2:  # kDLCUDA
            for module in ("torch", "cupy"):
                try:
                    lib = __import__(module)
                    # from_dlpack orders the producer's work before that library's current stream,
                    # which the converted array then reports (cupy: v3 stream; torch: current stream).
                    value = lib.from_dlpack(value)
                    iface = value.__cuda_array_interface__
                    break
                except (ImportError, AttributeError):
                    continue
            else:
                raise UserError("CUDA DLPack inputs need torch or cupy installed to read their device pointer")
    if iface is None:
        return None
    got_dtype = np.dtype(iface["typestr"])
    got_shape = tuple(int(d) for d in iface["shape"])
    fits = got_shape == tuple(shape) or (dynamic and len(got_shape) == len(shape)
                                         and all(0 < a <= b for a, b in zip(got_shape, shape)))
    if got_dtype != dtype or not fits:
        raise UserError(f"GPU input has dtype {got_dtype} shape {got_shape}; the engine wants {dtype} {tuple(shape)}")
    shape = got_shape
    strides = iface.get("strides")
    if strides is not None:
        # C-contiguous strides in bytes: the engine reads the buffer as one dense block.
        dense, step = [], dtype.itemsize
        for dim in reversed(shape):
            dense.append(step)
            step *= dim
        if tuple(strides) != tuple(reversed(dense)):
            raise UserError("GPU inputs must be C-contiguous")
    ptr = int(iface["data"][0])
    if ptr % ADDRESS_ALIGNMENT:
        raise UserError(f"GPU input at address {ptr:#x} is not {ADDRESS_ALIGNMENT}-byte aligned, which TensorRT "
                        "requires; pass a tensor that owns its memory (e.g. .contiguous().clone()), not an offset view")
    return ptr, got_shape, _producer_stream(value, iface)


class TensorRTRunner(Runner):
    # An IExecutionContext must not be used by two threads at once: callers serialise (the Segmenter
    # holds a lock) or create one runner per thread.
    thread_safe = False

    def __init__(self, engine_path: str | Path, engine_record: dict[str, Any] | None = None, device_id: int = 0,
                 stream: Any = None, memory: str = "auto") -> None:
        super().__init__()
        self.engine_path = Path(engine_path)
        self.engine_record = engine_record
        self.device_id = device_id
        self.user_stream = stream
        self.memory_kind = memory
        self.name = "tensorrt"

    def _activate(self) -> None:
        trt = _import_tensorrt()
        if not self.engine_path.is_file():
            raise UserError(f"engine file not found: {self.engine_path}")
        self.mem = _make_memory(self.device_id, self.memory_kind)
        gpu_name, cc = self.mem.gpu()
        for warning in check_engine_record(self.engine_record, trt.__version__, gpu_name, cc):
            print(f"warning: {warning}", file=sys.stderr)
        self.mem.push()
        try:
            self._logger = trt.Logger(trt.Logger.ERROR)
            self._runtime = trt.Runtime(self._logger)
            engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if engine is None:
                raise UserError(f"TensorRT {trt.__version__} could not load {self.engine_path.name} on {gpu_name}: "
                                "it was probably built by another TensorRT version or for another GPU; rebuild it here")
            self.engine = engine
            self.context = engine.create_execution_context()
            if self.context is None:
                raise UserError(f"TensorRT could not create an execution context for {self.engine_path.name} "
                                "(out of GPU memory?)")
            self.inputs: dict[str, tuple[tuple[int, ...], np.dtype, int]] = {}
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
        finally:
            self.mem.pop()
        self.name = f"tensorrt[{gpu_name}]"

    def _deactivate(self) -> None:
        self.mem.push()
        try:
            self.context = None
            self.engine = None
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
            producers = []
            for name, (shape, dtype, ptr) in self.inputs.items():
                value = feed[name]
                on_gpu = _device_pointer(value, dtype, shape, self.dynamic)
                if on_gpu is not None:
                    gpu_ptr, gpu_shape, producer = on_gpu
                    if self.dynamic:  # else the previous call's shape would stay in effect
                        self._set_shape(name, gpu_shape)
                    self._bind(name, gpu_ptr)
                    if producer is not None and producer != handle:
                        producers.append(producer)
                    continue
                host = np.ascontiguousarray(value, dtype=dtype)
                if host.shape != shape:
                    fits = self.dynamic and host.ndim == len(shape) and all(a <= b for a, b in zip(host.shape, shape))
                    if not fits:
                        raise UserError(f"input {name} has shape {host.shape}; the engine wants {shape}")
                if self.dynamic:
                    self._set_shape(name, host.shape)
                self._bind(name, ptr)
                self.mem.htod(ptr, host, copy_stream)
            for producer in dict.fromkeys(producers):
                self.mem.stream_wait(handle, producer)
            if own_copies:
                self.mem.synchronize(copy_stream)
            if not self.context.execute_async_v3(handle):
                raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.engine_path.name}")
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
