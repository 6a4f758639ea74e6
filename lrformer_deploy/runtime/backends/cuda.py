"""CUDA device memory and streams for the TensorRT runner and the engine builder (no TensorRT here).

Two providers behind one small interface (`make_memory(device_id, "auto" | "pycuda" | "torch")`): pycuda
(primary context, so it coexists with torch and TensorRT's own runtime API use) or torch.cuda when pycuda
is missing. `device_pointer` reads an input that already lives on the GPU (`__cuda_array_interface__`, or
a CUDA DLPack capsule through torch/cupy) and names the stream that produced it, which the consumer's
stream must wait for, as the CUDA Array Interface asks. Kept apart from the TensorRT runner as Polygraphy
keeps `cuda/cuda.py` apart from its TensorRT runner: the engine builder and samples/gpu_check.py use it too.

NOTE: written to the pycuda / torch.cuda / CUDA driver APIs; on machines without a GPU the tests drive it
through a recording fake, never counting that as a CUDA result.
"""
from __future__ import annotations

import ctypes
import sys
from typing import Any

import numpy as np

from lrformer_deploy.errors import UserError, install_hint

# TensorRT requires I/O addresses aligned to this many bytes (IExecutionContext::setTensorAddress).
ADDRESS_ALIGNMENT = 256
# CUDA's special stream handles (same values in the driver and runtime APIs).
LEGACY_DEFAULT_STREAM = 1
PER_THREAD_DEFAULT_STREAM = 2
# CUstreamCaptureMode
CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1


class CudaDriver:
    """Driver calls pycuda cannot make on raw stream handles: event record / stream wait, device copy, CUDA graphs."""

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
    def memcpy_dtod(cls, dst: int, src: int, nbytes: int, stream: int) -> None:
        """Device-to-device copy ordered on the raw stream handle `stream`."""
        rc = cls.lib().cuMemcpyDtoDAsync_v2(ctypes.c_uint64(dst), ctypes.c_uint64(src), ctypes.c_size_t(nbytes),
                                            ctypes.c_void_p(stream))
        if rc != 0:
            raise RuntimeError(f"cuMemcpyDtoDAsync failed with CUDA error {rc}")

    # CUDA graphs through the driver API, so pycuda and torch providers share one path (both work in
    # the device's primary context, where TensorRT runs too).
    @classmethod
    def _check(cls, call: str, rc: int) -> None:
        if rc != 0:
            raise RuntimeError(f"{call} failed with CUDA error {rc}")

    @classmethod
    def capture_begin(cls, handle: int) -> None:
        # Thread-local mode: another thread's runner making an unsafe call (e.g. cudaMalloc) does not
        # invalidate this capture, and this capture does not break that thread.
        cls._check("cuStreamBeginCapture", cls.lib().cuStreamBeginCapture_v2(ctypes.c_void_p(handle),
                                                                            CU_STREAM_CAPTURE_MODE_THREAD_LOCAL))

    @classmethod
    def capture_end(cls, handle: int) -> int:
        """End the capture on `handle` (always, so the stream leaves capture mode) and instantiate it."""
        lib, graph, exec_ = cls.lib(), ctypes.c_void_p(), ctypes.c_void_p()
        cls._check("cuStreamEndCapture", lib.cuStreamEndCapture(ctypes.c_void_p(handle), ctypes.byref(graph)))
        try:
            cls._check("cuGraphInstantiateWithFlags",
                       lib.cuGraphInstantiateWithFlags(ctypes.byref(exec_), graph, ctypes.c_ulonglong(0)))
        finally:
            lib.cuGraphDestroy(graph)  # the executable graph keeps what it needs
        return int(exec_.value)

    @classmethod
    def graph_launch(cls, graph_exec: int, handle: int) -> None:
        cls._check("cuGraphLaunch", cls.lib().cuGraphLaunch(ctypes.c_void_p(graph_exec), ctypes.c_void_p(handle)))

    @classmethod
    def graph_destroy(cls, graph_exec: int) -> None:
        cls.lib().cuGraphExecDestroy(ctypes.c_void_p(graph_exec))

    @classmethod
    def record_event(cls, handle: int) -> int:
        """An event recorded on the raw stream `handle`, for `event_wait` (which destroys it)."""
        lib, event = cls.lib(), ctypes.c_void_p()
        # Blocking sync: a waiting host thread sleeps instead of spinning, leaving the CPU to the pipeline.
        cls._check("cuEventCreate", lib.cuEventCreate(ctypes.byref(event), 3))  # BLOCKING_SYNC | DISABLE_TIMING
        try:
            cls._check("cuEventRecord", lib.cuEventRecord(event, ctypes.c_void_p(handle)))
        except RuntimeError:
            lib.cuEventDestroy_v2(event)
            raise
        return int(event.value)

    @classmethod
    def event_wait(cls, event: int) -> None:
        lib = cls.lib()
        try:
            cls._check("cuEventSynchronize", lib.cuEventSynchronize(ctypes.c_void_p(event)))
        finally:
            lib.cuEventDestroy_v2(ctypes.c_void_p(event))

    @classmethod
    def stream_synchronize(cls, handle: int) -> None:
        rc = cls.lib().cuStreamSynchronize(ctypes.c_void_p(handle))
        if rc != 0:
            raise RuntimeError(f"cuStreamSynchronize failed with CUDA error {rc}")


