"""lrformer-bench: report fields, the compare table's ratios, interleaving, and one-line errors.

Speed is never asserted: only that numbers exist, are positive and are consistent with each other.
The demo variant at 64x64 with 1-2 iterations keeps the whole file to well under a minute on 2 cores.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lrformer_deploy.bench.report import agreement
from lrformer_deploy.bench.rows import Row
from lrformer_deploy.bench.timing import measure, summarize
from lrformer_deploy.runtime.backends.base import Runner
from lrformer_deploy.cli.bench import main

REPO = Path(__file__).resolve().parent.parent
FAST = ["--variant", "demo", "--size", "64x64", "--warmup", "1", "--iterations", "2", "--threads", "1"]
TIMING_FIELDS = ("median_ms", "p95_ms", "mean_ms", "min_ms", "throughput_ips")


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    # One folder for the module: the demo graph (and its FP16/INT8 copies) are exported once, then reused.
    return tmp_path_factory.mktemp("bench")


def run_json(capsys, *args: str) -> dict:
    assert main([*args, "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # stdout must be exactly one JSON object (no progress lines from calibration)


@pytest.fixture(scope="module")
def compare_report(work_dir) -> dict:
    from lrformer_deploy.bench.run import run_benchmark

    return run_benchmark(variant="demo", size=(64, 64), warmup=1, iterations=2, threads=1, calib_count=2,
                         compare=True, work_dir=str(work_dir))


# ------------------------------------------------------------------------------------------- pure parts
def test_summarize_statistics():
    stats = summarize([4.0, 1.0, 3.0, 2.0, 10.0], batch=2)
    assert stats["median_ms"] == 3.0
    assert stats["min_ms"] == 1.0 and stats["max_ms"] == 10.0
    assert stats["mean_ms"] == pytest.approx(4.0)
    assert stats["p95_ms"] == pytest.approx(np.percentile([1, 2, 3, 4, 10], 95))
    assert stats["throughput_ips"] == pytest.approx(2 * 1000 / 4.0)
    assert stats["iterations"] == 5


class CallRecorder(Runner):
    """A runner that records its name in `calls` on every inference (what the timing loop is given)."""

    def __init__(self, name: str, calls: list[str]):
        super().__init__()
        self.name, self.calls = name, calls

    def _activate(self) -> None:
        pass

    def io_info(self):
        return [("image", (1,))], [("out", (1,))]

    def infer(self, feed):
        self.calls.append(self.name)
        return {"out": feed["image"]}


def test_measure_interleaves_in_rotated_rounds():
    calls: list[str] = []

    def make(name):
        return Row(name, "fake", "fp32", "cpu", runner=CallRecorder(name, calls)).activate()

    targets = [make("a"), make("b"), make("c"), Row("gpu", "fake", "fp32", "cuda", skipped="no GPU")]
    measure(targets, np.zeros(1), warmup=2, iterations=3, duration=None)
    warm, timed = calls[:6], calls[6:]
    assert warm == ["a", "a", "b", "b", "c", "c"]
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # each round starts one later
    assert [len(t.latencies_ms) for t in targets] == [3, 3, 3, 0]
    assert all(v >= 0 for t in targets for v in t.latencies_ms)


def test_measure_pauses_between_rows_outside_the_timed_runs(monkeypatch):
    """Several rows: a pause before every timed run, none inside a latency; one row: no pause."""
    from lrformer_deploy.bench import timing

    events: list[str] = []
    monkeypatch.setattr(timing.time, "sleep", lambda s: events.append(f"sleep {s}"))

    def make(name):
        return Row(name, "fake", "fp32", "cpu", runner=CallRecorder(name, events)).activate()

    measure([make("a"), make("b")], np.zeros(1), warmup=1, iterations=2, duration=None, settle_s=0.03)
    assert events == ["a", "b", "sleep 0.03", "a", "sleep 0.03", "b", "sleep 0.03", "b", "sleep 0.03", "a"]
    events.clear()
    measure([make("a")], np.zeros(1), warmup=0, iterations=2, duration=None, settle_s=0.03)
    assert events == ["a", "a", "a"]  # the first (agreement) run, then two timed
    events.clear()
    measure([make("a"), make("b")], np.zeros(1), warmup=0, iterations=1, duration=None, settle_s=0)
    assert events == ["a", "b", "a", "b"]


def test_measure_duration_runs_at_least_one_round():
    t = Row("a", "fake", "fp32", "cpu", runner=CallRecorder("a", [])).activate()
    measure([t], np.zeros(1), warmup=0, iterations=None, duration=1e-9)
    assert len(t.latencies_ms) >= 1


def test_agreement_of_masks_and_logits():
    mask = np.array([[[0, 1], [2, 1]]], dtype=np.int32)
    logits = np.zeros((1, 3, 2, 2), np.float32)
    for c, (i, j) in ((0, (0, 0)), (1, (0, 1)), (2, (1, 0)), (2, (1, 1))):
        logits[0, c, i, j] = 1.0
    assert agreement({"mask": mask}, mask) == 1.0
    assert agreement(logits, mask) == 0.75
    assert agreement(mask, np.zeros((1, 3, 3), np.int32)) is None


# ------------------------------------------------------------------------------------------- single mode
def test_single_json_has_fields_and_positive_numbers(capsys, work_dir):
    report = run_json(capsys, *FAST, "--work-dir", str(work_dir))
    assert report["mode"] == "single" and report["threads"] == 1
    assert report["input"] == {"size": [64, 64], "batch": 1, "head": "mask",
                               "data": report["input"]["data"]}
    (row,) = report["rows"]
    assert row["status"] == "ok" and row["backend"] == "onnxruntime" and row["precision"] == "fp32"
    assert row["iterations"] == 2
    for key in TIMING_FIELDS:
        assert row[key] > 0, key
    assert row["min_ms"] <= row["median_ms"] <= row["p95_ms"]
    assert row["throughput_ips"] == pytest.approx(1000.0 / row["mean_ms"])


def test_single_torch_backend_batch2(capsys, work_dir):
    report = run_json(capsys, *FAST, "--backend", "torch", "--device", "cpu", "--batch", "2",
                      "--work-dir", str(work_dir))
    (row,) = report["rows"]
    assert row["backend"] == "torch" and row["device"] == "cpu" and report["input"]["batch"] == 2
    assert row["throughput_ips"] == pytest.approx(2 * 1000.0 / row["mean_ms"])


def test_single_spin_wait_off_uses_sleeping_threads(capsys, work_dir, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)  # restored after the test: the bench sets it
    report = run_json(capsys, *FAST, "--spin-wait", "off", "--work-dir", str(work_dir))
    (row,) = report["rows"]
    assert row["status"] == "ok" and row["median_ms"] > 0
    assert "OMP_WAIT_POLICY=PASSIVE" in report["thread_wait"]


def test_single_onnx_model_and_table(capsys, work_dir, compare_report):
    onnx_files = sorted(p for p in work_dir.glob("bench-demo-*-64x64-b1.onnx"))
    assert onnx_files, list(work_dir.iterdir())
    assert main(["--model", str(onnx_files[0]), "--warmup", "0", "--iterations", "1", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "ort-fp32" in text and "median" in text and "img/s" in text


# ------------------------------------------------------------------------------------------- compare mode
def test_compare_rows_and_ratios(compare_report):
    rows = {r["name"]: r for r in compare_report["rows"]}
    assert compare_report["mode"] == "compare"
    for name in ("torch-eager", "ort-fp32", "ort-fp16", "ort-int8"):
        assert rows[name]["status"] == "ok", rows[name]
        for key in TIMING_FIELDS:
            assert rows[name][key] > 0, (name, key)
        assert rows[name]["iterations"] == 2
    torch_median = rows["torch-eager"]["median_ms"]
    for name in ("torch-eager", "ort-fp32", "ort-fp16", "ort-int8"):
        assert rows[name]["speedup_vs_torch"] == pytest.approx(torch_median / rows[name]["median_ms"], rel=1e-9)
    assert rows["torch-eager"]["speedup_vs_torch"] == pytest.approx(1.0)
    assert [rows[n]["precision"] for n in ("ort-fp32", "ort-fp16", "ort-int8")] == ["fp32", "fp16", "int8"]


def test_compare_has_openvino_rows_or_says_why_not(compare_report):
    import importlib.util

    rows = {r["name"]: r for r in compare_report["rows"]}
    for name, precision in (("openvino-fp32", "fp32"), ("openvino-int8", "int8")):
        row = rows[name]
        assert row["backend"] == "openvino" and row["precision"] == precision
        if importlib.util.find_spec("openvino") is None:
            assert row["status"] == "skipped" and "OpenVINO" in row["reason"]
        else:
            assert row["status"] == "ok" and row["median_ms"] > 0
    if rows["openvino-fp32"]["status"] == "ok":  # the same FP32 graph: OpenVINO f32 gives torch's masks too
        assert rows["openvino-fp32"]["agreement_vs_torch"] > 0.99
        assert rows["openvino-fp32"]["agreement_vs_ort_fp32"] >= 0.999
    assert rows["ort-fp32"]["agreement_vs_ort_fp32"] == 1.0 and rows["ort-fp32"]["speedup_vs_ort_fp32"] == 1.0
    for row in compare_report["rows"]:
        if row["status"] == "ok":
            assert 0.0 <= row["agreement_vs_ort_fp32"] <= 1.0 and row["speedup_vs_ort_fp32"] > 0
    for name in ("openvino-bf16", "openvino-int8-bf16"):
        row = rows[name]
        assert row["precision"] == "bf16" and (row["status"] == "ok" or row["reason"])
    if rows["openvino-int8-bf16"]["status"] == "ok":
        assert "INT8 graph" in rows["openvino-int8-bf16"]["note"]


def test_compare_runs_the_same_model_on_the_same_input(compare_report):
    # Same weights and same input: the FP32 graph must reproduce torch eager's mask almost exactly.
    rows = {r["name"]: r for r in compare_report["rows"]}
    assert rows["ort-fp32"]["agreement_vs_torch"] > 0.99
    for name in ("ort-fp16", "ort-int8"):
        assert 0.0 <= rows[name]["agreement_vs_torch"] <= 1.0


def test_compare_gpu_rows_skip_with_a_reason_here(compare_report):
    import importlib.util

    import torch

    rows = {r["name"]: r for r in compare_report["rows"]}
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the gpu-marked test covers it")
    assert rows["torch-cuda"]["status"] == "skipped" and "CUDA" in rows["torch-cuda"]["reason"]
    trt = next(r for r in compare_report["rows"] if r["name"].startswith("tensorrt"))
    assert trt["status"] == "skipped" and trt["reason"]
    if importlib.util.find_spec("tensorrt") is None:
        assert "TensorRT" in trt["reason"]
    assert "FP16" in compare_report["footnote"] and "slower" in compare_report["footnote"]


def test_compare_table_text(capsys, work_dir, compare_report):
    # Graphs in work_dir are reused, so this second compare only times.
    assert main([*FAST, "--compare", "--calib-count", "2", "--work-dir", str(work_dir)]) == 0
    text = capsys.readouterr().out
    for fragment in ("torch-eager", "ort-fp32", "ort-fp16", "ort-int8", "speedup", "x ", "FP16"):
        assert fragment in text, fragment
    if "skipped:" not in text:
        import torch

        assert torch.cuda.is_available()


@pytest.mark.gpu
def test_compare_times_torch_cuda_on_a_gpu(work_dir):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from lrformer_deploy.bench.run import run_benchmark

    report = run_benchmark(variant="demo", size=(64, 64), warmup=1, iterations=2, threads=1, calib_count=2,
                           compare=True, work_dir=str(work_dir))
    row = next(r for r in report["rows"] if r["name"] == "torch-cuda")
    assert row["status"] == "ok" and row["median_ms"] > 0


# ------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("args, fragment", [
    ([], "--model"),
    (["--model", "/nonexistent/model.onnx"], "not found"),
    (["--variant", "demo", "--size", "50x50"], "multiple of 32"),
    (["--variant", "Q"], "unknown LRFormer variant"),
    (["--variant", "demo", "--size", "64x64", "--iterations", "0"], "--iterations"),
    (["--variant", "demo", "--size", "64x64", "--threads", "0"], "--threads"),
    (["--variant", "demo", "--size", "64x64", "--backend", "tensorflow"], "--backend"),
    (["--variant", "demo", "--size", "64x64", "--compare", "--backend", "torch"], "--compare"),
    (["--variant", "demo", "--model", "x.onnx"], "not both"),
])
def test_bad_input_is_one_error_line(capsys, args, fragment):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert fragment in err, err


def test_static_graph_batch_mismatch_is_a_user_error(capsys, work_dir, compare_report):
    onnx_path = next(work_dir.glob("bench-demo-*-mask-64x64-b1.onnx"))
    assert main(["--model", str(onnx_path), "--batch", "4"]) == 2
    assert "static batch of 1" in capsys.readouterr().err
    assert main(["--model", str(onnx_path), "--size", "128x128"]) == 2
    assert "static 64x64" in capsys.readouterr().err


def test_cli_subprocess_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lrformer_deploy.cli.bench", "--model", str(tmp_path / "none.onnx")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


def test_compare_labels_its_two_agreement_figures(compare_report):
    """The table's agreement is against torch-eager on the benchmark input; a reduced row's note quotes the
    build's check against the FP32 graph on held-out frames. Both say which they are."""
    from lrformer_deploy.bench.report import AGREE_NOTE, format_report

    text = format_report(compare_report)
    assert "agree(torch)" in text.splitlines()[text.splitlines().index("") + 1]  # the table header
    assert AGREE_NOTE in text
    rows = {r["name"]: r for r in compare_report["rows"]}
    for name in ("ort-fp16", "ort-int8"):
        assert "build check vs the FP32 graph on 2 held-out frames: mask agreement" in rows[name]["note"], rows[name]
        figure = float(rows[name]["note"].rsplit("mask agreement ", 1)[1])
        assert 0.0 <= figure <= 1.0
