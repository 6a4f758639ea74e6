"""A recording stand-in for the `tensorrt` module and for the runner's CUDA memory provider.

It lets CPU tests check what our code does around TensorRT: call order, which return values it checks,
what it writes and records. It computes nothing, so nothing it does is a TensorRT result. The names it
offers are the ones tests/test_tensorrt_api.py checks against the real bindings.
"""
from __future__ import annotations

import types

import numpy as np


class Recorder:
    def __init__(self):
        self.calls: list[tuple] = []

    def __call__(self, *entry):
        self.calls.append(entry)

    def names(self):
        return [c[0] for c in self.calls]


def make_trt(log: Recorder, *, version="10.16.1.11", dynamic=False, context_ok=True, address_ok=lambda p: True,
             set_cache_ok=True, final_cache=True, serialized=b"PLAN", tf32_flag=True, plugins=(), same_cc=True,
             layers=None):
    """A module object with the TensorRT names our code uses; behaviour switches are the keyword args.

    set_cache_ok: True, False, or "empty-only" (a cache from another device is refused, an empty one taken).
    plugins: names of plugin layers the parsed network holds. layers: the inspector's "Layers" list.
    """
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Logger:
        VERBOSE, INFO, WARNING, ERROR = "VERBOSE", "INFO", "WARNING", "ERROR"

        def __init__(self, level):
            log("Logger", level)

    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    trt.Logger, trt.TensorIOMode = Logger, TensorIOMode
    trt.nptype = lambda dtype: {"float32": np.float32, "int32": np.int32}[dtype]
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    trt.BuilderFlag = types.SimpleNamespace(VERSION_COMPATIBLE="VERSION_COMPATIBLE",
                                            **({"TF32": "TF32"} if tf32_flag else {}))
    trt.ProfilingVerbosity = types.SimpleNamespace(DETAILED="DETAILED")
    trt.HardwareCompatibilityLevel = types.SimpleNamespace(
        AMPERE_PLUS="AMPERE_PLUS", **({"SAME_COMPUTE_CAPABILITY": "SAME_COMPUTE_CAPABILITY"} if same_cc else {}))
    trt.LayerType = types.SimpleNamespace(PLUGIN="PLUGIN", PLUGIN_V2="PLUGIN_V2", PLUGIN_V3="PLUGIN_V3",
                                          CONVOLUTION="CONVOLUTION")
    trt.LayerInformationFormat = types.SimpleNamespace(JSON="JSON", ONELINE="ONELINE")
    report_layers = layers if layers is not None else [
        {"Name": "conv", "Outputs": [{"Name": "x", "Format/Datatype": "Row major linear FP16 format"}]},
        {"Name": "argmax", "Outputs": [{"Name": "mask", "Format/Datatype": "Row major linear Int32"}]}]

    in_shape = (-1, 3, 4, 4) if dynamic else (1, 3, 4, 4)
    profile_max = (4, 3, 4, 4)

    class Context:
        def __init__(self):
            self.shape = profile_max if dynamic else in_shape

        def set_input_shape(self, name, shape):
            log("set_input_shape", name, tuple(shape))
            self.shape = tuple(shape)
            return True

        def set_tensor_address(self, name, ptr):
            ok = address_ok(ptr)
            log("set_tensor_address", name, ptr, ok)
            return ok

        def get_tensor_shape(self, name):
            return (self.shape[0], 4, 4)

        def execute_async_v3(self, handle):
            log("execute_async_v3", handle)
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["image", "mask"][i]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name == "image" else TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return in_shape if name == "image" else (in_shape[0], 4, 4)

        def get_tensor_dtype(self, name):
            return "float32" if name == "image" else "int32"

        def get_tensor_profile_shape(self, name, profile):
            return [(1, 3, 4, 4), (1, 3, 4, 4), profile_max]

        def create_execution_context(self):
            log("create_execution_context")
            return Context() if context_ok else None

    class Inspector:
        def get_engine_information(self, fmt):
            import json

            log("get_engine_information", fmt)
            return json.dumps({"Layers": report_layers})

    Engine.create_engine_inspector = lambda self: (log("create_engine_inspector"), Inspector())[1]

    class Runtime:
        def __init__(self, logger):
            pass

        def __setattr__(self, name, value):
            log("runtime." + name, value)
            object.__setattr__(self, name, value)

        def deserialize_cuda_engine(self, data):
            log("deserialize_cuda_engine", len(data))
            return Engine()

    class Memory(bytes):  # IHostMemory: supports the buffer protocol
        pass

    class TimingCache:
        def __init__(self, data=b""):
            self.data = data

        def serialize(self):
            return Memory(b"CACHE")

    class Tensor:
        def __init__(self, name, shape, dtype):
            self.name, self.shape, self.dtype = name, shape, dtype

    class Layer:
        def __init__(self, name, kind):
            self.name, self.type = name, kind

    network_layers = [Layer("conv", "CONVOLUTION")] + [Layer(n, "PLUGIN_V2") for n in plugins]

    class Network:
        num_inputs, num_outputs = 1, 1
        num_layers = len(network_layers)

        def get_layer(self, i):
            return network_layers[i]

        def get_input(self, i):
            return Tensor("image", in_shape, "DataType.FLOAT")

        def get_output(self, i):
            return Tensor("mask", (in_shape[0], 4, 4), "DataType.INT32")

    class Config:
        def __setattr__(self, name, value):
            log("config." + name, value)
            object.__setattr__(self, name, value)

        def set_memory_pool_limit(self, pool, size):
            log("set_memory_pool_limit", pool, size)

        def set_flag(self, flag):
            log("set_flag", flag)

        def clear_flag(self, flag):
            log("clear_flag", flag)

        def create_timing_cache(self, data):
            log("create_timing_cache", bytes(data))
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            log("set_timing_cache", ignore_mismatch, cache.data)
            return (not cache.data) if set_cache_ok == "empty-only" else set_cache_ok

        def get_timing_cache(self):
            log("get_timing_cache")
            return TimingCache() if final_cache else None

        def add_optimization_profile(self, profile):
            log("add_optimization_profile")
            return 0

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            log("profile.set_shape", name, tuple(lo), tuple(opt), tuple(hi))

    class Builder:
        def __init__(self, logger):
            log("Builder")

        def create_network(self, flags):
            log("create_network", flags)
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            log("build_serialized_network")
            return None if serialized is None else Memory(serialized)

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            log("parse_from_file", path)
            return True

        def get_error(self, i):
            return ""

    trt.Runtime, trt.Builder, trt.OnnxParser = Runtime, Builder, OnnxParser
    return trt


