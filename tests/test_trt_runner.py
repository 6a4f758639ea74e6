"""TensorRTRunner around TensorRT, on the CPU: a fake `tensorrt` module and a recording memory provider.

These check call order and return-value handling (what the runner asks TensorRT and CUDA to do, and
what it refuses); they compute nothing, so none of this is a TensorRT result.
"""
from __future__ import annotations

import numpy as np
import pytest

from fake_tensorrt import FakeMemory, GpuArray, Recorder, make_trt
from lrformer_deploy.errors import UserError
from lrformer_deploy.runtime.backends import cuda as cuda_backend
from lrformer_deploy.runtime.backends import trt as trt_backend


@pytest.fixture(autouse=True)
def no_shared_engines(monkeypatch):
    """Each test starts without engines other tests' (never deactivated) runners still share."""
    monkeypatch.setattr(trt_backend.SharedEngines, "_entries", {})


@pytest.fixture
def runner_factory(tmp_path, monkeypatch):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"PLAN")
    log = Recorder()

    def make(stream=None, **trt_kwargs):
        monkeypatch.setattr(trt_backend, "_import_tensorrt", lambda: make_trt(log, **trt_kwargs))
        monkeypatch.setattr(cuda_backend, "make_memory", lambda dev, prefer: FakeMemory(log))
        return trt_backend.TensorRTRunner(engine, {"tensorrt": "10.16.1.11", "compute_capability": "8.9"},
                                          stream=stream)

    return make, log


HOST = np.zeros((1, 3, 4, 4), np.float32)


@pytest.mark.parametrize("stream", [None, 12345])
def test_streams_are_created_inside_the_device_context(runner_factory, stream):
    # With a caller's raw handle the runner needs a private copy stream; pycuda can only make one
    # while a context is current (the fake raises like pycuda otherwise).
    make, log = runner_factory
    runner = make(stream=stream).activate()
    runner.infer({"image": HOST})
    runner.infer({"image": HOST})
    created = [c for c in log.calls if c[0] == "new_stream"]
    assert created and all(depth > 0 for _, depth in created)
    assert len(created) == 1  # the engine stream or, for a raw handle, the private copy stream; never per call


def test_gpu_input_waits_for_its_producer_stream(runner_factory):
    make, log = runner_factory
    runner = make().activate()
    runner.infer({"image": GpuArray(256 * 9999, (1, 3, 4, 4), stream=777)})
    names = log.names()
    wait = names.index("stream_wait")
    assert log.calls[wait][1:3] == (runner._stream_handle, 777) and log.calls[wait][3] > 0
    assert wait < names.index("execute_async_v3")
    bound = [c for c in log.calls if c[0] == "set_tensor_address" and c[1] == "image"]
    assert bound[-1][2] == 256 * 9999


def test_gpu_input_stream_rules(runner_factory):
    make, log = runner_factory
    runner = make().activate()
    runner.infer({"image": GpuArray(256 * 9999, (1, 3, 4, 4), stream=None)})  # v3, producer says: ready
    assert "stream_wait" not in log.names()
    runner.infer({"image": GpuArray(256 * 9999, (1, 3, 4, 4))})  # v2, unknown producer: legacy default stream
    assert [c[2] for c in log.calls if c[0] == "stream_wait"] == [cuda_backend.LEGACY_DEFAULT_STREAM]
    log.calls.clear()
    runner.infer({"image": GpuArray(256 * 9999, (1, 3, 4, 4), stream=runner._stream_handle)})  # same stream
    assert "stream_wait" not in log.names()


def test_misaligned_gpu_input_is_copied_into_the_aligned_buffer(runner_factory):
    # Defect 7: an offset view (not 256-byte aligned) used to be refused; it is copied on the GPU instead,
    # on the engine stream, after the producer and before the execution.
    make, log = runner_factory
    runner = make().activate()
    own = runner.inputs["image"][2]
    view = 256 * 9999 + 4
    runner.infer({"image": GpuArray(view, (1, 3, 4, 4), stream=777)})
    names = log.names()
    copy = names.index("dtod")
    assert log.calls[copy][1:] == (own, view, 1 * 3 * 4 * 4 * 4, runner._stream_handle)
    assert names.index("stream_wait") < copy < names.index("execute_async_v3")
    bound = [c for c in log.calls if c[0] == "set_tensor_address" and c[1] == "image"]
    assert bound[-1][2] == own and own % 256 == 0


def test_aligned_gpu_input_is_bound_without_a_copy(runner_factory):
    make, log = runner_factory
    runner = make().activate()
    runner.infer({"image": GpuArray(256 * 9999, (1, 3, 4, 4), stream=None)})
    assert "dtod" not in log.names()


