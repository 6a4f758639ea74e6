"""One writer per output path: an advisory lock on a small file beside the target.

Two commands writing the same `out.mp4` would otherwise each rename their own temporary into place, or
(worse, for folders of masks) interleave files from two runs. The second one is refused with one line
instead. `flock` locks belong to the open file, so the kernel drops them when the holder exits or is
killed: a crashed writer never blocks the next run, it only leaves the (empty) lock file behind, which the
next holder reuses and removes.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

from lrformer_deploy.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; outputs are still written atomically
    fcntl = None  # type: ignore[assignment]


def lock_path(target: str | os.PathLike) -> Path:
    """`folder/out.mp4` -> `folder/.out.mp4.lock` (hidden, beside the target, so it works on shared folders)."""
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


def _acquire(target: Path) -> int | None:
    if fcntl is None:
        return None
    path = lock_path(target)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise UserError(f"cannot write to {target.parent}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise UserError(f"{target} is being written by another process"
                            + (f" (pid {holder})" if holder.isdigit() else "")) from None
        # The previous holder may have removed the lock file between our open and our flock; then we hold
        # a lock on a deleted file that nobody else sees. Retry on the current file.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            return fd
        os.close(fd)


def _release(target: Path, fd: int | None) -> None:
    if fd is None:
        return
    # Unlink while still holding the lock, so a waiting opener sees the inode change and retries.
    with contextlib.suppress(OSError):
        os.unlink(lock_path(target))
    os.close(fd)


class OutputLocks:
    """Locks on several targets, taken together and released together (`with OutputLocks(paths):`)."""

    def __init__(self, targets) -> None:
        self.targets = [Path(t) for t in targets if t is not None]
        self._held: list[tuple[Path, int | None]] = []

    def acquire(self) -> "OutputLocks":
        if self._held:
            return self  # already held (acquired up front, then used as a context manager)
        seen = set()
        try:
            for target in self.targets:
                key = os.path.abspath(target)
                if key in seen:
                    continue
                seen.add(key)
                self._held.append((target, _acquire(target)))
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        while self._held:
            _release(*self._held.pop())

    def __enter__(self) -> "OutputLocks":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def output_lock(target: str | os.PathLike) -> Iterator[None]:
    """Hold the write lock of one output path for the block; UserError if another process holds it."""
    with OutputLocks([target]):
        yield


# ------------------------------------------------------------------------------------ owned staging folders
OWNER_FILE = ".owner"
# A folder without an owner file is either from a version that wrote none, or microseconds old (created,
# owner file not yet in); only the first kind is this old.
UNOWNED_GRACE_S = 600.0


@contextlib.contextmanager
def owned_temporary_folder(parent: str | os.PathLike, prefix: str, suffix: str) -> Iterator[Path]:
    """A new hidden folder in `parent` (like tempfile.TemporaryDirectory), removed on exit, that carries
    an flock-held owner file for its whole life. The kernel drops the lock when the process dies, even by
    SIGKILL, so `remove_abandoned_folders` can tell a live export's folder from a killed one's without
    guessing from pids (which are reused) or ages."""
    folder = Path(tempfile.mkdtemp(dir=parent, prefix=prefix, suffix=suffix))
    fd = None
    try:
        if fcntl is not None:
            # Locked under a temporary name and only then renamed to OWNER_FILE: a sweeper never sees an
            # owner file that is not locked yet.
            pending = folder / f"{OWNER_FILE}.new"
            fd = os.open(pending, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            os.replace(pending, folder / OWNER_FILE)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if fd is not None:
            os.close(fd)


def remove_abandoned_folders(parent: str | os.PathLike, prefix: str = ".", suffix: str = ".partial",
                             unowned_grace_s: float = UNOWNED_GRACE_S) -> list[Path]:
    """Remove the `owned_temporary_folder`s in `parent` whose owner is gone (killed, power loss), and
    owner-less ones older than `unowned_grace_s`. Folders of live processes are left alone. Returns what
    was removed."""
    removed: list[Path] = []
    try:
        with os.scandir(parent) as it:
            candidates = [Path(e.path) for e in it
                          if e.name.startswith(prefix) and e.name.endswith(suffix) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return removed
    for folder in candidates:
        try:
            fd = os.open(folder / OWNER_FILE, os.O_RDONLY)
        except FileNotFoundError:
            try:
                old = time.time() - folder.stat().st_mtime > unowned_grace_s
            except OSError:
                continue
            if old:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
            continue
        except OSError:
            continue
        try:
            if fcntl is None:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live process holds it
            shutil.rmtree(folder, ignore_errors=True)  # removed while we hold its lock
            removed.append(folder)
        finally:
            os.close(fd)
    return removed
