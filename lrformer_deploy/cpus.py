"""How many CPUs this process may use: one answer for ONNX Runtime threads, calibration and local Ray."""
from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs in this process's affinity set (`taskset`, container cpusets), else all the OS reports."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS / Windows
        return max(1, os.cpu_count() or 1)
