"""Triton serving on the CPU, against real servers on 127.0.0.1: lrformer-serve (PyTriton) and an exported
model repository in the tritonserver binary PyTriton ships; plus the dynamic-batch export it relies on.

Needs the `serve` extra (nvidia-pytriton, tritonclient); skipped without it.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

if os.environ.get("LRFORMER_REQUIRE_SERVE"):  # the `serve` nox session: these tests must run, never skip
    import pytriton  # noqa: F401
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
else:
    pytest.importorskip("pytriton", reason="needs the serve extra (nvidia-pytriton); run `nox -s serve`")
    httpclient = pytest.importorskip("tritonclient.http", reason="needs the serve extra (tritonclient)")
    grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs the serve extra (tritonclient)")

from conftest import SHARED_VIDEO, bomb_png  # noqa: E402
from lrformer_deploy.runtime import Segmenter  # noqa: E402
from lrformer_deploy.triton.frames import ENCODED_INPUT, FRAME_INPUT, MASK_OUTPUT  # noqa: E402

TIMEOUT = 90  # seconds any server may take to come up or go down (2 busy cores)


def _video() -> Path:
    for path in (SHARED_VIDEO, Path(os.environ.get("LRFORMER_SHARED_DATA", "/nonexistent")) / "car-detection.mp4"):
        if path.is_file():
            return path
    pytest.skip(f"sample video not present: {SHARED_VIDEO}")


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """Real frames of car-detection.mp4 (768x432), at three sizes: as decoded, smaller, and odd-sized."""
    cap = cv2.VideoCapture(str(_video()))
    out = []
    for i in range(60):
        ok, frame = cap.read()
        if not ok:
            break
        if i % 10 == 0:
            out.append(frame)
    cap.release()
    assert len(out) == 6
    return [out[0], out[1], cv2.resize(out[2], (320, 180)), cv2.resize(out[3], (517, 301)), out[4], out[5]]


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory) -> Path:
    from lrformer_deploy.build import demo

    return demo.default_model(tmp_path_factory.mktemp("demo-cache"))


@pytest.fixture(scope="module")
def segmenter(demo_onnx):
    with Segmenter(demo_onnx) as seg:
        yield seg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (read from /proc), so a test can check none outlives the server."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_ready(client, model: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if client.is_model_ready(model):
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{model} not ready within {TIMEOUT} s")


def http_frame(client, model: str, frame: np.ndarray) -> np.ndarray:
    inp = httpclient.InferInput(FRAME_INPUT, [1, *frame.shape], "UINT8")
    inp.set_data_from_numpy(frame[None])
    return client.infer(model, [inp]).as_numpy(MASK_OUTPUT)[0]


def grpc_frame(client, model: str, frame: np.ndarray) -> np.ndarray:
    inp = grpcclient.InferInput(FRAME_INPUT, [1, *frame.shape], "UINT8")
    inp.set_data_from_numpy(frame[None])
    return client.infer(model, [inp]).as_numpy(MASK_OUTPUT)[0]


def encoded_input(module, data: bytes):
    inp = module.InferInput(ENCODED_INPUT, [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[data]], dtype=object))
    return inp


# ---------------------------------------------------------------------------------------------- lrformer-serve
@pytest.fixture(scope="module")
def served(demo_onnx, tmp_path_factory):
    """`lrformer-serve` on the demo model in a subprocess; yields (process, http port, grpc port, model name)."""
    http, grpc = free_port(), free_port()
    log = tmp_path_factory.mktemp("serve") / "stderr.txt"
    env = {**os.environ, "LRFORMER_DEPLOY_CACHE": str(demo_onnx.parent)}
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "lrformer_deploy.cli.serve", "--http-port", str(http),
                                 "--grpc-port", str(grpc), "--max-batch", "8"], env=env, stdout=subprocess.DEVNULL,
                                stderr=err)
    name = f"{demo_onnx.stem}_frames"
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
        try:
            wait_ready(client, name, proc)
        except AssertionError:
            raise AssertionError(log.read_text()[-3000:]) from None
        yield proc, http, grpc, name, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_serve_http_and_grpc_masks_equal_segmenter(served, frames, segmenter):
    proc, http, grpc, name, _ = served
    h, g = httpclient.InferenceServerClient(f"127.0.0.1:{http}"), grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}")
    for frame in frames[:4]:  # 768x432, 320x180, 517x301
        want = segmenter(frame)
        got_http, got_grpc = http_frame(h, name, frame), grpc_frame(g, name, frame)
        assert got_http.shape == frame.shape[:2] and got_http.dtype == np.uint8
        np.testing.assert_array_equal(got_http, want)
        np.testing.assert_array_equal(got_grpc, want)
    ok, png = cv2.imencode(".png", frames[1])
    got = g.infer(name, [encoded_input(grpcclient, png.tobytes())]).as_numpy(MASK_OUTPUT)[0]
    np.testing.assert_array_equal(got, segmenter(frames[1]))


def test_serve_batches_concurrent_clients(served, frames, segmenter):
    proc, http, _, name, _ = served
    want = [segmenter(f) for f in frames]
    errors: list[BaseException] = []

    def client_loop(k: int) -> None:
        try:
            c = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
            for i in range(3):
                j = (k + i) % len(frames)
                np.testing.assert_array_equal(http_frame(c, name, frames[j]), want[j])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    before = httpclient.InferenceServerClient(f"127.0.0.1:{http}").get_inference_statistics(name)
    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[0]
    old = before["model_stats"][0]
    # Triton updates its statistics after it has answered: on a loaded machine the last request can be
    # answered (and checked above) before it is counted, so read them until all 24 are in (bounded).
    deadline = time.monotonic() + 10
    while True:
        stats = httpclient.InferenceServerClient(f"127.0.0.1:{http}").get_inference_statistics(name)["model_stats"][0]
        inferences = stats["inference_count"] - old.get("inference_count", 0)
        if inferences >= 24 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    executions = stats["execution_count"] - old.get("execution_count", 0)
    assert inferences == 24
    # Dynamic batching: fewer model executions than requests, and some executions held several requests.
    assert executions < inferences
    assert any(b["batch_size"] > 1 for b in stats["batch_stats"])


def test_serve_rejects_bad_requests_and_keeps_serving(served, frames, segmenter):
    from tritonclient.utils import InferenceServerException

    proc, http, _, name, _ = served
    c = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
    wrong_dtype = httpclient.InferInput(FRAME_INPUT, [1, 8, 8, 3], "FP32")
    wrong_dtype.set_data_from_numpy(np.zeros((1, 8, 8, 3), np.float32))
    wrong_shape = httpclient.InferInput(FRAME_INPUT, [1, 8, 8], "UINT8")
    wrong_shape.set_data_from_numpy(np.zeros((1, 8, 8), np.uint8))
    for bad in ([wrong_dtype], [wrong_shape], [encoded_input(httpclient, b"not an image")]):
        with pytest.raises(InferenceServerException):
            c.infer(name, bad)
    np.testing.assert_array_equal(http_frame(c, name, frames[0]), segmenter(frames[0]))
    assert proc.poll() is None


def rss_mib(pids) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def test_serve_refuses_oversized_images_from_the_header_and_its_memory_stays_bounded(served, frames, segmenter):
    from tritonclient.utils import InferenceServerException

    proc, http, _, name, _ = served
    bomb = bomb_png()
    family = {proc.pid} | descendants(proc.pid)
    before = rss_mib(family)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib(family))
            time.sleep(0.02)

    errors: list[str] = []

    def send() -> None:
        c = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
        try:
            c.infer(name, [encoded_input(httpclient, bomb)])
            errors.append("a bomb was answered with a mask")
        except InferenceServerException as exc:
            errors.append(str(exc))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for _ in range(3):  # three bursts of four at once: 12 requests that would each decode 1.2 GB
            burst = [threading.Thread(target=send) for _ in range(4)]
            for t in burst:
                t.start()
            for t in burst:
                t.join(TIMEOUT)
    finally:
        done.set()
        sampler.join()
    assert len(errors) == 12 and all("400000000 pixels" in e and "--max-pixels" in e for e in errors), errors[:2]
    assert peak[0] - before < 300, f"server RSS grew from {before:.0f} to {peak[0]:.0f} MiB"
    # A raw frame over the limit is refused from its shape (4100 x 4100 > 4096 x 4096).
    c = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
    with pytest.raises(InferenceServerException, match="--max-pixels"):
        http_frame(c, name, np.zeros((4100, 4100, 3), np.uint8))
    np.testing.assert_array_equal(http_frame(c, name, frames[0]), segmenter(frames[0]))  # still serving
    assert proc.poll() is None


def test_serve_stops_on_sigterm_and_leaves_nothing(served):
    proc, *_ = served
    family = descendants(proc.pid)
    assert family, "lrformer-serve should run tritonserver as a child"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 15
    while any(alive(p) for p in family) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in family if alive(p)]


def test_serve_user_errors_are_one_line(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        for argv in (["missing.onnx"], ["--http-port", str(busy.getsockname()[1])], ["--max-batch", "0"],
                     ["--http-port", "9000", "--grpc-port", "9000"]):
            r = subprocess.run([sys.executable, "-m", "lrformer_deploy.cli.serve", *argv], capture_output=True,
                               text=True, timeout=TIMEOUT)
            assert r.returncode == 2, r.stderr
            assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    finally:
        busy.close()


# ---------------------------------------------------------------------------------------------- repository
@pytest.fixture(scope="module")
def repository(demo_onnx, tmp_path_factory) -> Path:
    from lrformer_deploy.cli.triton import main

    repo = tmp_path_factory.mktemp("repo") / "models"
    assert main([str(demo_onnx.with_suffix(".json")), str(repo)]) == 0
    return repo


def parse_config(path: Path):
    """Triton's own schema: model_config.proto as shipped in tritonclient, via protobuf's text parser."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_repository_configs_match_the_graph(repository, demo_onnx):
    import onnx
    from tritonclient.grpc import model_config_pb2 as mc

    graph = onnx.load(str(demo_onnx)).graph
    elem = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.INT32: mc.TYPE_INT32}
    name = demo_onnx.stem
    model = repository / name
    assert (model / "1" / "model.onnx").read_bytes() == demo_onnx.read_bytes()
    for file, kind in (("config.pbtxt", mc.ModelInstanceGroup.KIND_CPU),
                       ("configs/cpu.pbtxt", mc.ModelInstanceGroup.KIND_CPU),
                       ("configs/gpu.pbtxt", mc.ModelInstanceGroup.KIND_GPU)):
        cfg = parse_config(model / file)
        assert cfg.name == name and cfg.platform == "onnxruntime_onnx" and cfg.default_model_filename == "model.onnx"
        assert cfg.max_batch_size == 0  # the demo graph has a static batch: it stays in dims
        for ours, theirs in ((cfg.input, graph.input), (cfg.output, graph.output)):
            assert [t.name for t in ours] == [t.name for t in theirs]
            for t, g in zip(ours, theirs):
                assert t.data_type == elem[g.type.tensor_type.elem_type]
                assert list(t.dims) == [d.dim_value for d in g.type.tensor_type.shape.dim]
        assert [g.kind for g in cfg.instance_group] == [kind]
    manifest = json.loads(demo_onnx.with_suffix(".json").read_text())
    frames_cfg = parse_config(repository / f"{name}_frames" / "config.pbtxt")
    assert frames_cfg.backend == "python" and frames_cfg.max_batch_size > 0 and frames_cfg.HasField("dynamic_batching")
    params = {k: v.string_value for k, v in frames_cfg.parameters.items()}
    assert json.loads(params["class_names"]) == manifest["model"]["class_names"]
    assert json.loads(params["palette"]) == manifest["model"]["palette"]
    assert [(i.name, i.data_type, list(i.dims)) for i in frames_cfg.input] == [
        (FRAME_INPUT, mc.TYPE_UINT8, [-1, -1, 3]), (ENCODED_INPUT, mc.TYPE_STRING, [1])]
    assert [(o.name, o.data_type) for o in frames_cfg.output] == [(MASK_OUTPUT, mc.TYPE_UINT8)]


