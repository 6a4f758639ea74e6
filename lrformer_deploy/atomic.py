"""Crash-safe file outputs and termination signals, shared by every command.

Every file a command writes goes through `atomic_output` (a temporary name in the same folder, renamed into
place only when complete), so an earlier good file survives any failure or signal and a reader never sees
half a file. `os.replace` is atomic within one filesystem, which is why the temporary lives beside the target.

`termination_as_interrupt` turns SIGTERM and SIGHUP (`docker stop`, `timeout`, systemd, a closed terminal)
into the same KeyboardInterrupt path Ctrl-C already takes, so `finally` blocks finalise partial videos and
remove temporary folders whatever the signal. The exception carries the signal number for the exit code.
"""
from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import IO, Iterator


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM/SIGHUP; `signum` gives the exit code 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum, _frame):
    raise Terminated(signum)


@contextlib.contextmanager
def termination_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise `Terminated` (a KeyboardInterrupt) in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        # an ignored signal stays ignored: `nohup lrformer-export ...` must survive a closed terminal
        if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, _raise_terminated)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_code(exc: BaseException) -> int:
    """128 + signal number, the shell's convention: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A new, empty file beside `path` that keeps its suffix (video/image writers pick the format from it)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries to disk, so renames into it survive a power loss (POSIX; a no-op where a
    folder cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move a finished temporary into place: flushed to disk, then renamed atomically."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    # mkstemp creates 0600 files; give the result the permissions a plain open() would have.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write `path` through; it replaces `path` only if the block completes.

    On any exception (a failed check, KeyboardInterrupt, Terminated) the temporary is removed and an existing
    `path` is left untouched.
    """
    tmp = temporary_sibling(path)
    try:
        yield tmp
        commit(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """`open()` for writing, through `atomic_output`: readers see the old file or the complete new one."""
    with atomic_output(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)
