"""The streaming pipeline: decode -> preprocess -> infer -> postprocess -> draw/encode, overlapped.

Three worker threads joined by bounded queues, so memory stays flat however long the input:

    reader   decode + preprocess, groups frames into model-sized batches
    infer    runs the backend on each batch
    writer   maps masks back to frames, draws the overlay, encodes/saves

cv2, numpy and the backends release the GIL in their heavy parts, so the stages run in parallel.
The main thread only waits, prints the progress line and shows frames (--show); Ctrl-C, SIGTERM or SIGHUP
there (the CLIs turn the last two into KeyboardInterrupt) stops the workers, the writer thread releases the
video writer in a `finally`, and `Outputs.finish` keeps the playable partial file without destroying an
earlier complete one (see sinks.py).

Why ~510 lines in one module: the reader, inference and writer threads, the live-source slot and the
TensorRT overlap share one stop-and-failure protocol (a signal, a bad frame, a lost stream end them the
same way); sources.py, sinks.py and overlay.py hold what stands alone.
"""
from __future__ import annotations

import contextlib
import os
import queue
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from lrformer_deploy.errors import UserError
from lrformer_deploy.runtime.overlay import blend, palette_lut, with_legend_strip
from lrformer_deploy.runtime.preprocess import Geometry
from lrformer_deploy.runtime.sinks import Outputs
from lrformer_deploy.runtime.sources import Frame, Source

STAGES = ("decode", "preprocess", "infer", "postprocess", "encode")
_END = object()


@dataclass
class PipelineOptions:
    opacity: float = 0.5
    legend: bool = False  # a strip below each overlay naming the classes' colours (lrformer-infer's default)
    show: bool = False
    progress: bool = True
    queue_size: int = 4  # batches in flight between two stages
    progress_stream: TextIO | None = None  # default: sys.stderr
    # Live sources (webcam, a stream without a length): segment the newest frame and drop the stale ones,
    # so a result is about one inference old instead of a queue's worth. None = decide from the source
    # (Source.is_live); False keeps every frame, as for files.
    drop_stale: bool | None = None
    # With a backend that can (TensorRT: Segmenter.can_overlap), start batch k+1 before collecting batch k,
    # so its host->device copy overlaps k's execution. Off for live sources (one frame at a time anyway).
    # None = on unless LRFORMER_TRT_OVERLAP=0.
    overlap: bool | None = None


class Stats:
    """Per-stage busy time and per-frame latency (decode start -> written), with a bounded sample."""

    def __init__(self, max_samples: int = 20000) -> None:
        self.totals = dict.fromkeys(STAGES, 0.0)
        self.latencies: list[float] = []
        self.seen = 0
        self.max_samples = max_samples
        self._rng = random.Random(0)
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.totals[stage] += seconds

    def latency(self, seconds: float) -> None:
        # Reservoir sampling keeps percentiles honest on endless streams without growing memory.
        with self._lock:
            self.seen += 1
            if len(self.latencies) < self.max_samples:
                self.latencies.append(seconds)
            else:
                j = self._rng.randrange(self.seen)
                if j < self.max_samples:
                    self.latencies[j] = seconds


@dataclass
class PipelineResult:
    frames: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False
    wall_s: float = 0.0
    stats: Stats = field(default_factory=Stats)
    ended_early: tuple[int, int] | None = None  # (read, stated): the video ended before its stated length
    dropped: int = 0  # live sources: stale frames replaced by a newer one before they were segmented
    gaps: int = 0  # live streams: outages bridged by reconnecting
    stream_lost: bool = False  # live streams: stopped and did not come back within the reconnect time

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        n = max(self.frames, 1)
        lat = np.asarray(self.stats.latencies, dtype=np.float64) * 1000.0
        return {
            "frames": self.frames,
            "failed": [{"input": name, "error": err} for name, err in self.failed],
            "interrupted": self.interrupted,
            "dropped": self.dropped,
            "gaps": self.gaps,
            "stream_lost": self.stream_lost,
            "ended_early": ({"read": self.ended_early[0], "expected": self.ended_early[1]}
                            if self.ended_early else None),
            "wall_s": round(self.wall_s, 4),
            "fps": round(self.fps, 3),
            "stage_ms_per_frame": {k: round(v * 1000.0 / n, 3) for k, v in self.stats.totals.items()},
            "stage_total_s": {k: round(v, 4) for k, v in self.stats.totals.items()},
            "latency_ms": {
                "p50": round(float(np.percentile(lat, 50)), 3) if lat.size else None,
                "p95": round(float(np.percentile(lat, 95)), 3) if lat.size else None,
                "mean": round(float(lat.mean()), 3) if lat.size else None,
            },
        }


