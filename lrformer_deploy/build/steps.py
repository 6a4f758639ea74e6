"""What a build step works with: the artifacts it makes, the progress bar, the staging folder, notes.

Shared by the graph steps (build/pipeline.py) and the engine step (build/engine_step.py).
"""
from __future__ import annotations

import contextlib
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from lrformer_deploy.build.request import BuildRequest


@dataclass
class Artifact:
    """One graph and what was made from it."""

    precision: str
    onnx: Path
    manifest_path: Path | None
    manifest: dict | None
    seconds: float = 0.0
    reused: bool = False
    engine: Path | None = None
    engine_record: dict | None = None
    engine_skipped: str | None = None  # why no engine was built (TensorRT or a GPU missing)
    details: dict | None = None  # precision_details of a reduced graph made by this build


@dataclass
class BuildResult:
    artifacts: dict[str, Artifact] = field(default_factory=dict)  # "fp32", "fp16", "int8"
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, precision: str) -> Artifact:
        return self.artifacts[precision]


class Steps:
    """A tqdm bar over the build's steps (export, check, FP16, INT8, engine); silent when quiet or when
    stderr is not a terminal."""

    def __init__(self, total: int, quiet: bool):
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm comes with the `export` extra; a graph-only build runs without a bar
            quiet = True

            def tqdm(**_kw):
                return types.SimpleNamespace(set_postfix_str=lambda *_: None, update=lambda *_: None,
                                             close=lambda: None)
        self.bar = tqdm(total=total, desc="build", unit="step", leave=False,
                        disable=quiet or not sys.stderr.isatty(), file=sys.stderr)

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[None]:
        self.bar.set_postfix_str(text)
        yield
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


@contextlib.contextmanager
def staging(out_dir: Path, stem: str) -> Iterator[Path]:
    """A hidden folder beside the artifacts, removed whatever happens (failure, Ctrl-C, SIGTERM).

    SIGKILL or a power loss cannot run that cleanup, so each staging folder holds an flock-held owner file
    (locks.owned_temporary_folder), and every new one first removes the folders whose owner is gone."""
    from lrformer_deploy.locks import owned_temporary_folder, remove_abandoned_folders

    remove_abandoned_folders(out_dir, prefix=".", suffix=".partial")
    with owned_temporary_folder(out_dir, prefix=f".{stem}.", suffix=".partial") as tmp:
        yield tmp


def note(req: BuildRequest, result: BuildResult, text: str) -> None:
    result.notes.append(text)
    if not req.quiet:
        print(f"note: {text}", file=sys.stderr)