def test_torch_memory_restores_the_callers_device(monkeypatch):
    # Defect 7: push() made the engine's device current for good; pop() now gives the caller's back.
    import sys
    import types

    current = {"device": 0}
    cuda = types.SimpleNamespace(is_available=lambda: True, current_device=lambda: current["device"],
                                 set_device=lambda d: current.update(device=d.index if hasattr(d, "index") else d))
    fake_torch = types.SimpleNamespace(cuda=cuda, device=lambda kind, i: types.SimpleNamespace(type=kind, index=i))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    mem = cuda_backend.TorchMemory(1)
    mem.push()
    assert current["device"] == 1
    mem.push()
    mem.pop()
    assert current["device"] == 1  # nested push/pop keeps the engine's device until the outer pop
    mem.pop()
    assert current["device"] == 0


def test_version_compatible_engine_allows_host_code_before_deserializing(tmp_path, monkeypatch):
    # Defect 6: TensorRT only runs a version-compatible plan's lean runtime when host code is allowed.
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"PLAN")
    for compatible in (True, False):
        log = Recorder()
        monkeypatch.setattr(trt_backend, "_import_tensorrt", lambda: make_trt(log))
        monkeypatch.setattr(cuda_backend, "make_memory", lambda dev, prefer: FakeMemory(log))
        record = {"tensorrt": "10.16.1.11", "compute_capability": "8.9", "version_compatible": compatible}
        trt_backend.TensorRTRunner(engine, record).activate().deactivate()
        names = log.names()
        assert "deserialize_cuda_engine" in names
        if compatible:
            assert ("runtime.engine_host_code_allowed", True) in log.calls
            assert names.index("runtime.engine_host_code_allowed") < names.index("deserialize_cuda_engine")
        else:
            assert "runtime.engine_host_code_allowed" not in names


def test_refused_tensor_address_is_an_error_not_stale_input(runner_factory):
    make, log = runner_factory
    gpu_ptr = 256 * 9999
    runner = make(address_ok=lambda p: p != gpu_ptr).activate()
    with pytest.raises(UserError, match="refused address"):
        runner.infer({"image": GpuArray(gpu_ptr, (1, 3, 4, 4))})
    assert "execute_async_v3" not in log.names()


def test_refused_address_at_activation_is_an_error(runner_factory):
    make, _ = runner_factory
    with pytest.raises(UserError, match="refused address"):
        make(address_ok=lambda p: False).activate()


def test_missing_execution_context_is_one_clear_error(runner_factory):
    make, _ = runner_factory
    with pytest.raises(UserError, match="execution context"):
        make(context_ok=False).activate()


def test_dynamic_engine_sets_the_shape_of_gpu_inputs(runner_factory):
    make, log = runner_factory
    runner = make(dynamic=True).activate()
    runner.infer({"image": np.zeros((3, 3, 4, 4), np.float32)})
    runner.infer({"image": GpuArray(256 * 9999, (1, 3, 4, 4), stream=None)})
    executes = [i for i, c in enumerate(log.calls) if c[0] == "execute_async_v3"]
    shapes = [c[2] for c in log.calls[executes[0]:executes[1]] if c[0] == "set_input_shape"]
    assert shapes == [(1, 3, 4, 4)]  # not the previous host call's batch of 3
    with pytest.raises(UserError, match="engine wants"):
        runner.infer({"image": GpuArray(256 * 9999, (5, 3, 4, 4))})  # beyond the profile's max batch 4


def test_runners_of_one_engine_share_it_with_a_context_each(runner_factory):
    make, log = runner_factory
    first, second = make().activate(), make().activate()
    assert log.names().count("deserialize_cuda_engine") == 1  # one engine on the GPU
    assert log.names().count("create_execution_context") == 2  # a context per runner (per thread)
    assert first.engine is second.engine and first.context is not second.context
    first.deactivate()
    second.infer({"image": HOST})  # still usable: the engine lives while a runner holds it
    second.deactivate()
    assert not trt_backend.SharedEngines._entries
    make().activate().deactivate()
    assert log.names().count("deserialize_cuda_engine") == 2  # released with its last runner, loaded again


def test_failed_activation_releases_the_shared_engine(runner_factory):
    make, _ = runner_factory
    with pytest.raises(UserError, match="execution context"):
        make(context_ok=False).activate()
    assert not trt_backend.SharedEngines._entries


def test_host_inputs_are_copied_from_pinned_staging(runner_factory, monkeypatch):
    make, log = runner_factory
    pinned = []
    real = FakeMemory.pinned

    def record(self, shape, dtype):
        pinned.append(real(self, shape, dtype))
        return pinned[-1]

    monkeypatch.setattr(FakeMemory, "pinned", record)
    sent = []
    monkeypatch.setattr(FakeMemory, "htod", lambda self, dst, src, stream: sent.append(src))
    runner = make().activate()
    frame = np.arange(48, dtype=np.float64).reshape(1, 3, 4, 4)  # another dtype: converted on the way
    runner.infer({"image": frame})
    staging = runner._staging["image"]
    assert any(p is staging for p in pinned)
    assert np.shares_memory(sent[-1], staging) and sent[-1].dtype == np.float32
    assert np.array_equal(sent[-1], frame.astype(np.float32))