@dataclass
class _Batch:
    frames: list[Frame]
    starts: list[float]  # perf_counter when each frame's decode began
    tensor: np.ndarray | None = None
    geos: list[Geometry] = field(default_factory=list)
    output: np.ndarray | None = None


class Progress:
    """tqdm's bar on stderr, as every other long step of the project shows progress: frames done, total,
    percentage, live rate and time left. Printed whenever enabled (also into a pipe: scripts and tests read
    it); `--quiet` turns it off."""

    def __init__(self, total: int | None, stream: TextIO, enabled: bool, interval: float = 0.25) -> None:
        self.enabled = enabled
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total or None, desc="segment", unit="frame", file=stream, mininterval=interval,
                             dynamic_ncols=True, leave=True, disable=False)

    def update(self, done: int, force: bool = False) -> None:
        bar = self._bar
        if bar is None or done <= bar.n:
            return
        bar.update(done - bar.n)
        if force:
            bar.refresh()

    def finish(self, done: int) -> None:
        if self._bar is not None:
            self.update(done, force=True)
            self._bar.close()
            self._bar = None


class LatestFrame:
    """A one-frame slot between a live source and the pipeline: a new frame replaces one still waiting
    (counted in `dropped`), so at most one frame ever waits and what is taken is the newest."""

    def __init__(self) -> None:
        self._frame: Frame | None = None
        self._ended = False
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, frame: Frame) -> None:
        with self._cond:
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._cond.notify()

    def end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify()

    def take(self, stop: threading.Event) -> Frame | None:
        """The newest frame (waiting for one), or None once the source ended (and nothing waits) or on stop."""
        with self._cond:
            while self._frame is None and not self._ended and not stop.is_set():
                self._cond.wait(timeout=0.1)
            frame, self._frame = self._frame, None
            return frame

    @property
    def waiting(self) -> int:
        return 0 if self._frame is None else 1


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    while not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue
    return _END


