"""The JSON manifest that sits beside every artifact (`NAME.onnx` + `NAME.json`).

A consumer in any language needs only this file to run the graph: input name/shape/layout/dtype,
colour order and normalisation, output meaning, class names and palette, precision, and the sha256
of each artifact. Field documentation: `manifest.schema.json` in this package. No torch here.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path

from .errors import UserError

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
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)
    return path


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


def validate_manifest(manifest: dict) -> None:
    """Check against the JSON Schema (needs the `jsonschema` package; used by tests and the exporter)."""
    import jsonschema

    jsonschema.validate(manifest, json.loads(SCHEMA_PATH.read_text()))


def artifact_record(path: str | os.PathLike, base: str | os.PathLike) -> dict:
    path = Path(path)
    return {"file": os.path.relpath(path, base), "sha256": sha256_file(path), "bytes": path.stat().st_size}
