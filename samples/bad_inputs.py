"""Run the bad-input and interruption cases of issue 12 across the five commands and print one table.

    python samples/bad_inputs.py                 # all cases (a few minutes on 2 cores)
    python samples/bad_inputs.py --only infer    # one command's cases
    python samples/bad_inputs.py --keep DIR      # keep the case folders for a look

Every case runs as a user would (a subprocess in its own folder) and is reported as: case, exit code,
first stderr line (the first error/interrupt line when notes come before it), what was kept (files created, changed or removed in the case folder, videos with their
decodable frame count, leftover temporaries or lock files, and earlier outputs that had to survive).
The aim for every row: one line, the right exit code, nothing lost.

Uses the demo model (exported once into $LRFORMER_DEPLOY_CACHE on first use) and `--variant demo` at
64x64 for export/bench, so nothing is downloaded. The video is the real traffic clip
(../shared/data/car-detection.mp4, CC BY 4.0, Intel IoT DevKit sample videos) when present, else the
bundled synthetic clip played four times.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
SYNTHETIC_VIDEO = REPO / "samples" / "synthetic-scenes.mp4"
SHARED_VIDEO = REPO.parent / "shared" / "data" / "car-detection.mp4"
DEMO_CKPT = REPO / "lrformer_deploy" / "weights" / "lrformer-demo-synthetic.pth"
TINY = ["--variant", "demo", "--size", "64x64"]
# Not outputs of ours: `import onnxruntime` drops a small session-id file into $TMPDIR, and torch keeps its
# compile cache in $TMPDIR/torchinductor_<user>.
FOREIGN_TMP = (".ses", "torchinductor_")


@dataclass
class Case:
    name: str
    command: str  # export, infer, info, eval, bench
    args: list[str]
    setup: list[str] = field(default_factory=list)  # names of preparations (see prepare())
    signal_after: tuple[int, int] | None = None  # (signal, frames seen) or (signal, -seconds)
    watch: list[str] = field(default_factory=list)  # earlier outputs that must survive unchanged
    second_writer: list[str] | None = None  # args of a second process started while the first runs


def cases() -> list[Case]:
    v = "{video}"
    return [
        # ----------------------------------------------------------------------------- lrformer-infer
        Case("infer: input missing", "infer", ["nope.mp4"]),
        Case("infer: empty input file", "infer", ["empty.mp4"], ["empty"]),
        Case("infer: text file named .mp4", "infer", ["notes.mp4"], ["notes"]),
        Case("infer: --model missing", "infer", [v, "--model", "missing.onnx"]),
        Case("infer: --model corrupt .onnx", "infer", [v, "--model", "corrupt.onnx"], ["corrupt"]),
        Case("infer: --output clip.png for a video", "infer", [v, "--output", "clip.png"]),
        Case("infer: --output below a file", "infer", [v, "--output", "file.txt/out.mp4"], ["file"]),
        Case("infer: --json is a folder", "infer", [v, "--json", "."]),
        Case("infer: --save-mask is a file", "infer", [v, "--save-mask", "file.txt"], ["file"]),
        Case("infer: --max-frames 0", "infer", [v, "--max-frames", "0"]),
        Case("infer: --opacity 2", "infer", [v, "--opacity", "2"]),
        Case("infer: --backend tensorrt without TensorRT", "infer", [v, "--backend", "tensorrt"]),
        Case("infer: --show without a GUI", "infer", [v, "--show", "--max-frames", "2"]),
        Case("infer: graph changed after its manifest", "infer", [v, "--model", "m.onnx"], ["tampered"]),
        Case("infer: SIGINT mid-video", "infer", [v, "--output", "out.mp4"], signal_after=(signal.SIGINT, 15)),
        Case("infer: SIGTERM mid-video, earlier out.mp4", "infer", [v, "--output", "out.mp4", "--json", "s.json"],
             ["earlier"], signal_after=(signal.SIGTERM, 15), watch=["out.mp4"]),
        Case("infer: SIGHUP mid-video, masks", "infer", [v, "--output", "out.mp4", "--save-mask", "masks"],
             signal_after=(signal.SIGHUP, 15)),
        Case("infer: second writer of the same out.mp4", "infer", [v, "--output", "out.mp4"],
             signal_after=(signal.SIGINT, 15), second_writer=[v, "--output", "out.mp4"]),
        # ----------------------------------------------------------------------------- lrformer-eval
        Case("eval: no arguments (8 scenes)", "eval", ["--limit", "8", "--json"]),
        Case("eval: labels of another size", "eval", ["--data", "data", "--limit", "2"], ["badlabels"]),
        Case("eval: --data missing", "eval", ["--data", "missing"]),
        Case("eval: --limit 0", "eval", ["--limit", "0"]),
        Case("eval: --model corrupt .onnx", "eval", ["--model", "corrupt.onnx"], ["corrupt"]),
        Case("eval: SIGTERM mid-evaluation", "eval", [], signal_after=(signal.SIGTERM, -8)),
        # ----------------------------------------------------------------------------- lrformer-info
        Case("info: --num-classes vs checkpoint", "info", ["--ckpt", str(DEMO_CKPT), "--num-classes", "150"]),
        Case("info: --size 100000x100000", "info", ["--size", "100000x100000"]),
        Case("info: --variant Q", "info", ["--variant", "Q"]),
        Case("info: --ckpt is a text file", "info", ["--ckpt", "file.txt"], ["file"]),
        # ----------------------------------------------------------------------------- lrformer-export
        Case("export: --opset 99", "export", TINY + ["--opset", "99", "--output-dir", "out", "--no-engine"]),
        Case("export: --num-classes 0", "export", TINY + ["--num-classes", "0", "--output-dir", "out"]),
        Case("export: --output-dir is a file", "export", TINY + ["--output-dir", "file.txt"], ["file"]),
        Case("export: --size 100000x100000", "export", ["--variant", "demo", "--size", "100000x100000",
                                                         "--output-dir", "out"]),
        Case("export: --workspace -4", "export", TINY + ["--workspace", "-4", "--output-dir", "out"]),
        Case("export: --min-agreement 2", "export", TINY + ["--fp16", "--min-agreement", "2", "--output-dir", "out"]),
        Case("export: --int8 --calib text file", "export", TINY + ["--int8", "--calib", "file.txt", "--output-dir",
                                                                    "out"], ["file"]),
        Case("export: --name ../../x", "export", TINY + ["--name", "../../x", "--output-dir", "out/a"]),
        Case("export: SIGTERM during re-export", "export", TINY + ["--output-dir", "out", "--name", "m",
                                                                    "--no-engine"],
             ["export"], signal_after=(signal.SIGTERM, -6), watch=["out/m.onnx", "out/m.json"]),
        # ----------------------------------------------------------------------------- lrformer-bench
        Case("bench: --model X.json, .onnx missing", "bench", ["--model", "m.json", "--iterations", "2"],
             ["orphan-manifest"]),
        Case("bench: --model corrupt .onnx", "bench", ["--model", "corrupt.onnx"], ["corrupt"]),
        Case("bench: --backend tensorrt without TensorRT", "bench", TINY + ["--backend", "tensorrt"]),
        Case("bench: --iterations 0", "bench", TINY + ["--iterations", "0"]),
    ]


# ------------------------------------------------------------------------------------------ inputs
def long_video(work: Path) -> Path:
    if SHARED_VIDEO.is_file():
        return SHARED_VIDEO
    out = work / "scenes-x4.mp4"
    if out.is_file():
        return out
    cap = cv2.VideoCapture(str(SYNTHETIC_VIDEO))
    frames = []
    while (frame := cap.read()[1]) is not None:
        frames.append(frame)
    cap.release()
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 12.0, (w, h))
    for _ in range(4):
        for frame in frames:
            writer.write(frame)
    writer.release()
    return out


def run_cmd(command: str, args: list[str], cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"lrformer_deploy.cli.{command}", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def prepare(name: str, folder: Path, env: dict) -> None:
    from lrformer_deploy.build.demo import default_model

    if name == "empty":
        (folder / "empty.mp4").write_bytes(b"")
    elif name == "notes":
        (folder / "notes.mp4").write_text("not a video\n")
    elif name == "corrupt":
        (folder / "corrupt.onnx").write_bytes(os.urandom(4096))
    elif name == "file":
        (folder / "file.txt").write_text("a plain file\n")
    elif name == "tampered":
        demo = default_model()
        shutil.copy(demo, folder / "m.onnx")
        shutil.copy(demo.with_suffix(".json"), folder / "m.json")
        with open(folder / "m.onnx", "ab") as f:
            f.write(b"\0")  # what an interrupted re-export or a partial copy leaves
    elif name == "earlier":
        writer = cv2.VideoWriter(str(folder / "out.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
        for i in range(7):
            writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
        writer.release()
    elif name == "badlabels":
        from lrformer_deploy.data import synthetic

        root = synthetic.write_dataset(folder / "data", 0, 2, size=(256, 448), seed=1)
        label = root / "annotations" / "val" / "scene_000000.png"
        small = cv2.resize(cv2.imread(str(label), cv2.IMREAD_UNCHANGED), (224, 128), interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(label), small)
    elif name == "export":
        proc = run_cmd("export", TINY + ["--output-dir", "out", "--name", "m", "--no-engine"], folder, env)
        if proc.returncode != 0:
            raise RuntimeError(f"setup export failed: {proc.stderr.strip()[-300:]}")
    elif name == "orphan-manifest":
        demo = default_model()
        shutil.copy(demo.with_suffix(".json"), folder / "m.json")
        data = json.loads((folder / "m.json").read_text())
        data["artifacts"]["onnx"]["file"] = "m.onnx"  # named, but not there
        (folder / "m.json").write_text(json.dumps(data))
    else:
        raise ValueError(name)


# ------------------------------------------------------------------------------------------ running
def snapshot(folder: Path) -> dict[str, str]:
    out = {}
    for p in folder.rglob("*"):
        if p.is_file():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def frames_of(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.isOpened() and cap.read()[0]:
        n += 1
    cap.release()
    return n


def describe(path: Path, rel: str) -> str:
    if path.suffix in (".mp4", ".avi", ".mkv", ".mov"):
        n = frames_of(path)
        return f"{rel} ({n} frames)" if n else f"{rel} (NOT PLAYABLE)"
    if path.suffix == ".json" and path.parent.name == "out":
        try:  # an export's manifest: does it vouch for the graph beside it?
            from lrformer_deploy.manifest import sha256_file

            rec = json.loads(path.read_text())["artifacts"]["onnx"]
            graph = path.parent / rec["file"]
            ok = graph.is_file() and sha256_file(graph) == rec["sha256"]
            return f"{rel} ({'matches its graph' if ok else 'DOES NOT MATCH its graph'})"
        except (OSError, ValueError, KeyError, TypeError):
            return rel
    return rel


def kept(folder: Path, before: dict[str, str], after: dict[str, str], watch: list[str], tmp: Path) -> str:
    new = sorted(set(after) - set(before))
    changed = sorted(k for k in set(after) & set(before) if after[k] != before[k])
    removed = sorted(set(before) - set(after))
    hidden = [k for k in new if any(part.startswith(".") for part in Path(k).parts)
              and not k.startswith("tmp/")]
    parts = []
    masks = [k for k in new if k.startswith("masks/")]
    shown = [k for k in new if k not in hidden and k not in masks and not k.startswith("tmp/")]
    if shown:
        parts.append("new " + ", ".join(describe(folder / k, k) for k in shown[:4]) + (" ..." if len(shown) > 4 else ""))
    if masks:
        parts.append(f"{len(masks)} masks")
    for k in watch:
        if k in before:
            state = "REMOVED" if k in removed else ("CHANGED" if k in changed else "unchanged")
            parts.append(f"earlier {k} {state}")
            if k in after and k.endswith(".json"):
                parts[-1] += " " + describe(folder / k, "").strip()
    other = [k for k in changed + removed if k not in watch and not k.startswith("tmp/")]
    if other:
        parts.append("changed/removed " + ", ".join(other[:3]))
    if hidden:
        parts.append("LEFTOVER " + ", ".join(hidden[:3]))
    leaked = [p.name for p in tmp.iterdir() if not p.name.startswith(FOREIGN_TMP)] if tmp.is_dir() else []
    if leaked:
        parts.append("LEFTOVER in TMPDIR " + ", ".join(leaked[:3]))
    return "; ".join(parts) or "nothing written"


def wait_then_signal(proc: subprocess.Popen, sig: int, when: int) -> bytes:
    """Signal after `when` frames on the progress line (when > 0) or after -when seconds."""
    seen = b""
    deadline = time.monotonic() + 240
    start = time.monotonic()
    os.set_blocking(proc.stderr.fileno(), False)
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            chunk = os.read(proc.stderr.fileno(), 4096)
        except BlockingIOError:
            chunk = b""
        seen += chunk or b""
        if when < 0 and time.monotonic() - start >= -when:
            break
        if when > 0 and seen:
            # lrformer-infer's tqdm bar: "segment:  12%|█▏  | 45/377 [00:02<00:15, 21.9frame/s]"
            done = [int(n) for n in re.findall(rb"segment: +\d+%\|[^|]*\| *(\d+)/\d+ \[", seen)]
            if done and max(done) >= when:
                break
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(sig)
    os.set_blocking(proc.stderr.fileno(), True)
    return seen


def first_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.replace("\r", "\n").splitlines() if ln.strip()]
    # The progress line is not what the user is told; the first message after it is.
    msgs = [ln for ln in lines if not re.match(r"segment: +\d+%\|", ln)]
    # Notes ("note: random weights") come first for some commands; the verdict is the error/interrupt line.
    verdict = [ln for ln in msgs if ln.startswith(("error", "interrupted", "Traceback"))]
    return (verdict or msgs or lines or [""])[0]


def run_case(case: Case, folder: Path, video: Path, env: dict) -> tuple[int | str, str, str]:
    folder.mkdir(parents=True)
    tmp = folder / "tmp"
    tmp.mkdir()
    env = dict(env, TMPDIR=str(tmp))
    for name in case.setup:
        prepare(name, folder, env)
    args = [a.format(video=video) for a in case.args]
    before = snapshot(folder)
    if case.signal_after is None:
        proc = run_cmd(case.command, args, folder, env)
        code, stderr, stdout = proc.returncode, proc.stderr, proc.stdout
    else:
        stdout = ""
        sig, when = case.signal_after
        p = subprocess.Popen([sys.executable, "-m", f"lrformer_deploy.cli.{case.command}", *args], cwd=folder,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            if case.second_writer is not None:
                seen = b""
                # Wait for the first writer to be under way, then start the second on the same output.
                while p.poll() is None and b" frames" not in seen:
                    seen += os.read(p.stderr.fileno(), 256)
                second = run_cmd(case.command, [a.format(video=video) for a in case.second_writer], folder, env)
                p.send_signal(sig)
                p.communicate(timeout=120)
                code, stderr = second.returncode, second.stderr
            else:
                seen = wait_then_signal(p, sig, when)
                rest = p.communicate(timeout=120)[1]
                code, stderr = p.returncode, (seen + rest).decode(errors="replace")
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    after = snapshot(folder)
    if case.command == "eval" and code == 0:
        try:
            m = json.loads(stdout)["models"][0]
            return code, first_line(stderr), (f"nothing written; mIoU {100 * m['mIoU']:.2f} on {m['images']} "
                                               f"scenes, model input {m['input_size']}")
        except (ValueError, KeyError, IndexError):
            return code, first_line(stderr), "nothing written (report on stdout)"
    return code, first_line(stderr), kept(folder, before, after, case.watch, tmp)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("export", "infer", "info", "eval", "bench"), help="one command's cases")
    ap.add_argument("--keep", type=Path, help="keep the case folders here")
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               PYTHONUNBUFFERED="1")
    from lrformer_deploy.build.demo import default_model

    default_model()  # export the demo once, before anything is timed or interrupted
    rows = []
    with tempfile.TemporaryDirectory(prefix="lrformer-bad-inputs-") as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        video = long_video(work)
        selected = [c for c in cases() if args.only in (None, c.command)]
        for i, case in enumerate(selected):
            t0 = time.monotonic()
            try:
                code, line, what = run_case(case, work / f"case{i:02d}", video, env)
            except Exception as exc:  # noqa: BLE001 - a broken case is a row, not the end of the table
                code, line, what = "?", f"(case failed: {exc.__class__.__name__}: {exc})", ""
            rows.append((case.name, str(code), line[:110], what[:150]))
            print(f"[{i + 1}/{len(selected)}] {case.name}: exit {code} ({time.monotonic() - t0:.0f}s)",
                  file=sys.stderr, flush=True)
    widths = [max(len(r[k]) for r in rows + [("case", "exit", "first stderr line", "what was kept")])
              for k in range(4)]
    header = ("case", "exit", "first stderr line", "what was kept")
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