def run_pipeline(segmenter: Any, source: Source, outputs: Outputs, options: PipelineOptions | None = None) -> PipelineResult:
    """Segment every frame of `source` with `segmenter`, writing to `outputs`. Returns counts and timings.

    KeyboardInterrupt (Ctrl-C) stops the run, closes the outputs (the partial video stays playable) and
    is re-raised; `result.interrupted` is set on the object attached to the exception as `.result`.
    """
    options = options or PipelineOptions()
    stream = options.progress_stream or sys.stderr
    result = PipelineResult()
    stats = result.stats
    stop = threading.Event()
    # The main thread waits on this event, never on Thread.join: a Ctrl-C that lands inside join() can
    # make CPython mark a still-running thread as finished (the bpo-45274 cleanup), so the writer would
    # be abandoned before it releases the video file.
    writer_done = threading.Event()
    errors: list[BaseException] = []
    batch_size = segmenter.batch_size
    to_infer: queue.Queue = queue.Queue(maxsize=options.queue_size)
    to_write: queue.Queue = queue.Queue(maxsize=options.queue_size)
    display: list[np.ndarray | None] = [None]  # latest overlay for --show (main thread draws)
    lut = palette_lut(segmenter.palette)
    draw = outputs.needs_overlay or options.show
    is_video = source.is_video
    live = source.is_live if options.drop_stale is None else options.drop_stale
    slot = LatestFrame() if live else None
    if live:
        # One batch waiting between stages at most; the reader takes a frame only once inference is free
        # (infer marks a batch done after running it), so a frame waits for no inference but its own.
        to_infer = queue.Queue(maxsize=1)
        to_write = queue.Queue(maxsize=1)

    def fail(exc: BaseException) -> None:
        errors.append(exc)
        stop.set()

    def decode_next(it) -> tuple[Frame | None, float]:
        """The source's next frame (None at its end) and when its decode started; decode time is counted."""
        t0 = time.perf_counter()
        frame = next(it, None)
        if frame is not None:
            stats.add("decode", time.perf_counter() - t0)
        return frame, t0

    def grabber() -> None:
        """Live sources: read the device continuously (it buffers, and stalls, if nobody reads), keeping only
        the newest frame in `slot`."""
        try:
            it = source.frames()
            while not stop.is_set():
                frame, _ = decode_next(it)
                if frame is None:
                    break
                if frame.captured is None:
                    frame.captured = time.perf_counter()
                slot.put(frame)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            fail(exc)
        finally:
            slot.end()

    def live_reader() -> None:
        try:
            while not stop.is_set():
                frame = slot.take(stop)
                if frame is None:
                    break
                batch = _Batch([frame], [frame.captured]) if frame.image is None else _prepare([frame], [frame.captured])
                if not _put(to_infer, batch, stop):
                    return
                # Wait until inference has run this batch before taking the next frame: a frame taken now
                # would only wait in the queue and be stale by the time it runs.
                while to_infer.unfinished_tasks and not stop.is_set():
                    time.sleep(0.001)
        except BaseException as exc:  # noqa: BLE001
            fail(exc)
        finally:
            _put(to_infer, _END, stop)

    def reader() -> None:
        if live:
            return live_reader()
        try:
            pending: list[Frame] = []
            starts: list[float] = []
            it = source.frames()
            while not stop.is_set():
                frame, t0 = decode_next(it)
                if frame is None:
                    break
                if frame.image is None:
                    # Undecodable image: passes through in order so the writer reports it.
                    if not _put(to_infer, _Batch([frame], [t0]), stop):
                        return
                    continue
                pending.append(frame)
                starts.append(t0)
                if len(pending) == batch_size:
                    if not _put(to_infer, _prepare(pending, starts), stop):
                        return
                    pending, starts = [], []
            if pending and not stop.is_set():
                _put(to_infer, _prepare(pending, starts), stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            fail(exc)
        finally:
            _put(to_infer, _END, stop)

    def _prepare(frames: list[Frame], starts: list[float]) -> _Batch:
        t0 = time.perf_counter()
        tensor, geos = segmenter.preprocessor.batch([f.image for f in frames], batch_size)
        stats.add("preprocess", time.perf_counter() - t0)
        return _Batch(frames, starts, tensor, geos)

    overlap = (options.overlap if options.overlap is not None else os.environ.get("LRFORMER_TRT_OVERLAP") != "0")
    overlap = overlap and not live and bool(getattr(segmenter, "can_overlap", False))

    def overlapped_infer() -> None:
        """submit(k+1) before collect(k): batch k+1's copy runs while batch k executes; order is kept."""
        pending: tuple[_Batch, Any, float] | None = None  # submitted, not yet collected

        def hand_over() -> bool:
            nonlocal pending
            batch, ticket, busy = pending
            pending = None
            t0 = time.perf_counter()
            batch.output = segmenter.collect(ticket)
            stats.add("infer", busy + time.perf_counter() - t0)
            return _put(to_write, batch, stop)

        try:
            while True:
                batch = _get(to_infer, stop)
                if batch is _END:
                    break
                ticket = None
                try:
                    if batch.tensor is not None:
                        t0 = time.perf_counter()
                        ticket = segmenter.submit(batch.tensor)
                        busy = time.perf_counter() - t0
                        batch.tensor = None
                finally:
                    to_infer.task_done()
                if pending is not None and not hand_over():
                    return
                if ticket is not None:
                    pending = (batch, ticket, busy)
                elif not _put(to_write, batch, stop):  # an unreadable image passes through, in order
                    return
            if pending is not None:
                hand_over()
        except BaseException as exc:  # noqa: BLE001
            fail(exc)
        finally:
            _put(to_write, _END, stop)

    def infer() -> None:
        if overlap:
            return overlapped_infer()
        try:
            while True:
                batch = _get(to_infer, stop)
                if batch is _END:
                    break
                try:
                    if batch.tensor is not None:
                        t0 = time.perf_counter()
                        batch.output = segmenter.infer(batch.tensor)
                        stats.add("infer", time.perf_counter() - t0)
                        batch.tensor = None  # free the input early
                finally:
                    to_infer.task_done()  # the live reader waits for this before taking the next frame
                if not _put(to_write, batch, stop):
                    return
        except BaseException as exc:  # noqa: BLE001
            fail(exc)
        finally:
            _put(to_write, _END, stop)

    def writer() -> None:
        try:
            while True:
                batch = _get(to_write, stop)
                if batch is _END:
                    break
                if batch.output is None:
                    for frame in batch.frames:
                        result.failed.append((str(frame.path or frame.stem), frame.error or "unreadable"))
                    continue
                t0 = time.perf_counter()
                masks = segmenter.postprocess(batch.output, batch.geos)
                t1 = time.perf_counter()
                stats.add("postprocess", t1 - t0)
                for frame, mask, start in zip(batch.frames, masks, batch.starts):
                    overlay = None
                    if draw:
                        overlay = blend(frame.image, mask, lut, options.opacity)
                        if options.legend:
                            overlay = with_legend_strip(overlay, mask, segmenter.class_names, lut)
                    outputs.write(frame, mask, overlay, is_video)
                    if options.show:
                        display[0] = overlay
                    result.frames += 1
                    stats.latency(time.perf_counter() - start)
                stats.add("encode", time.perf_counter() - t1)
        except BaseException as exc:  # noqa: BLE001
            fail(exc)
        finally:
            try:
                outputs.close()  # the video trailer gets written even when interrupted
            finally:
                writer_done.set()

    if options.show:
        open_window()
    outputs.open()
    progress = Progress(source.frame_count, stream, options.progress)
    threads = [threading.Thread(target=fn, name=f"lrformer-{fn.__name__}", daemon=True)
               for fn in ((grabber,) if live else ()) + (reader, infer, writer)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    outcome = "failed"
    try:
        while not writer_done.wait(timeout=0.05):
            progress.update(result.frames)
            if options.show and display[0] is not None:
                if _show(display[0]):
                    stop.set()  # 'q' or Esc in the window
                display[0] = None
        outcome = "interrupted" if errors and isinstance(errors[0], KeyboardInterrupt) else (
            "failed" if errors else "complete")
    except KeyboardInterrupt as exc:
        outcome = "interrupted"
        result.interrupted = True
        stop.set()
        writer_done.wait()  # let the writer release the file
        result.wall_s = time.perf_counter() - start
        progress.finish(result.frames)
        exc.result = result  # type: ignore[attr-defined]
        raise
    finally:
        stop.set()
        getattr(source, "interrupt", lambda: None)()  # a reconnect in progress stops waiting
        writer_done.wait()
        for t in threads:
            # Workers see `stop` within ~0.1 s; an inference call in flight finishes first.
            t.join(timeout=30.0)
        source.close()
        result.ended_early = source.ended_early
        result.dropped = slot.dropped if slot is not None else 0
        result.gaps, result.stream_lost = getattr(source, "gaps", 0), getattr(source, "lost", False)
        # A second signal must not strand the finished video under its temporary name.
        with _signals_deferred():
            outputs.finish(outcome)
    result.wall_s = time.perf_counter() - start
    progress.finish(result.frames)
    if errors:
        exc = errors[0]
        if isinstance(exc, KeyboardInterrupt):
            result.interrupted = True
            exc.result = result  # type: ignore[attr-defined]
        raise exc
    return result


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT/SIGTERM/SIGHUP until the block ends (main thread, POSIX); elsewhere a no-op."""
    sigs = {signal.SIGINT, signal.SIGTERM} | ({signal.SIGHUP} if hasattr(signal, "SIGHUP") else set())
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def open_window() -> None:
    import cv2

    try:
        cv2.namedWindow("lrformer", cv2.WINDOW_NORMAL)
    except cv2.error:
        raise UserError("--show needs an OpenCV build with GUI support (opencv-python, not opencv-python-headless)") from None


def _show(image: np.ndarray) -> bool:
    import cv2

    cv2.imshow("lrformer", image)
    return (cv2.waitKey(1) & 0xFF) in (ord("q"), 27)