class _DriverCalls:
    """What both providers do through the CUDA driver on raw handles (device copies, graph capture and
    replay, events): neither pycuda nor torch exposes these for streams and graphs they did not create."""

    def dtod(self, dst: int, src: int, nbytes: int, handle: int) -> None:
        CudaDriver.memcpy_dtod(dst, src, nbytes, handle)

    def capture_begin(self, handle: int) -> None:
        CudaDriver.capture_begin(handle)

    def capture_end(self, handle: int) -> int:
        return CudaDriver.capture_end(handle)

    def graph_launch(self, graph_exec: int, handle: int) -> None:
        CudaDriver.graph_launch(graph_exec, handle)

    def graph_destroy(self, graph_exec: int) -> None:
        CudaDriver.graph_destroy(graph_exec)

    def record_event(self, handle: int) -> int:
        return CudaDriver.record_event(handle)

    def event_wait(self, event: int) -> None:
        CudaDriver.event_wait(event)


class PycudaMemory(_DriverCalls):
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
        CudaDriver.stream_wait(consumer, producer)

    def sync_handle(self, handle: int) -> None:
        CudaDriver.stream_synchronize(handle)

    def release(self) -> None:
        for buf in self._keep:
            buf.free()
        self._keep.clear()


class TorchMemory(_DriverCalls):
    """The same services through torch.cuda, for machines that have torch but not pycuda."""

    kind = "torch.cuda"

    def __init__(self, device_id: int) -> None:
        import torch

        if not torch.cuda.is_available():
            raise UserError("the tensorrt backend needs a CUDA GPU; torch sees none")
        self.torch = torch
        self.device = torch.device("cuda", device_id)
        self._keep: list[Any] = []
        self._previous: list[int] = []

    def gpu(self) -> tuple[str, tuple[int, int]]:
        return self.torch.cuda.get_device_name(self.device), tuple(self.torch.cuda.get_device_capability(self.device))

    def push(self) -> None:
        # Like a pycuda context push/pop: the caller's current device is restored by pop().
        self._previous.append(self.torch.cuda.current_device())
        self.torch.cuda.set_device(self.device)

    def pop(self) -> None:
        if self._previous:
            self.torch.cuda.set_device(self._previous.pop())

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


def make_memory(device_id: int, prefer: str) -> Any:
    errors = []
    order = {"auto": ("pycuda", "torch"), "pycuda": ("pycuda",), "torch": ("torch",)}.get(prefer)
    if order is None:
        raise UserError(f"unknown CUDA memory provider {prefer!r}: use auto, pycuda or torch")
    for name in order:
        try:
            return PycudaMemory(device_id) if name == "pycuda" else TorchMemory(device_id)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
        except UserError:
            raise
        except Exception as exc:  # pycuda raises its own driver errors when no usable GPU is present
            raise UserError(f"cannot initialise CUDA device {device_id} through {name}: {exc}") from None
    raise UserError(f"the tensorrt backend needs pycuda ({install_hint('pycuda')}) or torch with CUDA for "
                    "device memory")


def is_torch_tensor(value: Any) -> bool:
    # Without importing torch (the runtime must not need it).
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "data_ptr")


def producer_stream(value: Any, iface: dict) -> int | None:
    """The stream the engine must wait for before reading `value`, or None when no wait is needed."""
    if "stream" in iface:  # CUDA Array Interface v3: None means the data is ready
        stream = iface["stream"]
        return None if stream is None else (LEGACY_DEFAULT_STREAM if int(stream) == 0 else int(stream))
    if is_torch_tensor(value):  # torch exports v2 with no stream; its kernels ran on the current stream
        import torch

        return int(torch.cuda.current_stream(value.device).cuda_stream)
    # Unknown producer: an event on the legacy default stream follows all prior work on blocking streams.
    return LEGACY_DEFAULT_STREAM


def device_pointer(value: Any, dtype: np.dtype, shape: tuple[int, ...],
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
    # A pointer that is not ADDRESS_ALIGNMENT-aligned (an offset view) is returned as it is: the runner
    # copies it into its own aligned buffer instead of binding it.
    return int(iface["data"][0]), got_shape, producer_stream(value, iface)
