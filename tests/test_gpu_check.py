"""samples/gpu_check.py: its CPU-side parts (arguments, the no-GPU exit). The GPU checks need a GPU."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "samples" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arguments(gpu_check, tmp_path, capsys):
    args = gpu_check.parse_args([])
    assert args.video.is_file() and args.frames == 8 and not args.skip_bench
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"x")
    args = gpu_check.parse_args(["--video", str(video), "--frames", "3", "--skip-bench"])
    assert (args.video, args.frames, args.skip_bench) == (video, 3, True)
    for bad in (["--frames", "0"], ["--video", str(tmp_path / "missing.mp4")]):
        with pytest.raises(SystemExit) as exit_info:
            gpu_check.parse_args(bad)
        assert exit_info.value.code == 2
    assert "--frames must be at least 1" in capsys.readouterr().err


def test_without_a_gpu_it_says_so_in_one_line(gpu_check, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "gpu_reason", lambda: "torch sees no CUDA GPU")
    assert gpu_check.main(["--skip-bench"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: gpu_check needs an NVIDIA GPU")


def test_no_gpu_exit_as_a_script():
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present: the script would run its checks")
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.startswith("error: gpu_check needs an NVIDIA GPU")


def test_summary_table_rows(gpu_check):
    checks = gpu_check.Checks()
    with checks.check("passes") as row:
        row["detail"] = "fine"
    with checks.check("skips"):
        raise gpu_check.Skip("TensorRT is not installed")
    with checks.check("fails"):
        raise RuntimeError("mask agreement 0.5")
    assert [(r[0], r[1], r[2]) for r in checks.rows] == [
        ("passes", "ok", "fine"), ("skips", "skipped", "TensorRT is not installed"),
        ("fails", "FAIL", "RuntimeError: mask agreement 0.5")]
    table = checks.table().splitlines()
    assert len(table) == 2 + 3 and table[0].split()[:2] == ["check", "result"]
