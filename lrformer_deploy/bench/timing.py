"""How rows are timed: warm-up, interleaved rounds in rotated order, statistics, and the machine's noise.

Every row is timed by the one loop in `measure`, whatever backend it holds, so PyTorch, ONNX Runtime and
TensorRT are measured the same way (each round runs every row once, starting one row later than the last
round, so a neighbour's load on a shared machine hits them all alike), with a pause between two rows.

Why the pause (SETTLE_S): after a run ONNX Runtime's intra-op threads spin-wait for more work (and other
runtimes' pools briefly too), so without a pause the row timed next shares the cores with them. Rotating
the order does not even this out: the rotation keeps the cyclic order, so the same row follows ONNX
Runtime in most rounds. Measured on LRFormer-T 512x512, 2 threads, AMD EPYC: OpenVINO f32 right after an
ONNX Runtime row took 147 ms, 129 ms with no ONNX Runtime in the process; a 10 ms pause was not enough
(129), 30 ms was (117, and ONNX Runtime itself 135 either way). A user's process runs one backend, whose
own spinning helps it: that is what the pause leaves in.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from lrformer_deploy.cpus import SETTLE_S  # pause between two rows of one round (see above); 0 turns it off

if TYPE_CHECKING:
    from lrformer_deploy.bench.rows import Row


def summarize(latencies_ms: Sequence[float], batch: int) -> dict[str, float]:
    """median, p95, mean, min, max (ms) and throughput in images/s (batch / mean latency)."""
    lat = np.asarray(latencies_ms, dtype=np.float64)
    if lat.size == 0:
        raise ValueError("no latencies measured")
    mean = float(lat.mean())
    return {"median_ms": float(np.median(lat)), "p95_ms": float(np.percentile(lat, 95)), "mean_ms": mean,
            "min_ms": float(lat.min()), "max_ms": float(lat.max()), "iterations": int(lat.size),
            "throughput_ips": batch * 1000.0 / mean}


def measure(rows: list[Row], x: np.ndarray, warmup: int, iterations: int | None, duration: float | None,
            settle_s: float = SETTLE_S) -> None:
    """Warm every row up, then time them in interleaved rounds (rotated order each round), pausing
    `settle_s` before each timed run when more than one row is timed (not counted in any latency).

    With `duration`, rounds continue until duration * len(rows) seconds have passed (so each backend gets
    about `duration` seconds of timed work); otherwise exactly `iterations` rounds.
    """
    live = [r for r in rows if r.skipped is None]
    for r in live:
        r.first_output = r.run(x)  # also the first warm-up call; kept for the agreement column
        for _ in range(max(0, warmup - 1)):
            r.run(x)
    deadline = None if duration is None else time.perf_counter() + duration * len(live)
    rounds = 0
    while True:
        if deadline is None and rounds >= (iterations or 1):
            break
        if deadline is not None and rounds >= 1 and time.perf_counter() >= deadline:
            break
        shift = rounds % len(live)
        for r in live[shift:] + live[:shift]:
            if settle_s > 0 and len(live) > 1:
                time.sleep(settle_s)
                if deadline is not None:
                    deadline += settle_s  # --duration is timed work, not pauses
            t0 = time.perf_counter_ns()
            r.run(x)
            r.latencies_ms.append((time.perf_counter_ns() - t0) / 1e6)
        rounds += 1


def apply_passive_wait() -> str:
    """Ask OpenMP (torch's thread pool) to sleep when idle instead of spin-waiting; a note on the effect.

    On a machine whose cores are busy with other work, spin-waiting threads at every parallel barrier
    wait for a descheduled sibling and multi-threaded PyTorch can get several times slower. The variable
    is read when the OpenMP runtime loads, i.e. at `import torch`.
    """
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if "torch" in sys.modules:
        return "OMP_WAIT_POLICY=PASSIVE set too late (torch already imported); export it before starting"
    return "OMP_WAIT_POLICY=PASSIVE (torch) and allow_spinning=0 (ONNX Runtime)"


def cpu_snapshot() -> tuple[float, float] | None:
    """(CPU-seconds busy on the whole machine, CPU-seconds used by this process); None off Linux."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait (guest is inside user)
    own = os.times()
    return busy / hz, own.user + own.system


def other_cores(before, after, wall: float) -> float | None:
    """Average cores other processes kept busy during the timing (a shared machine's noise)."""
    if before is None or after is None or wall <= 0:
        return None
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / wall)
