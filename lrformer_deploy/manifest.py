"""The JSON manifest that sits beside every artifact (`NAME.onnx` + `NAME.json`).

A consumer in any language needs only this file to run the graph: input name/shape/layout/dtype,
colour order and normalisation, output meaning, class names and palette, precision, and the sha256
of each artifact. Field documentation: `manifest.schema.json` in this package. No torch here.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Iterator

from lrformer_deploy.errors import UserError

FORMAT = "lrformer-deploy-manifest"
SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tool_versions() -> dict[str, str]:
    """Versions of what built the artifact; absent tools are simply left out."""
    from importlib import metadata

    out = {}
    for dist in ("lrformer-deploy", "torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "tensorrt"):
        try:
            out[dist.replace("-", "_")] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def manifest_path_for(artifact: str | os.PathLike) -> Path:
    """`x.onnx` / `x.engine` -> `x.json`."""
    return Path(artifact).with_suffix(".json")


def write_manifest(path: str | os.PathLike, manifest: dict) -> Path:
    """Write atomically (a reader never sees half a manifest)."""
    from lrformer_deploy.atomic import write_text

    path = Path(path)
    write_text(path, json.dumps(manifest, indent=2) + "\n")
    return path


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Defer SIGINT/SIGTERM/SIGHUP for the few renames of a commit, so a signal cannot split it; a signal
    that arrived meanwhile is re-raised afterwards (its usual handler then runs)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    sigs = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.signal(s, lambda signum, _frame: pending.append(signum)) for s in sigs}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in pending:
            signal.raise_signal(s)


def publish(files: list[tuple[Path, Path]], manifest: dict | None = None,
            manifest_path: str | os.PathLike | None = None) -> None:
    """Move verified artifacts from their temporary/staging names into place, the manifest LAST.

    The manifest is the commit point of an export: it is written completely (and flushed) to a temporary
    file first, the files are renamed into place, then the new manifest atomically replaces the old one
    (never unlinked first: at every instant a manifest exists). Signals are held for those renames, so an
    interrupted re-export leaves the old artifacts with their old manifest, or the new ones with the new
    manifest. Only SIGKILL or a power loss between the renames can leave the old manifest beside a new
    graph; its sha256 then no longer matches, which the runtime refuses and the next export rebuilds.
    The folders are fsynced after the renames, so a power loss cannot undo them.
    """
    from lrformer_deploy.atomic import commit, fsync_dir, temporary_sibling

    tmp_manifest = None
    if manifest is not None:
        manifest_path = Path(manifest_path)
        tmp_manifest = temporary_sibling(manifest_path)
        tmp_manifest.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    try:
        with _signals_held():
            for src, dst in files:
                commit(src, dst)
            if tmp_manifest is not None:
                commit(tmp_manifest, manifest_path)
                tmp_manifest = None
        folders = {Path(dst).parent.resolve() for _src, dst in files}
        if manifest_path is not None:
            folders.add(Path(manifest_path).parent.resolve())
        for folder in folders:
            fsync_dir(folder)
    finally:
        if tmp_manifest is not None and tmp_manifest.exists():
            tmp_manifest.unlink()


def load_manifest(path: str | os.PathLike) -> dict:
    """Load a manifest, turning every way it can be broken into one clear UserError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"manifest not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read manifest {path}: {exc.__class__.__name__}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path} is not an lrformer-deploy manifest (missing \"format\": \"{FORMAT}\")")
    if not isinstance(data.get("schema_version", 1), int) or data.get("schema_version", 1) > SCHEMA_VERSION:
        raise UserError(f"{path} has manifest schema {data.get('schema_version')!r}; "
                        f"this version reads up to {SCHEMA_VERSION}")
    return data


def artifact_record(path: str | os.PathLike, base: str | os.PathLike, name: str | None = None) -> dict:
    """sha256 and size of `path`; `name` is the file name it will have (when it is still a temporary)."""
    path = Path(path)
    return {"file": name or os.path.relpath(path, base), "sha256": sha256_file(path), "bytes": path.stat().st_size}
