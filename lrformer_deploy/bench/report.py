"""The benchmark's report: one row per backend/precision, the agreement column, the text table.

`agreement` compares a row's first output with the reference row's (class ids, or argmax of logits);
`make_report` is what `lrformer-bench --json` prints, `format_report` the table.
"""
from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING, Any

import numpy as np

from lrformer_deploy.bench.timing import summarize
from lrformer_deploy.cpus import cpu_name

if TYPE_CHECKING:
    from lrformer_deploy.bench.plan import Source
    from lrformer_deploy.bench.rows import Row

FOOTNOTE = ("speedup = torch-eager median / row median (same input, same threads, interleaved rounds). "
            "ONNX Runtime on a CPU has no native FP16 kernels on most processors, so the FP16 graph is "
            "typically slower than FP32 here; ONNX Runtime keeps most Convs of the INT8 graph in FP32, OpenVINO "
            "runs it with u8 convolutions (openvino-int8) and bf16 on CPUs with AVX512-BF16/AMX (docs/cpu.md). "
            "The FP16 graphs are meant for the GPU (TensorRT).")


AGREE_NOTE = ("speedup/agree(torch) = vs torch-eager; vs fp32/agree(fp32) = vs ONNX Runtime running the FP32 graph. "
              "agree(...) = fraction of mask pixels equal on this benchmark's input; a note's "
              "'build check vs the FP32 graph' is another figure: the reduced graph against the FP32 graph on "
              "frames held out from calibration.")


def as_mask(output: Any) -> np.ndarray:
    """Class ids from a mask output (N x H x W) or from logits (N x C x h x w -> argmax)."""
    if isinstance(output, dict):  # runner outputs: {name: array}, one output per graph here
        output = next(iter(output.values()))
    arr = output.numpy() if hasattr(output, "numpy") else np.asarray(output)
    return arr.argmax(axis=1) if arr.ndim == 4 else arr


def agreement(a: Any, b: Any) -> float | None:
    """Fraction of pixels with the same class id; None when the outputs are not comparable."""
    ma, mb = as_mask(a), as_mask(b)
    if ma.shape != mb.shape:
        return None
    return float((ma == mb).mean())


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for mod in ("numpy", "onnxruntime", "openvino", "torch"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return versions




def make_report(src: Source, rows: list[Row], compare: bool, threads: int, warmup: int, iterations: int,
            duration: float | None, wall: float, seed: int) -> dict:
    reference = next((r for r in rows if r.name == "torch-eager" and r.skipped is None), None)
    ref_median = float(np.median(reference.latencies_ms)) if reference else None
    # CPU precisions are judged against the FP32 graph on ONNX Runtime (the same graph torch is exported to)
    fp32 = next((r for r in rows if r.name == "ort-fp32" and r.skipped is None), None)
    fp32_median = float(np.median(fp32.latencies_ms)) if fp32 else None
    table = []
    for t in rows:
        row: dict[str, Any] = {"name": t.name, "backend": t.backend, "precision": t.precision, "device": t.device}
        if t.skipped is not None:
            row.update(status="skipped", reason=t.skipped)
        else:
            row.update(status="ok", **summarize(t.latencies_ms, src.batch))
            if compare:
                row["speedup_vs_torch"] = ref_median / row["median_ms"] if ref_median else None
                row["agreement_vs_torch"] = (agreement(t.first_output, reference.first_output)
                                             if reference is not None else None)
                row["speedup_vs_ort_fp32"] = fp32_median / row["median_ms"] if fp32_median else None
                row["agreement_vs_ort_fp32"] = (agreement(t.first_output, fp32.first_output)
                                                if fp32 is not None else None)
        if t.note:
            row["note"] = t.note
        table.append(row)
    return {
        "tool": "lrformer-bench", "mode": "compare" if compare else "single", "model": src.label,
        "input": {"size": list(src.size), "batch": src.batch, "head": src.head,
                  "data": f"synthetic scene(s), seed {seed}, same array for every backend"},
        "threads": threads, "warmup": warmup,
        "iterations": None if duration else iterations, "duration_s": duration,
        "schedule": "interleaved rounds, rotated order" if compare else "sequential",
        "wall_s": wall, "cpu": cpu_name(), "cores": os.cpu_count(), "tools": tool_versions(),
        "rows": table, "footnote": FOOTNOTE if compare else None,
    }


def format_report(report: dict) -> str:
    inp = report["input"]
    lines = [f"model: {report['model']}  input {inp['size'][0]}x{inp['size'][1]}  batch {inp['batch']}  "
             f"head {inp['head']}  threads {report['threads']}",
             f"timing: {report['warmup']} warm-up, "
             + (f"{report['iterations']} iterations" if report["iterations"] else f"{report['duration_s']} s")
             + f" per backend, {report['schedule']}; cpu: {report['cpu']} ({report['cores']} cores)"]
    lines.append(f"thread wait: {report.get('thread_wait', '-')}")
    if report.get("other_processes_cores") is not None:
        lines.append(f"other processes used {report['other_processes_cores']:.2f} cores on average while timing")
    load = report.get("load_average") or {}
    if load.get("before"):
        lines.append("load average (1/5/15 min): before " + " ".join(f"{v:.2f}" for v in load["before"])
                     + ", after " + " ".join(f"{v:.2f}" for v in load["after"]))
    compare = report["mode"] == "compare"
    width = max([13] + [len(row["name"]) for row in report["rows"]])
    header = f"{'backend':<{width}} {'prec':<6} {'device':<6} {'median':>9} {'p95':>9} {'mean':>9} {'min':>9} {'img/s':>8}"
    if compare:
        header += f" {'speedup':>8} {'agree(torch)':>12} {'vs fp32':>8} {'agree(fp32)':>11}"
    lines += ["", header + "  (latency in ms)", "-" * len(header)]
    for row in report["rows"]:
        head = f"{row['name']:<{width}} {row['precision']:<6} {row['device']:<6}"
        if row["status"] == "skipped":
            lines.append(f"{head} skipped: {row['reason']}")
            continue
        text = (f"{head} {row['median_ms']:>9.2f} {row['p95_ms']:>9.2f} {row['mean_ms']:>9.2f} "
                f"{row['min_ms']:>9.2f} {row['throughput_ips']:>8.2f}")
        if compare:
            sp, ag = row.get("speedup_vs_torch"), row.get("agreement_vs_torch")
            text += f" {(f'{sp:.2f}x' if sp else '-'):>8} {(f'{ag:.4f}' if ag is not None else '-'):>12}"
            sp, ag = row.get("speedup_vs_ort_fp32"), row.get("agreement_vs_ort_fp32")
            text += f" {(f'{sp:.2f}x' if sp else '-'):>8} {(f'{ag:.4f}' if ag is not None else '-'):>11}"
        lines.append(text)
    notes = [f"  {row['name']}: {row['note']}" for row in report["rows"] if row.get("note")]
    if notes:
        lines += ["", "notes:"] + notes
    if report.get("warning"):
        lines += ["", "warning: " + report["warning"]]
    if report.get("footnote"):
        lines += ["", AGREE_NOTE, report["footnote"]]
    return "\n".join(lines)
