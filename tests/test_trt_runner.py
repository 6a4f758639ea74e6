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

    def make(stream=None, cuda_graph=None, capture_ok=True, **trt_kwargs):
        monkeypatch.setattr(trt_backend, "_import_tensorrt", lambda: make_trt(log, **trt_kwargs))
        monkeypatch.setattr(cuda_backend, "make_memory", lambda dev, prefer: FakeMemory(log, capture_ok=capture_ok))
        return trt_backend.TensorRTRunner(engine, {"tensorrt": "10.16.1.11", "compute_capability": "8.9"},
                                          stream=stream, cuda_graph=cuda_graph)

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


# CUDA-graph capture (issue 19, throughput). The fake records the order of calls only; whether TensorRT
# captures a given engine is decided by TensorRT on a GPU, which has not been run.

def _execution_calls(log):
    return [c[0] for c in log.calls if c[0] in ("execute_async_v3", "capture_begin", "capture_end", "graph_launch",
                                                 "set_tensor_address", "set_input_shape")]


def test_static_engine_is_captured_once_after_a_warm_up_and_replayed(runner_factory):
    make, log = runner_factory
    runner = make().activate()
    assert runner.cuda_graph_status == "warm-up"
    log.calls.clear()
    runner.infer({"image": HOST})
    handle = runner._stream_handle
    first = _execution_calls(log)
    # Addresses bound, then a plain (warm-up) execution, then the capture of one more enqueue.
    assert first == ["set_tensor_address", "execute_async_v3", "capture_begin", "execute_async_v3", "capture_end"]
    assert [c for c in log.calls if c[0] == "capture_begin"] == [("capture_begin", handle)]
    assert runner.cuda_graph_status == "replaying"
    for _ in range(3):
        log.calls.clear()
        out = runner.infer({"image": HOST})
        assert "execute_async_v3" not in log.names() and "capture_begin" not in log.names()
        names = log.names()
        launch = names.index("graph_launch")
        assert log.calls[launch][1:] == (runner._graphs[0], handle)
        assert names.index("htod") < launch < names.index("dtoh")  # copies still around the replay
        assert set(out) == {"mask"}
    graph = runner._graphs[0]
    runner.deactivate()
    assert ("graph_destroy", graph) in log.calls
    assert log.names().index("graph_destroy") < log.names().index("release")


def test_a_failed_capture_falls_back_and_is_not_retried(runner_factory):
    make, log = runner_factory
    runner = make(capture_ok=False).activate()
    runner.infer({"image": HOST})
    assert runner.cuda_graph_status.startswith("off (capture failed")
    assert not runner._graphs and "capture_end" in log.names()  # the capture was ended, not left open
    log.calls.clear()
    runner.infer({"image": HOST})
    runner.infer({"image": HOST})
    assert _execution_calls(log).count("execute_async_v3") == 2
    assert not {"capture_begin", "graph_launch"} & set(log.names())


def test_capture_is_ended_when_execute_returns_false_during_capture(runner_factory, monkeypatch):
    make, log = runner_factory
    runner = make().activate()
    calls = {"n": 0}
    real = runner.context.execute_async_v3

    def second_fails(handle):
        calls["n"] += 1
        return real(handle) and calls["n"] != 2

    monkeypatch.setattr(runner.context, "execute_async_v3", second_fails)
    runner.infer({"image": HOST})
    graph_made = [c for c in log.calls if c[0] == "capture_end"]
    assert graph_made and ("graph_destroy", 7001) in log.calls
    assert not runner._graphs and "returned False" in runner.cuda_graph_status


@pytest.mark.parametrize("how", ["argument", "env"])
def test_cuda_graph_can_be_turned_off(runner_factory, monkeypatch, how):
    make, log = runner_factory
    if how == "env":
        monkeypatch.setenv("LRFORMER_TRT_CUDA_GRAPH", "0")
    runner = make(cuda_graph=False if how == "argument" else None).activate()
    for _ in range(3):
        runner.infer({"image": HOST})
    assert runner.cuda_graph_status == "off (disabled)"
    assert log.names().count("execute_async_v3") == 3 and "capture_begin" not in log.names()