def test_repository_cli_user_errors(tmp_path, demo_onnx):
    from lrformer_deploy.cli.triton import main

    afile = tmp_path / "file"
    afile.write_text("x")
    assert main([str(tmp_path / "missing.json"), str(tmp_path / "r")]) == 2
    assert main([str(demo_onnx.with_suffix(".json")), str(afile)]) == 2
    assert main([str(demo_onnx), str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def tritonserver(repository, demo_onnx):
    """The tritonserver binary PyTriton ships, on the exported repository, its Python backend for this Python."""
    from lrformer_deploy.triton.serve import bundled_server, python_backends_dir, server_environment

    binary, _ = bundled_server()
    with tempfile.TemporaryDirectory(prefix="triton-test-") as work:
        # A copy of the graph model with a broken config: the server must reject it differently (a control).
        broken = repository / "broken"
        (broken / "1").mkdir(parents=True, exist_ok=True)
        config = (repository / demo_onnx.stem / "config.pbtxt").read_text().replace(demo_onnx.stem, "broken")
        (broken / "config.pbtxt").write_text(config.replace("dims: [ 1, 3, 256, 448 ]", "dims: [ 1, 3, -7, 448 ]"))
        http = free_port()
        name = demo_onnx.stem
        cmd = [str(binary), "--model-repository", str(repository), "--backend-directory",
               str(python_backends_dir(Path(work))), "--model-control-mode", "explicit",
               "--load-model", f"{name}_frames", "--load-model", name, "--load-model", "broken",
               "--http-address", "127.0.0.1", "--http-port", str(http), "--allow-grpc", "false",
               "--allow-metrics", "false", "--exit-on-error", "false", "--strict-readiness", "false",
               "--exit-timeout-secs", "3", "--disable-auto-complete-config"]
        with open(Path(work) / "log.txt", "w") as log:
            proc = subprocess.Popen(cmd, env=server_environment(), stdout=log, stderr=subprocess.STDOUT)
        try:
            client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
            try:
                wait_ready(client, f"{name}_frames", proc)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{(Path(work) / 'log.txt').read_text()[-3000:]}") from None
            yield client, name
        finally:
            proc.terminate()
            try:
                proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_repository_loads_in_tritonserver(tritonserver):
    client, name = tritonserver
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index[f"{name}_frames"]["state"] == "READY"
    # No ONNX Runtime backend ships with PyTriton. Triton parses and validates a config before it looks
    # for the backend, so this reason means our config passed Triton's own checks; the broken copy does not.
    assert "unable to find backend library for backend 'onnxruntime'" in index[name]["reason"]
    assert index["broken"].get("state") != "READY"
    assert "unable to find backend library" not in index["broken"].get("reason", "")


def test_repository_frames_model_equals_lrformer_infer(tritonserver, frames, tmp_path, segmenter, demo_onnx):
    from lrformer_deploy.cli.infer import main as infer_main

    client, name = tritonserver
    frame = frames[0]
    cv2.imwrite(str(tmp_path / "frame.png"), frame)
    assert infer_main([str(tmp_path / "frame.png"), "--model", str(demo_onnx), "--no-overlay",
                       "--save-mask", str(tmp_path / "masks"), "--quiet"]) == 0
    want = cv2.imread(str(tmp_path / "masks" / "frame.png"), cv2.IMREAD_UNCHANGED)
    got = http_frame(client, f"{name}_frames", frame)
    assert got.shape == frame.shape[:2]
    np.testing.assert_array_equal(got, want)
    # Encoded bytes and another frame size go through the same model.
    ok, jpeg = cv2.imencode(".jpg", frames[3])
    got = client.infer(f"{name}_frames", [encoded_input(httpclient, jpeg.tobytes())]).as_numpy(MASK_OUTPUT)[0]
    np.testing.assert_array_equal(got, segmenter(cv2.imdecode(jpeg, cv2.IMREAD_COLOR)))


def test_repository_frames_model_refuses_oversized_images(tritonserver, frames, segmenter):
    from tritonclient.utils import InferenceServerException

    client, name = tritonserver
    with pytest.raises(InferenceServerException, match="400000000 pixels"):
        client.infer(f"{name}_frames", [encoded_input(httpclient, bomb_png())])
    np.testing.assert_array_equal(http_frame(client, f"{name}_frames", frames[0]), segmenter(frames[0]))


# ---------------------------------------------------------------------------------------------- dynamic batch
@pytest.fixture(scope="module")
def dynamic_export(tmp_path_factory):
    from lrformer_deploy.build import demo
    from lrformer_deploy.model.checkpoint import load_checkpoint
    from lrformer_deploy.data.datasets import get_dataset
    from lrformer_deploy.build.export import export_onnx

    model = load_checkpoint(demo.CHECKPOINT, verbose=False)
    return export_onnx(model, tmp_path_factory.mktemp("dyn"), "demo-dyn", size=demo.PRESET["size"], max_batch=3,
                       head="mask", dataset=get_dataset(demo.PRESET["dataset"]), quiet=True)


def _with_logits(onnx_path: Path):
    """An ONNX Runtime session that also returns the stride-8 logits inside a mask graph."""
    import onnx
    import onnxruntime as ort

    from lrformer_deploy.build.export import _pre_argmax_tensor

    proto = onnx.load(str(onnx_path))
    inner = _pre_argmax_tensor(proto)
    proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(inner))
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]), inner


