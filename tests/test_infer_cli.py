"""lrformer-infer end to end, as users run it: a subprocess, real files, exit codes and stderr lines."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import default_signals

from lrformer_deploy.runtime.overlay import legend_strip_height, palette_lut

REPO = Path(__file__).resolve().parent.parent
RED, GREEN, BLUE = (0, 0, 255), (0, 255, 0), (255, 0, 0)  # BGR


def cli_env(extra_path: Path | None = None) -> dict[str, str]:
    paths = ([str(extra_path)] if extra_path else []) + [str(REPO)]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1")


def run_cli(*args: str, cwd: Path, extra_path: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lrformer_deploy.cli.infer", *map(str, args)], cwd=cwd,
                          env=cli_env(extra_path), capture_output=True, text=True, timeout=timeout)


def assert_one_error_line(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stderr.startswith("error:"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def count_frames(path: Path) -> tuple[int, int, int, float]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"cannot open {path}"
    w, h, fps = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), cap.get(cv2.CAP_PROP_FPS)
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n, w, h, fps


def write_images(folder: Path, colours: dict[str, tuple[int, int, int]], size=(36, 50)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, colour in colours.items():
        cv2.imwrite(str(folder / f"{stem}.png"), np.full((*size, 3), colour, np.uint8))


def test_video_in_playable_video_out_same_frames_size_fps(shared_video, tiny_model, tmp_path):
    model = tiny_model(size=(64, 96))
    src_frames, src_w, src_h, src_fps = count_frames(shared_video)
    out = tmp_path / "out.mp4"
    proc = run_cli(shared_video, "--model", model, "--output", out, "--json", tmp_path / "s.json", "--quiet",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    n, w, h, fps = count_frames(out)
    # The default legend strip is added below the frame: the writer gets the taller size on every frame.
    assert (n, w, h) == (src_frames, src_w, src_h + legend_strip_height(src_h, src_w)) and (n, w) == (377, 768)
    assert legend_strip_height(src_h, src_w) > 0
    assert fps == pytest.approx(src_fps, abs=0.01)
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["frames"] == 377 and summary["failed"] == []
    assert set(summary["stage_ms_per_frame"]) == {"decode", "preprocess", "infer", "postprocess", "encode"}
    assert summary["latency_ms"]["p95"] >= summary["latency_ms"]["p50"] > 0
    assert summary["fps"] > 0


def test_default_output_names_and_video_masks(shared_video, tiny_model, tmp_path):
    video = tmp_path / "clip.mp4"
    video.symlink_to(shared_video)
    proc = run_cli(video, "--model", tiny_model(head="logits", size=(64, 64)), "--max-frames", 5,
                   "--save-mask", tmp_path / "m", "--resize", "keep-ratio", "--legend", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert count_frames(tmp_path / "clip_seg.mp4")[:3] == (5, 768, 432 + legend_strip_height(432, 768))
    masks = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert masks == [f"clip_{i:06d}.png" for i in range(5)]
    mask = cv2.imread(str(tmp_path / "m" / masks[0]), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (432, 768) and mask.dtype == np.uint8 and mask.max() <= 2


def test_folder_of_images_writes_masks_and_overlays(tiny_model, tmp_path):
    write_images(tmp_path / "imgs", {"a": RED, "b": GREEN, "c": BLUE})
    proc = run_cli(tmp_path / "imgs", "--model", tiny_model(), "--save-mask", tmp_path / "masks",
                   "--json", "-", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for stem, cid in (("a", 0), ("b", 1), ("c", 2)):
        mask = cv2.imread(str(tmp_path / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (36, 50) and mask.ndim == 2
        assert np.all(mask == cid)
        overlay = cv2.imread(str(tmp_path / "imgs_seg" / f"{stem}_seg.png"))
        assert overlay.shape == (36 + legend_strip_height(36, 50), 50, 3)
    summary = json.loads(proc.stdout)
    assert summary["frames"] == 3 and summary["source"] == "images"


def test_single_image_and_glob(tiny_model, tmp_path):
    write_images(tmp_path / "g", {"x1": RED, "x2": BLUE, "y": GREEN})
    model = tiny_model()
    proc = run_cli(str(tmp_path / "g" / "x*.png"), "--model", model, "--no-overlay", "--save-mask",
                   tmp_path / "gm", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "gm").iterdir()) == ["x1.png", "x2.png"]
    proc = run_cli(tmp_path / "g" / "x1.png", "--model", model, "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "g" / "x1_seg.png").is_file()
    proc = run_cli(tmp_path / "g" / "y.png", "--model", model, "--output", tmp_path / "o.png", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    overlay = cv2.imread(str(tmp_path / "o.png"))
    assert overlay.shape == (36 + legend_strip_height(36, 50), 50, 3) and not (tmp_path / "g" / "y_seg.png").exists()


def test_legend_by_default_below_the_scene_and_no_legend_flag(tiny_model, shared_video, tmp_path):
    """The default overlay names the colours in a strip below the frame; the frame's pixels are the same
    as with --no-legend (nothing covered); --no-legend keeps the input's size."""
    from conftest import TINY_PALETTE

    size = (60, 240)
    write_images(tmp_path / "imgs", {"r": RED, "b": BLUE}, size=size)
    model = tiny_model()
    for flags, out in (([], "with"), (["--legend"], "legend-flag"), (["--no-legend"], "without")):
        proc = run_cli(tmp_path / "imgs", "--model", model, "--output", tmp_path / out, "--quiet", *flags, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    lut = palette_lut(TINY_PALETTE)
    strip_h = legend_strip_height(*size)
    for stem, present, absent in (("r", 0, 2), ("b", 2, 0)):
        default = cv2.imread(str(tmp_path / "with" / f"{stem}_seg.png"))
        plain = cv2.imread(str(tmp_path / "without" / f"{stem}_seg.png"))
        assert plain.shape == (*size, 3) and default.shape == (size[0] + strip_h, size[1], 3)
        np.testing.assert_array_equal(default[:size[0]], plain)  # the scene is not covered
        np.testing.assert_array_equal(cv2.imread(str(tmp_path / "legend-flag" / f"{stem}_seg.png")), default)
        strip = {tuple(int(v) for v in px) for px in default[size[0]:].reshape(-1, 3)}
        assert tuple(int(v) for v in lut[present]) in strip  # the swatch of the class shown
        assert tuple(int(v) for v in lut[absent]) not in strip
        assert len(strip) > 10  # text drawn (anti-aliased), not just a flat band
    # A video: every frame gets the strip, the writer's size agrees.
    proc = run_cli(shared_video, "--model", tiny_model(size=(64, 96)), "--max-frames", 3, "--output",
                   tmp_path / "v.mp4", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert count_frames(tmp_path / "v.mp4")[:3] == (3, 768, 432 + legend_strip_height(432, 768))


def test_input_size_for_an_exported_model_is_refused(tiny_model, tmp_path):
    """--input-size only applies to .pth checkpoints: with a graph (or the demo) it would be ignored."""
    write_images(tmp_path / "imgs", {"a": RED})
    proc = run_cli(tmp_path / "imgs", "--model", tiny_model(), "--input-size", "64x64", cwd=tmp_path)
    assert_one_error_line(proc, "--input-size is for .pth checkpoints only", "tiny.onnx is an exported model")
    proc = run_cli(tmp_path / "imgs", "--input-size", "64x64", cwd=tmp_path)
    assert_one_error_line(proc, "--input-size is for .pth checkpoints only", "the demo model")
    assert not (tmp_path / "imgs_seg").exists()


def test_one_bad_image_among_good_ones(tiny_model, tmp_path):
    write_images(tmp_path / "imgs", {"good1": RED, "good2": BLUE})
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")
    proc = run_cli(tmp_path / "imgs", "--model", tiny_model(), "--save-mask", tmp_path / "masks", "--quiet",
                   cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["good1.png", "good2.png"]
    bad_lines = [line for line in proc.stderr.splitlines() if "broken.png" in line]
    assert len(bad_lines) == 1 and bad_lines[0].startswith("error:")


@pytest.mark.parametrize("case", ["corrupt-image", "empty-image", "text-as-mp4", "empty-mp4", "missing-input",
                                  "missing-model", "corrupt-model", "empty-folder"])
def test_user_mistakes_are_one_line(case, tiny_model, tmp_path):
    model = tiny_model()
    target = {
        "corrupt-image": ("bad.jpg", b"\xff\xd8\xff not really a jpeg"),
        "empty-image": ("empty.png", b""),
        "text-as-mp4": ("notes.mp4", b"these are my notes, not a video\n" * 20),
        "empty-mp4": ("nothing.mp4", b""),
    }
    args: list = []
    if case in target:
        name, data = target[case]
        (tmp_path / name).write_bytes(data)
        args = [tmp_path / name, "--model", model]
        expect = name
    elif case == "missing-input":
        args, expect = [tmp_path / "nope.mp4", "--model", model], "input not found"
    elif case == "missing-model":
        write_images(tmp_path / "imgs", {"a": RED})
        args, expect = [tmp_path / "imgs", "--model", tmp_path / "missing.onnx"], "model file not found"
    elif case == "corrupt-model":
        write_images(tmp_path / "imgs", {"a": RED})
        (tmp_path / "junk.onnx").write_bytes(b"garbage" * 10)
        args, expect = [tmp_path / "imgs", "--model", tmp_path / "junk.onnx"], "cannot load ONNX model"
    else:
        (tmp_path / "void").mkdir()
        args, expect = [tmp_path / "void", "--model", model], "no images in folder"
    assert_one_error_line(run_cli(*args, cwd=tmp_path), expect)


UNREADABLE_SHIM = textwrap.dedent("""
    # Root ignores permission bits, so emulate an unreadable folder at the system-call boundary.
    import os
    _real_scandir = os.scandir
    def _scandir(path="."):
        if os.path.basename(str(path).rstrip("/")) == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return _real_scandir(path)
    os.scandir = _scandir
""")


def test_unreadable_folder_is_one_line(tiny_model, tmp_path):
    locked = tmp_path / "locked"
    write_images(locked, {"a": RED})
    locked.chmod(0)
    shim = None
    if os.geteuid() == 0:
        shim = tmp_path / "shim"
        shim.mkdir()
        (shim / "sitecustomize.py").write_text(UNREADABLE_SHIM)
    try:
        proc = run_cli(locked, "--model", tiny_model(), cwd=tmp_path, extra_path=shim)
    finally:
        locked.chmod(0o755)
    assert_one_error_line(proc, "cannot read folder", "permission denied")


def test_no_model_and_no_demo_is_one_line(tmp_path):
    write_images(tmp_path / "imgs", {"a": RED})
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(textwrap.dedent("""
        import importlib.abc, sys
        class _NoDemo(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "lrformer_deploy.build.on_demand":
                    raise ImportError("hidden for this test")
        sys.meta_path.insert(0, _NoDemo())
    """))
    proc = run_cli(tmp_path / "imgs", cwd=tmp_path, extra_path=shim)
    assert_one_error_line(proc, "no --model given and the demo model is not available")


NO_TORCH_SHIM = textwrap.dedent("""
    import importlib.abc, sys
    class _NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError("No module named 'torch' (blocked for this test)", name="torch")
    sys.meta_path.insert(0, _NoTorch())
""")


def test_quick_start_runs_without_torch(tmp_path):
    """`lrformer-infer samples/synthetic-scenes.mp4` on a runtime-only install: the shipped demo graph, no
    export, no torch (importing it fails), an empty cache folder."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(NO_TORCH_SHIM)
    blocked = subprocess.run([sys.executable, "-c", "import torch"], env=cli_env(shim), capture_output=True)
    assert blocked.returncode != 0  # the shim works: torch cannot be imported in the child
    (tmp_path / "samples").mkdir()
    video = tmp_path / "samples" / "synthetic-scenes.mp4"
    video.write_bytes((REPO / "samples" / "synthetic-scenes.mp4").read_bytes())
    env = {**cli_env(shim), "LRFORMER_DEPLOY_CACHE": str(tmp_path / "empty-cache")}
    proc = subprocess.run([sys.executable, "-m", "lrformer_deploy.cli.infer", "samples/synthetic-scenes.mp4",
                           "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "export" not in proc.stderr and "torch" not in proc.stderr, proc.stderr
    n, w, h, _ = count_frames(tmp_path / "samples" / "synthetic-scenes_seg.mp4")
    src_n, src_w, _, _ = count_frames(video)
    assert n == src_n == 84 and w == src_w
    assert not (tmp_path / "empty-cache" / "lrformer-demo-synthetic-256x448.onnx").exists()


def test_ctrl_c_leaves_a_playable_partial_video(shared_video, tiny_model, tmp_path):
    # Interrupt once the progress line reports some frames; the run takes seconds, so it is midway.
    model = tiny_model(head="logits", size=(64, 64), num_classes=64)
    out = tmp_path / "partial.mp4"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lrformer_deploy.cli.infer", str(shared_video), "--model", str(model),
         "--resize", "keep-ratio", "--output", str(out)],
        cwd=tmp_path, env=cli_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
        preexec_fn=default_signals,  # Python installs no Ctrl-C handler when SIGINT arrives ignored
    )
    # Wait for the progress line to report some frames, then press "Ctrl-C".
    seen = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        chunk = os.read(proc.stderr.fileno(), 256)
        if not chunk:
            break
        seen += chunk
        # a read can end mid-update: look at every complete tqdm update ("segment: 12%|..| 45/377 ["),
        # not only the last line
        done = [int(n) for n in re.findall(rb"segment: +\d+%\|[^|]*\| *(\d+)/377 \[", seen)]
        if done and max(done) >= 10:
            break
    assert proc.poll() is None, f"finished before it could be interrupted: {seen[-300:]!r}"
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    code = proc.wait(timeout=60)
    stderr = (seen + rest).decode()
    assert code == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted by SIGINT after" in stderr
    n, w, h, _ = count_frames(out)
    assert 0 < n < 377 and (w, h) == (768, 432 + legend_strip_height(432, 768))