def test_dynamic_shape_engine_never_captures(runner_factory):
    make, log = runner_factory
    runner = make(dynamic=True).activate()
    for batch in (1, 2, 2):
        runner.infer({"image": np.zeros((batch, 3, 4, 4), np.float32)})
    assert runner.cuda_graph_status == "off (dynamic input shapes)"
    assert log.names().count("execute_async_v3") == 3 and "capture_begin" not in log.names()


def test_legacy_default_stream_is_never_captured(runner_factory):
    make, log = runner_factory
    runner = make(stream=cuda_backend.LEGACY_DEFAULT_STREAM).activate()
    runner.infer({"image": HOST})
    assert "capture_begin" not in log.names() and runner.cuda_graph_status.startswith("off")


def test_gpu_input_bound_in_place_runs_plainly_and_host_input_replays(runner_factory):
    # The graph holds the addresses bound at capture: an input bound at another address must not replay it.
    make, log = runner_factory
    runner = make().activate()
    runner.infer({"image": GpuArray(256 * 9999, (1, 3, 4, 4), stream=None)})  # bound in place: no capture
    assert "capture_begin" not in log.names() and runner.cuda_graph_status == "warm-up"
    runner.infer({"image": HOST})  # own buffer: warm-up execution + capture
    assert runner.cuda_graph_status == "replaying"
    log.calls.clear()
    runner.infer({"image": GpuArray(256 * 9999, (1, 3, 4, 4), stream=None)})
    assert "graph_launch" not in log.names() and log.names().count("execute_async_v3") == 1
    log.calls.clear()
    runner.infer({"image": GpuArray(256 * 9999 + 4, (1, 3, 4, 4), stream=None)})  # copied into our buffer
    assert "graph_launch" in log.names() and "execute_async_v3" not in log.names()
    bound = [c for c in log.calls if c[0] == "set_tensor_address"]
    assert bound[-1][2] == runner.inputs["image"][2]


def test_driver_graph_calls_end_capture_and_free_the_graph(monkeypatch):
    # The ctypes path the pycuda and torch providers share: written to the CUDA driver API, not run here.
    calls = []

    class Lib:
        def __getattr__(self, name):
            def call(*args):
                calls.append(name)
                if name in ("cuStreamEndCapture", "cuGraphInstantiateWithFlags"):
                    args[1 if name == "cuStreamEndCapture" else 0]._obj.value = 42
                return 999 if name == "cuGraphInstantiateWithFlags" and fail else 0
            return call

    monkeypatch.setattr(cuda_backend.CudaDriver, "_lib", Lib())
    fail = False
    cuda_backend.CudaDriver.capture_begin(5)
    assert cuda_backend.CudaDriver.capture_end(5) == 42
    assert calls == ["cuStreamBeginCapture_v2", "cuStreamEndCapture", "cuGraphInstantiateWithFlags", "cuGraphDestroy"]
    calls.clear()
    fail = True
    with pytest.raises(RuntimeError, match="cuGraphInstantiateWithFlags failed with CUDA error 999"):
        cuda_backend.CudaDriver.capture_end(5)
    assert calls[-1] == "cuGraphDestroy"  # the captured graph is freed even when instantiation fails


# submit()/collect(): the copy of batch k+1 overlaps the execution of batch k (issue 19, throughput).
# Call order only; that the GPU really overlaps them is not shown here (not run on a GPU).

def _mark_outputs(runner, log):
    """Make the fake's device->host copy write the source address, so a result names the buffer it came from."""
    def dtoh(dst, src, stream):
        log("dtoh", src, getattr(stream, "handle", stream))
        dst[...] = src % 100000
    runner.mem.dtoh = dtoh