def test_dynamic_batch_graph_is_static_but_for_the_batch(dynamic_export):
    import onnx

    from lrformer_deploy.build.export import check_static_graph

    proto = onnx.load(str(dynamic_export.onnx_path))
    for v in list(proto.graph.input) + list(proto.graph.output):
        dims = v.type.tensor_type.shape.dim
        assert dims[0].dim_param and all(d.HasField("dim_value") for d in dims[1:])
    shapes = [n for n in proto.graph.node if n.op_type == "Shape"]
    assert shapes and all({a.name: a.i for a in n.attribute} == {"start": 0, "end": 1} for n in shapes)
    check_static_graph(proto, dynamic_batch=True)
    with pytest.raises(RuntimeError, match="not static|symbolic"):
        check_static_graph(proto)
    next(a for a in shapes[0].attribute if a.name == "end").i = 2  # reading the channels too is refused
    with pytest.raises(RuntimeError, match="more than the batch"):
        check_static_graph(proto, dynamic_batch=True)
    manifest = dynamic_export.manifest
    assert manifest["input"]["shape"][0] == "batch" and manifest["input"]["batch_range"] == [1, 3]
    assert manifest["verification"]["passed"]


def test_dynamic_batch_parity_with_static_graph(dynamic_export, demo_onnx, frames):
    static, static_logits = _with_logits(demo_onnx)
    dynamic, dynamic_logits = _with_logits(dynamic_export.onnx_path)
    seg = Segmenter(demo_onnx)
    x = np.stack([seg.preprocessor(f)[0] for f in frames[:3]])
    want = [static.run(["mask", static_logits], {"image": x[i:i + 1]}) for i in range(3)]
    for batch in (1, 3):
        got_mask, got_logits = dynamic.run(["mask", dynamic_logits], {"image": x[:batch]})
        assert got_mask.shape == (batch, 256, 448)
        for i in range(batch):
            np.testing.assert_allclose(got_logits[i], want[i][1][0], atol=1e-4 * max(1.0, np.abs(want[i][1]).max()))
            assert (got_mask[i] == want[i][0][0]).mean() > 0.9999
    # The runtime runs a dynamic graph at the chunk's own size, with the same masks as the static graph.
    with Segmenter(dynamic_export.manifest_path) as dyn:
        assert dyn.spec.dynamic_batch and dyn.batch_size == 3
        for a, b in zip(dyn.segment_batch(frames[:5]), seg.segment_batch(frames[:5])):
            assert (a == b).mean() > 0.9999
    seg.close()


