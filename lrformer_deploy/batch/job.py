"""The Ray side of a batch job: start or join Ray, size the actors, build the Ray Data pipeline, and
follow its results into the run manifest.

    images: read_binary_files(paths) -> map_batches(decode_images)        (tasks)  \
                                                                                   union -> map_batches(BatchSegmenter,
    videos: from_items(frame ranges) -> map_batches(decode_video_ranges)  (tasks)  /     ActorPoolStrategy(size=N))
    then, per video once all its ranges are segmented: one task encodes the overlay video in order.

Decoding runs in tasks, not in the actors, so on a GPU node the actors only feed the GPU; the decode
stage gets a `ray_remote_args_fn` so Ray Data does not fuse it into the actor stage.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import secrets
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from lrformer_deploy.batch.inputs import TASK_BYTES, Item
from lrformer_deploy.batch.outputs import WORK, Layout, assemble_overlay_video, overlay_name
from lrformer_deploy.batch.run_manifest import RunManifest
from lrformer_deploy.batch.stages import BatchSegmenter, decode_images, decode_video_ranges
from lrformer_deploy.cpus import usable_cpus
from lrformer_deploy.errors import UserError

# FFmpeg/OpenCV print their own warnings for broken inputs; the manifest and our stderr lines say it once.
# A decode worker: Python with numpy/OpenCV/pyarrow loaded (~200 MB RSS measured) and its frames in flight.
WORKER_BYTES = 256 << 20
QUIET_DECODERS = {"OPENCV_FFMPEG_LOGLEVEL": "-8", "OPENCV_LOG_LEVEL": "ERROR"}


_TERM_SIGNALS = tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class JobFailed(Exception):
    """Ray could not run the pipeline (Ray did not start, an actor could not start, a task failed)."""


@dataclass
class JobOptions:
    model: str
    backend: str = "auto"
    device: str | None = None
    resize: str = "stretch"
    input_size: tuple[int, int] | None = None
    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float = 0.0
    cpus_per_actor: float | None = None
    threads: int | None = None
    batch_size: int = 16
    opacity: float = 0.5
    legend: bool = False
    progress: bool = True
    palette: tuple = ()
    class_names: tuple = ()
    max_pixels: int | None = None  # images declaring more are failed undecoded


@dataclass
class Sizing:
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    read_cpus: float  # what each read/decode/overlay task asks for
    threads: int | None  # ONNX Runtime intra-op threads per actor


@dataclass
class JobResult:
    frames: int = 0
    wall_s: float = 0.0
    ray_start_s: float = 0.0
    failed: list[tuple[str, str]] = field(default_factory=list)
    sizing: Sizing | None = None


def start_ray(address: str | None, progress: bool) -> float:
    """ray.init, quietly; returns the seconds it took. A local instance gets a fresh token for this run
    in the environment (token authentication stays on, but nothing is written to ~/.ray and Ray does not
    warn); a cluster (`address`) keeps whatever authentication it was set up with."""
    os.environ.update({k: os.environ.get(k, v) for k, v in QUIET_DECODERS.items()})
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address is None:
        if "RAY_AUTH_MODE" not in os.environ:
            # Ray reads this when it is first imported, so it must be set before `import ray`.
            if "ray" in sys.modules:
                raise RuntimeError("start_ray() must run before Ray is imported (it sets RAY_AUTH_MODE)")
            os.environ["RAY_AUTH_MODE"] = "token"
            os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
        kwargs["include_dashboard"] = False
        # A local instance is a one-machine cluster: with this (read at import) Ray addresses its processes
        # on the loopback instead of the machine's network address.
        if "ray" not in sys.modules:
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        kwargs["num_cpus"] = usable_cpus()  # the count plan_resources checked before Ray started
    else:
        # Workers on other machines do not inherit this process's environment.
        kwargs["runtime_env"] = {"env_vars": dict(QUIET_DECODERS)}
    import ray
    import ray.data

    # ray.init installs Ray's own fatal-signal handler for SIGTERM (it aborts the process); keep ours, which
    # unwinds through `finally` blocks so the manifest is written and Ray is shut down.
    handlers = {sig: signal.getsignal(sig) for sig in _TERM_SIGNALS} if _main_thread() else {}
    t0 = time.perf_counter()
    try:
        ray.init(address=address, **kwargs)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, AuthenticationError...
        ray.shutdown()
        if address:  # a wrong address or token is the user's to fix: one line, exit 2
            raise UserError(f"cannot connect to the Ray cluster at {address}: {_ray_error(exc)}") from None
        raise JobFailed(f"cannot start Ray: {_ray_error(exc)}") from None
    took = time.perf_counter() - t0
    for sig, handler in handlers.items():
        if callable(handler):
            signal.signal(sig, handler)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.enable_operator_progress_bars = progress
    ctx.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # Ray Data warns that progress bars are off whenever they are (--quiet, or stderr not a terminal).
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    return took


def plan_resources(cpus: float, gpus: float, opts: JobOptions, local: bool) -> Sizing:
    """How many actors, and what each asks for, so that Ray's read tasks always find a CPU.

    Ray Data gives the actor pool its CPUs first; if the actors hold every CPU slot the read tasks are
    never scheduled and the job waits forever (seen with Ray 2.60 on 2 cores: two actors with one CPU
    each). So one CPU (half of one on a single-core machine) plus an eighth of the cluster stays free for
    reading and decoding, and explicit settings that would break this are refused up front.
    """
    read_cpus = 1.0 if cpus >= 2 else max(cpus / 2, 0.1)
    if opts.gpus_per_actor > 0:
        if gpus <= 0:
            raise UserError(f"--gpus-per-actor {opts.gpus_per_actor:g}: the Ray cluster has no GPUs")
        cpa = opts.cpus_per_actor or 1.0
        actors = opts.actors or max(1, int(gpus // opts.gpus_per_actor + 1e-9))
        if actors * opts.gpus_per_actor > gpus + 1e-9:
            raise UserError(f"{actors} actors x {opts.gpus_per_actor:g} GPU need more than the cluster's {gpus:g} GPUs")
    else:
        cpa = opts.cpus_per_actor or (1.0 if cpus >= 2 else read_cpus)
        reserve = max(read_cpus, math.ceil(cpus / 8))
        actors = opts.actors or max(1, int((cpus - reserve) // cpa + 1e-9))
    if actors * cpa + read_cpus > cpus + 1e-9:
        raise UserError(f"{actors} actors x {cpa:g} CPUs leave less than {read_cpus:g} of the cluster's {cpus:g} CPUs "
                        "for Ray's read tasks, so the job would hang: lower --actors or --cpus-per-actor")
    threads = opts.threads
    if threads is None and opts.gpus_per_actor <= 0:
        # ONNX Runtime on the CPU: locally, share the machine's cores between the actors (the decode tasks
        # are light next to the model); on a cluster the per-node split is unknown, so use the actor's CPUs.
        threads = max(1, int(cpus // actors)) if local else max(1, int(cpa))
    return Sizing(actors=actors, cpus_per_actor=cpa, gpus_per_actor=opts.gpus_per_actor, read_cpus=read_cpus,
                  threads=threads)


def build_dataset(items: list[Item], layout: Layout, opts: JobOptions, sizing: Sizing,
                  run_started: float | None = None):
    """The Ray Data pipeline for `items` (inputs without errors, not yet finished)."""
    import ray.data

    # The decode stage also asks for the memory a task's decoded frames take: besides being true, the
    # request differs from the actors', which keeps Ray Data from fusing decoding into the actor stage.
    read_args = {"num_cpus": sizing.read_cpus, "memory": WORKER_BYTES + 2 * TASK_BYTES}
    images = [it.path for it in items if it.kind == "image"]
    ranges = [{"path": it.path, "stem": it.stem, "start": s, "count": c, "total": it.frames}
              for it in items if it.kind == "video" for s, c in it.ranges]
    parts = []
    if images:
        blocks = max(1, min(len(images), math.ceil(len(images) / opts.batch_size)))
        ds = ray.data.read_binary_files(images, include_paths=True, override_num_blocks=blocks, **read_args)
        parts.append(ds.map_batches(decode_images, batch_size=opts.batch_size,
                                    fn_kwargs={"max_pixels": opts.max_pixels}, **read_args))
    if ranges:
        ds = ray.data.from_items(ranges, override_num_blocks=len(ranges))
        parts.append(ds.map_batches(decode_video_ranges, batch_size=1, **read_args))
    ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    kwargs = {"model": opts.model, "backend": opts.backend, "device": opts.device, "resize": opts.resize,
              "input_size": opts.input_size, "threads": sizing.threads, "output_dir": str(layout.root),
              "save_mask": layout.save_mask, "overlay": layout.overlay, "opacity": opts.opacity,
              "legend": opts.legend, "run_started": run_started}
    if sizing.gpus_per_actor > 0 and opts.device in (None, "auto"):
        kwargs["device"] = "cuda"  # Ray sets CUDA_VISIBLE_DEVICES per actor: its GPU is device 0
    return ds.map_batches(
        BatchSegmenter,
        fn_constructor_kwargs=kwargs,
        compute=ray.data.ActorPoolStrategy(size=sizing.actors),
        batch_size=opts.batch_size,
        num_cpus=sizing.cpus_per_actor,
        num_gpus=sizing.gpus_per_actor or None,
        # An actor that dies (OOM killer, SIGKILL, a lost node) is restarted and its batches retried, without
        # limit: Ray Data's defaults, stated here because the outputs rely on them (BatchSegmenter does not
        # write an output twice when a retried batch was partly written; see run_started).
        max_restarts=-1,
        max_task_retries=-1,
    )


class _VideoState:
    def __init__(self, item: Item) -> None:
        self.item = item
        self.pending = {start for start, _ in item.ranges}
        self.rows: dict[int, int] = {}
        self.frames = 0
        self.last_index = -1
        self.error: str | None = None
        self.error_index = -1


def _ray_error(exc: BaseException) -> str:
    text = str(exc)
    m = re.findall(r"UserError: (.+)", text)
    if m:
        raise UserError(m[-1].strip()) from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else exc.__class__.__name__)[:400]


def run_job(todo: list[Item], layout: Layout, manifest: RunManifest, opts: JobOptions,
            stderr=sys.stderr) -> JobResult:
    """Run the pipeline over `todo`, recording every input in `manifest`. Ray is started (or joined)
    here and shut down (or disconnected) before returning, also on errors and interrupts."""
    result = JobResult()
    result.ray_start_s = start_ray(opts.address, opts.progress)
    import ray

    try:
        resources = ray.cluster_resources()
        sizing = plan_resources(float(resources.get("CPU", 0)), float(resources.get("GPU", 0)), opts,
                                local=opts.address is None)
        result.sizing = sizing
        _run(todo, layout, manifest, opts, sizing, result, stderr)
    finally:
        manifest.save()
        ray.shutdown()
        # This job's workers are gone now (the output lock keeps other writers out): an atomic write that a
        # killed worker never finished is garbage, even when a retry wrote the file itself.
        layout.remove_stale_temporaries()
    return result


def _run(todo: list[Item], layout: Layout, manifest: RunManifest, opts: JobOptions, sizing: Sizing,
         result: JobResult, stderr) -> None:
    import ray

    by_path = {it.path: it for it in todo}
    videos = {it.path: _VideoState(it) for it in todo if it.kind == "video"}
    assemble = ray.remote(num_cpus=sizing.read_cpus, max_retries=1)(assemble_overlay_video)
    assembling: dict[Any, _VideoState] = {}
    t0 = time.perf_counter()

    def fail(item: Item, error: str, frames: int = 0) -> None:
        manifest.set(item, "failed", frames, error)
        result.failed.append((item.path, error))
        print(f"error: {item.path}: {error}", file=stderr)
        if item.kind == "video" and not layout.save_mask:
            shutil.rmtree(layout.frame_mask_dir(item.stem), ignore_errors=True)

    def video_done(state: _VideoState) -> None:
        item = state.item
        if state.error:
            fail(item, state.error, state.frames)
        elif layout.overlay:
            ref = assemble.remote(item.path, str(layout.frame_mask_dir(item.stem)), item.stem, state.frames,
                                  str(layout.overlay_dir / overlay_name(item.stem, True)), item.fps, opts.palette,
                                  opts.opacity, opts.legend, opts.class_names, not layout.save_mask)
            assembling[ref] = state
        else:
            manifest.set(item, "done", state.frames)

    def collect(timeout: float) -> None:
        while assembling:
            ready, _ = ray.wait(list(assembling), num_returns=1, timeout=timeout)
            if not ready:
                return
            state = assembling.pop(ready[0])
            try:
                ray.get(ready[0])
                manifest.set(state.item, "done", state.frames)
            except Exception as exc:  # noqa: BLE001 - reported per input
                fail(state.item, f"overlay video: {_ray_error(exc)}", state.frames)

    ds = build_dataset(todo, layout, opts, sizing, run_started=time.time())
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for path, kind, index, error, start, rows in zip(batch["path"], batch["kind"], batch["index"],
                                                             batch["error"], batch["range_start"],
                                                             batch["range_rows"]):
                path, error = str(path), str(error)
                if kind == "image":
                    item = by_path.get(path) or by_path.get(os.path.abspath(path))
                    if item is None:  # a path Ray's reader spelled differently: found "pending" below
                        continue
                    if error:
                        fail(item, error)
                    else:
                        manifest.set(item, "done", 1)
                        result.frames += 1
                    continue
                state = videos[path]
                if error:
                    # Ranges finish out of order: report the earliest broken frame.
                    if state.error is None or int(index) < state.error_index:
                        state.error, state.error_index = error, int(index)
                else:
                    state.frames += 1
                    result.frames += 1
                start = int(start)
                state.rows[start] = state.rows.get(start, 0) + 1
                if state.rows[start] == int(rows):
                    state.pending.discard(start)
                    if not state.pending:
                        video_done(state)
            collect(0)
            manifest.save_every()
    except (KeyboardInterrupt, UserError):
        raise
    except Exception as exc:  # noqa: BLE001 - a Ray failure: the job stops, the manifest says what is done
        raise JobFailed(f"the Ray job failed: {_ray_error(exc)}") from None
    collect(None)
    result.wall_s = time.perf_counter() - t0
    for state in videos.values():
        if state.pending:  # the pipeline ended without all of this video's frames
            fail(state.item, "incomplete: some frame ranges produced no result", state.frames)
    for item in todo:
        if manifest.records[item.path]["status"] == "pending":
            fail(item, "no result came back from the pipeline")
    with contextlib.suppress(OSError):
        (layout.root / WORK).rmdir()  # temporary video masks: gone once every overlay is written
