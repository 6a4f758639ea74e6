"""The user's cache folder and the sha256 cache kept in it (standard library only).

The demo model's exported graph and the hashes of large artifacts live here, so that a second run skips
the export and the hashing. $LRFORMER_DEPLOY_CACHE overrides the folder (CI, read-only homes).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from lrformer_deploy import atomic
from lrformer_deploy.manifest import sha256_file

_HASH_CACHE = "sha256-cache.json"


def cache_dir() -> Path:
    """$LRFORMER_DEPLOY_CACHE, else ~/.cache/lrformer-deploy."""
    env = os.environ.get("LRFORMER_DEPLOY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lrformer-deploy"


def cached_sha256(path: Path) -> str:
    """sha256 of `path`, hashed once per (size, mtime) and remembered in the cache folder.

    Large engines take a second or more to hash; a run that loads the same file again skips that. Any
    change of the file (a re-export, an interrupted copy) changes its size or mtime and is hashed again.
    The cache is best-effort: an unreadable or unwritable cache only means hashing every time.
    """
    st = path.stat()
    key = str(path.resolve())
    stamp = [st.st_size, st.st_mtime_ns]
    cache_file = cache_dir() / _HASH_CACHE
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = sha256_file(path)
    # Forget files that no longer exist, so the cache does not grow without bound.
    cache = {k: v for k, v in cache.items() if Path(k).exists()}
    cache[key] = {"stamp": stamp, "sha256": digest}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(cache_file, json.dumps(cache, indent=1) + "\n")
    except OSError:
        pass
    return digest