class FakeMemory:
    """The runner's memory-provider interface, recording each call and the context depth it ran at.

    Like pycuda, creating a stream or an event without a current context fails.
    """

    kind = "fake"

    def __init__(self, log: Recorder, name="Fake GPU", cc=(8, 9), capture_ok=True):
        self.log, self.name, self.cc, self.capture_ok = log, name, cc, capture_ok
        self.graphs = 0
        self.depth = 0
        self.next_ptr = 1 << 20
        self.streams = 0

    def gpu(self):
        return self.name, self.cc

    def push(self):
        self.depth += 1
        self.log("push")

    def pop(self):
        self.depth -= 1
        self.log("pop")

    def alloc(self, nbytes):
        ptr = self.next_ptr
        self.next_ptr += (nbytes + 255) // 256 * 256 + 256
        return ptr

    def pinned(self, shape, dtype):
        return np.zeros(shape, dtype)

    def new_stream(self):
        self.log("new_stream", self.depth)
        if self.depth == 0:
            raise RuntimeError("explicit_context_dependent failed: invalid device context - no currently active context?")
        self.streams += 1
        return types.SimpleNamespace(handle=1000 + self.streams)

    def owns(self, stream):
        return isinstance(stream, types.SimpleNamespace)

    def stream_handle(self, stream):
        return stream.handle

    def sync_handle(self, handle):
        self.log("sync_handle", handle)

    def htod(self, dst, src, stream):
        self.log("htod", dst, src.shape, getattr(stream, "handle", stream))

    def dtoh(self, dst, src, stream):
        self.log("dtoh", src)

    def synchronize(self, stream):
        self.log("synchronize")

    def stream_wait(self, consumer, producer):
        self.log("stream_wait", consumer, producer, self.depth)

    def dtod(self, dst, src, nbytes, handle):
        self.log("dtod", dst, src, nbytes, handle)

    def capture_begin(self, handle):
        self.log("capture_begin", handle)

    def capture_end(self, handle):
        # Like cuStreamEndCapture after an enqueue that is not capturable: the capture is invalidated.
        self.log("capture_end", handle)
        if not self.capture_ok:
            raise RuntimeError("cuStreamEndCapture failed with CUDA error 901")
        self.graphs += 1
        return 7000 + self.graphs

    def graph_launch(self, graph, handle):
        self.log("graph_launch", graph, handle)

    def graph_destroy(self, graph):
        self.log("graph_destroy", graph)

    def record_event(self, handle):
        self.events = getattr(self, "events", 0) + 1
        self.log("record_event", handle, 5000 + self.events)
        return 5000 + self.events

    def event_wait(self, event):
        self.log("event_wait", event)

    def release(self):
        self.log("release")


class GpuArray:
    """An object exposing `__cuda_array_interface__`, as cupy/numba/torch arrays do."""

    def __init__(self, ptr, shape, typestr="<f4", **extra):
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": typestr, "data": (ptr, False),
                                         "version": 3 if "stream" in extra else 2, **extra}