def test_submit_copies_the_next_batch_before_waiting_for_the_previous_one(runner_factory):
    make, log = runner_factory
    runner = make().activate()
    _mark_outputs(runner, log)
    handle = runner._stream_handle
    log.calls.clear()
    first = runner.submit({"image": HOST})
    second = runner.submit({"image": HOST + 1})
    in_stream, out_stream = (s.handle for s in runner._overlap_streams)
    assert len({handle, in_stream, out_stream}) == 3
    copies = [c for c in log.calls if c[0] == "htod"]
    assert [c[3] for c in copies] == [in_stream, in_stream]  # never on the engine stream
    slot0, slot1 = runner._slots[0][0]["image"][0], runner._slots[1][0]["image"][0]
    assert [c[1] for c in copies] == [slot0, slot1] and slot0 != slot1
    names = log.names()
    # Batch 2's copy is issued while batch 1 is still in flight (no host wait in between) ...
    assert "event_wait" not in names
    # ... and each execution waits on the GPU for its own copy, then the output stream waits for it.
    second_copy = [i for i, c in enumerate(log.calls) if c[0] == "htod"][1]
    runs = [i for i, n in enumerate(names) if n == "execute_async_v3"]
    assert runs[0] < second_copy < runs[-1]
    waits = [c[1:3] for c in log.calls if c[0] == "stream_wait"]
    assert (handle, in_stream) in waits and (out_stream, handle) in waits
    out1, out2 = runner.collect(first), runner.collect(second)
    assert [c[1] for c in log.calls if c[0] == "event_wait"] == [first.event, second.event]
    out0 = runner._slots[0][1]["mask"][0] % 100000
    out1_ptr = runner._slots[1][1]["mask"][0] % 100000
    assert (out1["mask"] == out0).all() and (out2["mask"] == out1_ptr).all()  # in order, from their own slots
    # The output addresses of each slot were bound before that slot's execution.
    bound = [(c[1], c[2]) for c in log.calls if c[0] == "set_tensor_address"]
    assert ("mask", runner._slots[1][1]["mask"][0]) in bound


def test_submit_keeps_two_batches_in_flight_and_infer_drains_them(runner_factory):
    make, log = runner_factory
    runner = make(cuda_graph=False).activate()
    _mark_outputs(runner, log)
    tickets = [runner.submit({"image": HOST}) for _ in range(4)]
    # The third and fourth submits reused slots 0 and 1, so each first waited for the batch two before it.
    assert [c[1] for c in log.calls if c[0] == "event_wait"] == [tickets[0].event, tickets[1].event]
    assert len(runner._inflight) == 2
    log.calls.clear()
    out = runner.infer({"image": HOST})
    names = log.names()
    assert names.count("event_wait") == 2 and names.index("event_wait") < names.index("execute_async_v3")
    # Slot 1's output address was bound last by a submit; infer binds its own back before running.
    assert ("set_tensor_address", "mask", runner.outputs["mask"][2], True) in log.calls
    assert (out["mask"] == runner.outputs["mask"][2] % 100000).all()
    assert all((runner.collect(t)["mask"] == runner._slots[i % 2][1]["mask"][0] % 100000).all()
               for i, t in enumerate(tickets))


def test_submit_replays_one_graph_per_buffer_slot(runner_factory):
    make, log = runner_factory
    runner = make().activate()
    for _ in range(6):
        runner.collect(runner.submit({"image": HOST}))
    assert set(runner._graphs) == {0, 1} and log.names().count("capture_begin") == 2
    launches = [c[1] for c in log.calls if c[0] == "graph_launch"]
    assert launches == [runner._graphs[0], runner._graphs[1]] * 2


def test_submit_with_a_gpu_input_runs_synchronously(runner_factory):
    make, log = runner_factory
    runner = make().activate()
    ticket = runner.submit({"image": GpuArray(256 * 9999, (1, 3, 4, 4), stream=None)})
    assert ticket.result is not None and not runner._inflight and runner.collect(ticket) is ticket.result


def test_a_failed_capture_for_the_second_slot_keeps_replaying_the_first(runner_factory):
    make, log = runner_factory
    runner = make().activate()
    runner.collect(runner.submit({"image": HOST}))  # slot 0: captured
    runner.mem.capture_ok = False
    runner.collect(runner.submit({"image": HOST}))  # slot 1: capture fails
    assert set(runner._graphs) == {0} and "capture failed" in runner.cuda_graph_status
    log.calls.clear()
    for _ in range(4):
        runner.collect(runner.submit({"image": HOST}))
    assert [c[0] for c in log.calls if c[0] in ("graph_launch", "execute_async_v3", "capture_begin")] == \
        ["graph_launch", "execute_async_v3"] * 2