def test_dynamic_batch_repository_config(dynamic_export, tmp_path):
    from tritonclient.grpc import model_config_pb2 as mc

    from lrformer_deploy.triton.repository import write_repository

    write_repository(dynamic_export.manifest_path, tmp_path)
    cfg = parse_config(tmp_path / "demo-dyn" / "config.pbtxt")
    assert cfg.max_batch_size == 3 and cfg.HasField("dynamic_batching")
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.input] == [("image", mc.TYPE_FP32, [3, 256, 448])]
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.output] == [("mask", mc.TYPE_INT32, [256, 448])]


def test_export_cli_batch_and_triton_user_errors(tmp_path, capsys):
    from lrformer_deploy.cli.export import main

    afile = tmp_path / "file"
    afile.write_text("x")
    for argv in (["--batch", "dynamic:1"], ["--batch", "dynamic:x"], ["--batch", "lots"],
                 ["--batch", "dynamic:4", "--triton", str(afile)]):
        try:
            code = main(["--variant", "demo", "--output-dir", str(tmp_path / "out"), *argv])
        except SystemExit as exc:  # argparse's own errors exit from inside the parser
            code = exc.code
        assert code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_repository_plan_config_from_engine_record(tmp_path, tiny_model):
    """The plan config is derived from the manifest's engine record (no TensorRT needed to write it)."""
    from tritonclient.grpc import model_config_pb2 as mc

    from lrformer_deploy.triton.repository import write_repository

    onnx_path = tiny_model(head="mask", size=(64, 96))
    manifest_path = onnx_path.with_suffix(".json")
    manifest = json.loads(manifest_path.read_text())
    plan_bytes = b"not a real plan: the writer only copies it"
    (onnx_path.parent / "tiny.engine").write_bytes(plan_bytes)
    manifest["artifacts"]["engine"] = {
        "file": "tiny.engine", "tensorrt": "10.8.0", "gpu": "NVIDIA L4", "compute_capability": "8.9",
        "build_options": {"optimization_profile": None},
        "inputs": [{"name": "image", "shape": [1, 3, 64, 96], "dtype": "DataType.FLOAT"}],
        "outputs": [{"name": "mask", "dtype": "DataType.INT32"}]}
    manifest_path.write_text(json.dumps(manifest))
    repo = write_repository(manifest_path, tmp_path / "repo")
    assert repo.plan
    gpu = parse_config(tmp_path / "repo" / "tiny" / "configs" / "gpu.pbtxt")
    assert gpu.platform == "tensorrt_plan" and dict(gpu.cc_model_filenames) == {"8.9": gpu.default_model_filename}
    assert (tmp_path / "repo" / "tiny" / "1" / gpu.default_model_filename).read_bytes() == plan_bytes
    assert gpu.max_batch_size == 0
    assert [(t.name, t.data_type, list(t.dims)) for t in gpu.input] == [("image", mc.TYPE_FP32, [1, 3, 64, 96])]
    assert [(t.name, t.data_type, list(t.dims)) for t in gpu.output] == [("mask", mc.TYPE_INT32, [1, 64, 96])]
    assert [g.kind for g in gpu.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    cpu = parse_config(tmp_path / "repo" / "tiny" / "config.pbtxt")
    assert cpu.platform == "onnxruntime_onnx"
    # The frames model runs the same files: its manifest points at them inside the repository.
    frames_manifest = json.loads((tmp_path / "repo" / "tiny_frames" / "1" / "model.json").read_text())
    folder = tmp_path / "repo" / "tiny_frames" / "1"
    assert (folder / frames_manifest["artifacts"]["engine"]["file"]).resolve() == \
        (tmp_path / "repo" / "tiny" / "1" / gpu.default_model_filename).resolve()
    assert (folder / frames_manifest["artifacts"]["onnx"]["file"]).read_bytes() == onnx_path.read_bytes()


# ---------------------------------------------------------------------------------------------- socket paths
def test_socket_paths_fit_af_unix_whatever_home_and_name(monkeypatch, tmp_path):
    """PyTriton names its Unix sockets after the model inside its workspace; the workspace we give it is
    short enough for a long model name even when $HOME and $TMPDIR are long."""
    from lrformer_deploy.errors import UserError
    from lrformer_deploy.triton import serve

    name = "lrformer-xl-cityscapes-1024x2048_frames"
    assert serve.socket_names(name, 2) == [f"{name}-data.sock", f"{name}-config.sock",
                                           f"{name}_0_0-server.sock", f"{name}_0_1-server.sock"]
    assert serve.longest_socket_path("/w", "m", 1) == len("/w/m_0_0-server.sock")
    assert serve.longest_socket_path("/w", "m", 12) == len("/w/m_0_11-server.sock")
    assert serve.max_model_name_length("/w", 1) + len("/w/_0_0-server.sock") == serve.AF_UNIX_PATH_MAX
    # PyTriton's default workspace under a 19-character home already overflows (the reported failure).
    default = "/home/first.lastname/.cache/pytriton/workspace_abcdefgh"
    assert serve.longest_socket_path(default, "lrformer-demo-synthetic-256x448_frames") > serve.AF_UNIX_PATH_MAX

    long_tmp = tmp_path / ("t" * 80)
    long_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(long_tmp))
    monkeypatch.setattr(serve.tempfile, "tempdir", None)  # re-read TMPDIR
    root = serve.short_workspace_root(name, 4)
    try:
        assert not str(root).startswith(str(long_tmp))  # a long $TMPDIR falls back to /tmp
        workspace = root / "w"
        assert serve.longest_socket_path(workspace, name, 4) <= serve.AF_UNIX_PATH_MAX - 30
        hundred = "m" * 100  # no folder fits a 100-character name: refused in one line, before serving
        with pytest.raises(UserError, match=r"100 characters.*--name") as info:
            serve.short_workspace_root(hundred, 1)
        assert "\n" not in str(info.value)
        fits = "m" * serve.max_model_name_length(workspace, 1)
        extra = serve.short_workspace_root(fits, 1)
        assert serve.longest_socket_path(extra / "w", fits, 1) <= serve.AF_UNIX_PATH_MAX
        extra.rmdir()
    finally:
        root.rmdir()


