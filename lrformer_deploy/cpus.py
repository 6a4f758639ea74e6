"""How many CPUs this process may use: one answer for ONNX Runtime threads, calibration and local Ray."""
from __future__ import annotations

import os
from pathlib import Path

# Instruction-set flags (as /proc/cpuinfo names them) that give a CPU native bf16 arithmetic.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")

# Pause before each timed run when runs of different backends are interleaved: after a run ONNX Runtime's
# threads spin-wait for more work and the next backend timed would share the cores with them (measured in
# lrformer_deploy/bench/timing.py's docstring). Used by lrformer-bench and the export's CPU backend choice.
SETTLE_S = 0.05


def usable_cpus() -> int:
    """CPUs in this process's affinity set (`taskset`, container cpusets), else all the OS reports."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS / Windows
        return max(1, os.cpu_count() or 1)


def cpu_name() -> str:
    """The processor's model name (benchmarks and manifests name the CPU their numbers come from)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> frozenset[str]:
    """The first processor's feature flags from /proc/cpuinfo; empty where there is none (macOS, Windows)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def bf16_missing(flags: frozenset[str] | set[str] | None = None) -> str | None:
    """Why this CPU cannot run bf16 fast (no AVX512-BF16, no AMX), else None. `flags` overrides the CPU's."""
    have = cpu_flags() if flags is None else frozenset(flags)
    if any(f in have for f in BF16_FLAGS):
        return None
    return "this CPU has no bf16 instructions (neither AVX512-BF16 nor AMX in /proc/cpuinfo flags)"
