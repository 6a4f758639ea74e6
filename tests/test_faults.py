"""Faults below the signal level (issue 20): kill -9 leftovers, truncated media, oversized inputs, live and
network sources."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO_CKPT = REPO / "lrformer_deploy" / "weights" / "lrformer-demo-synthetic.pth"


def env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", **extra)


def cli(command: str, *args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"lrformer_deploy.cli.{command}", *map(str, args)], cwd=cwd,
                          env=env(), capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------- 1. killed exports
def partial_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob(".*.partial") if p.is_dir())


def test_killed_export_leftovers_are_removed_by_the_next_export_but_a_live_ones_are_not(tmp_path):
    from lrformer_deploy import manifest as mf
    from lrformer_deploy.locks import OWNER_FILE, owned_temporary_folder

    out = tmp_path / "out"
    out.mkdir()
    args = ["--ckpt", DEMO_CKPT, "--size", "64x64", "--output-dir", out, "--name", "m", "--no-engine",
            "--target", "cpu", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "lrformer_deploy.cli.export", *map(str, args)], cwd=tmp_path,
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while (not any((p / OWNER_FILE).is_file() for p in partial_folders(out)) and proc.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.01)
        assert partial_folders(out), "the export never made its staging folder"
        time.sleep(0.5)  # mid-export: the graph is being traced into the folder
        proc.send_signal(signal.SIGKILL)  # no cleanup runs at all
    finally:
        proc.kill()
        proc.wait(timeout=30)
    killed = partial_folders(out)
    assert killed and all((p / OWNER_FILE).is_file() for p in killed)
    # Two more kinds of leftover: an owner file nobody holds (a killed process's), and an owner-less
    # folder from an older version, an hour old.
    orphan = out / ".m-fp16.abc123.partial"
    orphan.mkdir()
    (orphan / OWNER_FILE).write_text("999999")
    (orphan / "m-fp16.onnx").write_bytes(b"x" * 1000)
    legacy = out / ".m-int8.old.partial"
    legacy.mkdir()
    os.utime(legacy, (time.time() - 3600, time.time() - 3600))
    young = out / ".m-int8.young.partial"  # owner-less but new: maybe a live one a moment before its lock
    young.mkdir()
    with owned_temporary_folder(out, prefix=".m.", suffix=".partial") as live:
        proc = cli("export", *args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert live.is_dir(), "a live process's staging folder was removed"
        assert young.is_dir()
        left = set(partial_folders(out))
        assert left == {live, young}, left
    assert not live.exists()
    manifest = mf.load_manifest(out / "m.json")
    assert manifest["artifacts"]["onnx"]["sha256"] == mf.sha256_file(out / "m.onnx")


def test_publish_replaces_the_manifest_without_a_moment_where_it_is_missing(tmp_path, monkeypatch):
    """The old manifest is replaced by a rename, never unlinked first, and the folder is fsynced after."""
    from lrformer_deploy import atomic, manifest as mf

    target = tmp_path / "m.onnx"
    man = tmp_path / "m.json"
    target.write_bytes(b"old")
    man.write_text(json.dumps({"v": "old"}))
    staged = tmp_path / "staged.onnx"
    staged.write_bytes(b"new")
    seen_missing = []
    synced = []
    real_replace, real_unlink = os.replace, os.unlink

    def replace(src, dst):
        seen_missing.append(not man.exists())
        return real_replace(src, dst)

    def unlink(path, *a, **k):
        assert Path(path) != man, "publish unlinked the old manifest"
        return real_unlink(path, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(atomic, "fsync_dir", lambda folder: synced.append(Path(folder)))
    mf.publish([(staged, target)], {"v": "new"}, man)
    assert seen_missing and not any(seen_missing)
    assert json.loads(man.read_text()) == {"v": "new"} and target.read_bytes() == b"new"
    assert tmp_path.resolve() in synced