def test_failure_cause_is_one_line():
    from lrformer_deploy.triton.serve import log_cause

    tb = ('"failed to load \'m_frames\' version 1: Internal: TritonModelException: Model initialize error: '
          'Traceback (most recent call last):\\n  File \\"/tmp/x/1/model.py\\", line 419, in initialize\\n'
          '    self.start()\\nOSError: AF_UNIX path too long\\n\\n\\nAt:\\n  /tmp/x/1/model.py(454): initialize\\n"')
    log = ("I1130 13:49:18.046598 20587 http_server.cc:4713] \"Started HTTPService at 127.0.0.1:18123\"\n"
           "W1130 13:49:18.1 20587 pinned_memory_manager.cc:273] \"Unable to allocate pinned memory\"\n"
           f"E1130 13:49:21.813616 20587 model_lifecycle.cc:642] {tb}\n"
           "I1130 13:49:21.813645 20587 model_lifecycle.cc:777] \"failed to load 'm_frames'\"\n")
    cause = log_cause(log)
    assert cause == ("failed to load 'm_frames' version 1: Internal: TritonModelException: Model initialize error: "
                     "OSError: AF_UNIX path too long")
    assert log_cause("Traceback (most recent call last):\n  File x\nOSError: [Errno 98] Address in use\n") == \
        "OSError: [Errno 98] Address in use"
    assert log_cause("I1130 1:2:3.4 1 a.cc:1] \"all good\"\n") == ""


