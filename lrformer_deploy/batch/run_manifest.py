"""The run manifest: one record per input (input, kind, output, frames, status, error) in DIR/manifest.json.

Rewritten atomically (temp file + rename) while the job runs and when it ends or is interrupted, so it is
always a complete JSON document. `--resume` reads the previous one: an input is finished when all its
outputs exist (every output file is itself written atomically, so existing means complete); a video
also needs its frame count from a `done` record. Finished inputs are skipped and keep their records.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lrformer_deploy.atomic import write_text
from lrformer_deploy.batch.inputs import Item
from lrformer_deploy.batch.outputs import Layout
from lrformer_deploy.errors import UserError

FORMAT = "lrformer-batch-run"
VERSION = 1


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_previous(path: Path) -> dict[str, dict[str, Any]]:
    """Records of an earlier run by input path; {} when there is none."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the previous run manifest {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path} is not an lrformer-batch run manifest")
    return {str(r.get("input")): r for r in data.get("inputs", []) if isinstance(r, dict)}


def finished(item: Item, previous: dict[str, Any] | None, layout: Layout) -> bool:
    """Whether `item`'s outputs from an earlier run are complete, so --resume can skip it."""
    if item.error:
        return False
    if item.kind == "image":
        return layout.complete("image", item.stem, 1)
    if not previous or previous.get("status") != "done":
        return False
    return layout.complete("video", item.stem, int(previous.get("frames") or 0))


class RunManifest:
    def __init__(self, layout: Layout, items: list[Item], header: dict[str, Any]) -> None:
        self.layout = layout
        self.header = header
        self.created = _now()
        self.records: dict[str, dict[str, Any]] = {}
        for item in items:
            self.records[item.path] = {
                "input": item.path, "kind": item.kind,
                "output": layout.outputs(item.kind, item.stem, item.frames),
                "frames": 0, "status": "pending", "error": None,
            }
        self.summary: dict[str, Any] = {}
        self._last_save = 0.0
        self._save_cost = 0.0

    def set(self, item: Item, status: str, frames: int = 0, error: str | None = None, **extra: Any) -> None:
        record = self.records[item.path]
        record.update(status=status, frames=int(frames), error=error, **extra)

    def status_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.records.values():
            counts[record["status"]] = counts.get(record["status"], 0) + 1
        return counts

    def save(self) -> None:
        t0 = time.perf_counter()
        data = {"format": FORMAT, "version": VERSION, **self.header, "created": self.created, "updated": _now(),
                "summary": self.summary, "counts": self.status_counts(), "inputs": list(self.records.values())}
        write_text(self.layout.manifest, json.dumps(data, indent=1) + "\n")
        self._last_save = time.perf_counter()
        self._save_cost = self._last_save - t0

    def save_every(self, seconds: float = 2.0) -> None:
        """Save if `seconds` passed since the last save; never spend more than ~5% of the time saving
        (a manifest of millions of inputs takes a while to write)."""
        if time.perf_counter() - self._last_save >= max(seconds, 20 * self._save_cost):
            self.save()