@pytest.fixture
def long_home_model(demo_onnx, tmp_path):
    """A 60-character $HOME and the demo graph renamed as a Cityscapes XL model would be named."""
    name = "lrformer-xl-cityscapes-1024x2048"
    folder = tmp_path / "models"
    folder.mkdir()
    manifest = json.loads(demo_onnx.with_suffix(".json").read_text())
    manifest["name"] = name
    manifest["artifacts"]["onnx"]["file"] = f"{name}.onnx"
    (folder / f"{name}.onnx").write_bytes(demo_onnx.read_bytes())
    (folder / f"{name}.json").write_text(json.dumps(manifest))
    base = Path(tempfile.mkdtemp(prefix="lrf-test-home-"))
    home = base / ("h" * (60 - len(str(base)) - 1))
    home.mkdir()
    assert len(str(home)) == 60
    try:
        yield home, folder / f"{name}.json", f"{name}_frames"
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def test_serve_under_a_long_home_with_a_long_model_name(long_home_model, frames, segmenter):
    home, manifest, name = long_home_model
    http, grpc = free_port(), free_port()
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(home)}
    env.pop("XDG_CACHE_HOME", None)
    env.pop("PYTRITON_HOME", None)
    err = home / "stderr.txt"
    with open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "lrformer_deploy.cli.serve", str(manifest), "--http-port",
                                 str(http), "--grpc-port", str(grpc)], env=env, stdout=subprocess.DEVNULL,
                                stderr=stderr)
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
        try:
            wait_ready(client, name, proc)
        except AssertionError:
            raise AssertionError(err.read_text()[-3000:]) from None
        for frame in frames[:3]:  # requests answered, not HTTP 500
            np.testing.assert_array_equal(http_frame(client, name, frame), segmenter(frame))
        # PyTriton's sockets are not under the home folder (that is what overflowed AF_UNIX).
        assert not (home / ".cache" / "pytriton").exists() or not any((home / ".cache" / "pytriton").rglob("*.sock"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM
def test_triton_configs_take_uint8_frames(tiny_model, tmp_path):
    from tritonclient.grpc import model_config_pb2 as mc

    from conftest import to_uint8_model
    from lrformer_deploy.triton.repository import write_repository

    u8 = to_uint8_model(tiny_model(size=(64, 96)))
    write_repository(u8.with_suffix(".json"), tmp_path / "repo")
    cfg = parse_config(tmp_path / "repo" / "tiny" / "config.pbtxt")
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.input] == [("image", mc.TYPE_UINT8, [1, 64, 96, 3])]
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.output] == [("mask", mc.TYPE_UINT8, [1, 64, 96])]
    frames_manifest = json.loads((tmp_path / "repo" / "tiny_frames" / "1" / "model.json").read_text())
    assert frames_manifest["input"]["dtype"] == "uint8"  # the frames model's Segmenter feeds uint8
    assert "uint8 [1, 64, 96, 3]" in (tmp_path / "repo" / "README.md").read_text()
