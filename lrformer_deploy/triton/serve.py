"""`lrformer-serve`'s server: a real tritonserver, started from Python by NVIDIA PyTriton, running Segmenter.

PyTriton (`pip install "lrformer-deploy[serve]"`) ships the tritonserver binary and its Python backend;
the model it serves is the frames model of `frames.py` (same tensors as a repository's `NAME_frames`),
with Triton's dynamic batcher grouping concurrent requests into one `Segmenter.segment_batch` call.

Two things about PyTriton 0.7 that this module handles for the user:
- the Python backend's stub process embeds the interpreter and must load *this* interpreter's
  libpython3.X.so; another 3.X build found first (e.g. the distribution's) crashes it with
  `_thread.RLock ... _recursion_count`, so our libpython folder goes first on LD_LIBRARY_PATH;
- without CUDA the server logs that it cannot allocate pinned memory: harmless on a CPU, so the server's
  log goes to a file and that line is dropped when the log is shown;
- PyTriton names its Unix sockets after the model (`<model>_0_<i>-server.sock`) inside its workspace,
  by default `$HOME/.cache/pytriton/workspace_XXXXXXXX/`, and AF_UNIX paths stop at 107 characters: an
  ordinary home folder was enough to break serving. The workspace is a short private folder under the
  temporary folder instead (`/tmp/lrf-XXXXXXXX/w`), removed on stop, and a name that cannot fit is
  refused before the server starts.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from lrformer_deploy.contract import MAX_PIXELS_SERVE
from lrformer_deploy.errors import UserError
from lrformer_deploy.triton.frames import ENCODED_INPUT, FRAME_INPUT, MASK_OUTPUT, BadRequest, segment_requests

HARMLESS_LOG_LINES = ("pinned memory", "CudaDriverHelper has not been initialized", "CUDA memory pool disabled",
                      "Failed to set config modification time")


def python_library_dir() -> str | None:
    """The folder holding this interpreter's shared libpython, or None for a static build."""
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).exists():
        return libdir
    return None


def prepare_environment(env: dict | None = None) -> dict:
    """Put this interpreter's libpython first on LD_LIBRARY_PATH (in os.environ unless `env` is given)."""
    env = os.environ if env is None else env
    libdir = python_library_dir()
    if libdir:
        rest = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != libdir]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([libdir] + rest)
    return env


def require_pytriton() -> None:
    import importlib.util

    missing = [m for m in ("pytriton", "tritonclient") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"serving needs {' and '.join(missing)}: pip install 'lrformer-deploy[serve]'")


def bundled_server() -> tuple[Path, Path]:
    """(tritonserver binary, its library folder) as shipped inside the PyTriton wheel."""
    require_pytriton()
    from pytriton.triton import TRITONSERVER_DIST_DIR  # noqa: PLC0415
    from pytriton.utils.distribution import get_libs_path  # noqa: PLC0415

    return Path(TRITONSERVER_DIST_DIR) / "bin" / "tritonserver", Path(get_libs_path())


def python_backends_dir(work_dir: Path) -> Path:
    """A backends folder for the bundled tritonserver: its Python backend plus the stub for this Python.

    This is what lets the PyTriton binary serve a hand-written repository (e.g. `NAME_frames`).
    """
    from pytriton.triton import TRITONSERVER_DIST_DIR  # noqa: PLC0415
    from pytriton.utils.distribution import get_stub_path  # noqa: PLC0415

    backends = Path(work_dir) / "backends"
    shutil.copytree(Path(TRITONSERVER_DIST_DIR) / "backends", backends, dirs_exist_ok=True)
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    shutil.copy(get_stub_path(version), backends / "python" / "triton_python_backend_stub")
    return backends


def server_environment() -> dict:
    """Environment for a tritonserver whose Python backend must run this interpreter and its packages."""
    env = prepare_environment(dict(os.environ))
    _, libs = bundled_server()
    env["LD_LIBRARY_PATH"] = os.pathsep.join([env["LD_LIBRARY_PATH"], str(libs)]) if env.get("LD_LIBRARY_PATH") \
        else str(libs)
    # The stub finds its Python (and so our virtual environment's packages) through PATH, as PyTriton sets it.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


# Linux's sockaddr_un.sun_path holds 108 bytes with the terminating NUL; ZeroMQ's ipc:// refuses longer.
AF_UNIX_PATH_MAX = 107
_WORKSPACE_PREFIX = "lrf-"  # tempfile.mkdtemp adds 8 random characters
_WORKSPACE_LEAF = "w"  # PyTriton's Workspace creates its folder itself: a new leaf inside ours


def socket_names(model_name: str, instances: int = 1) -> list[str]:
    """The Unix socket files PyTriton 0.7 creates in its workspace for one bound model (proxy/model.py):
    a data and a handshake socket, and one request socket per instance (Triton's `<model>_0_<i>`)."""
    return [f"{model_name}-data.sock", f"{model_name}-config.sock",
            *(f"{model_name}_0_{i}-server.sock" for i in range(instances))]


def longest_socket_path(workspace: str | os.PathLike, model_name: str, instances: int = 1) -> int:
    """Characters in the longest socket path PyTriton would bind in `workspace` for this model."""
    return max(len(os.path.join(os.fspath(workspace), n)) for n in socket_names(model_name, instances))


def max_model_name_length(workspace: str | os.PathLike, instances: int = 1) -> int:
    """The longest Triton model name whose sockets fit AF_UNIX in `workspace`."""
    return AF_UNIX_PATH_MAX - (longest_socket_path(workspace, "", instances))


def _predicted_workspace(base: str) -> str:
    return os.path.join(os.path.realpath(base), _WORKSPACE_PREFIX + "x" * 8, _WORKSPACE_LEAF)


def short_workspace_root(model_name: str, instances: int = 1) -> Path:
    """Create a private folder for PyTriton's workspace whose socket paths fit AF_UNIX, whatever $HOME is.

    The temporary folder ($TMPDIR) is tried first, then /tmp and /dev/shm (a long $TMPDIR is no better than
    a long home). The caller removes the folder. A model name too long for any of them is a UserError.
    """
    bases = [tempfile.gettempdir(), "/tmp", "/dev/shm", "/var/tmp"]
    fitting = [b for b in dict.fromkeys(bases) if os.path.isdir(b) and os.access(b, os.W_OK | os.X_OK)]
    for base in fitting:
        if longest_socket_path(_predicted_workspace(base), model_name, instances) <= AF_UNIX_PATH_MAX:
            return Path(tempfile.mkdtemp(prefix=_WORKSPACE_PREFIX, dir=os.path.realpath(base)))
    if not fitting:
        raise UserError(f"serving needs a writable temporary folder for its sockets: none of {', '.join(bases)} is")
    limit = max_model_name_length(_predicted_workspace(min(fitting, key=len)), instances)
    raise UserError(f"the Triton model name {model_name!r} is {len(model_name)} characters, too long for the "
                    f"Unix sockets PyTriton names after it (at most {limit} here): pass a shorter --name")


_TRITON_LOG_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ [^\]]*\] ")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_.]*(Error|Exception)\b")
_ERROR_LINE = re.compile(r"(\b[A-Za-z_.]*(Error|Exception)\b:|\bfailed\b|\berror\b)", re.IGNORECASE)


def _one_line(message: str) -> str:
    """A Triton log message, which may hold a whole escaped Python traceback, as one line: its head and
    the exception the traceback ended with."""
    parts = [p.strip() for p in message.strip().strip('"').replace("\\n", "\n").splitlines() if p.strip()]
    if not parts:
        return ""
    head = parts[0].replace("Traceback (most recent call last):", "").strip().rstrip(":").strip()
    raised = [p for p in parts[1:] if _EXCEPTION_LINE.match(p)]
    return f"{head}: {raised[-1]}" if raised and raised[-1] not in head else head


def log_cause(text: str) -> str:
    """The one line of a server log that says why it failed: the last Python exception line, else the last
    Triton error (E...) line, else the last error-looking line; '' when none is found."""
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not any(h in ln for h in HARMLESS_LOG_LINES)]
    exception = [ln for ln in lines if _EXCEPTION_LINE.match(ln) and ":" in ln]
    if exception:
        return exception[-1]
    triton_errors = [_TRITON_LOG_PREFIX.sub("", ln) for ln in lines if re.match(r"^[EF]\d{4} ", ln)]
    if triton_errors:
        return _one_line(triton_errors[-1])
    errorish = [_TRITON_LOG_PREFIX.sub("", ln) for ln in lines if _ERROR_LINE.search(ln)]
    return _one_line(errorish[-1]) if errorish else ""


def useful_log(text: str, lines: int = 20) -> str:
    kept = [ln for ln in text.splitlines() if ln.strip() and not any(h in ln for h in HARMLESS_LOG_LINES)]
    return "\n".join(kept[-lines:])


def make_infer(segmenter, max_pixels: int | None = MAX_PIXELS_SERVE):
    """The inference callable PyTriton binds: a list of requests in, one output dict per request out."""
    from pytriton.exceptions import PyTritonBadParameterError  # noqa: PLC0415

    def infer(requests):
        results = segment_requests(segmenter, [(r.data.get(FRAME_INPUT), r.data.get(ENCODED_INPUT))
                                               for r in requests], max_pixels)
        bad = next((r for r in results if isinstance(r, BadRequest)), None)
        if bad is not None:  # PyTriton answers a call as a whole: the batch with a bad request fails
            raise PyTritonBadParameterError(str(bad))
        return [{MASK_OUTPUT: m} for m in results]

    return infer


class Server:
    """A Segmenter behind a real tritonserver (PyTriton), HTTP + gRPC; `with Server(...) as s:` or start/stop."""

    def __init__(self, model: str | Path | None, *, name: str | None = None, host: str = "127.0.0.1",
                 http_port: int = 8000, grpc_port: int = 8001, metrics_port: int | None = None,
                 max_batch: int = 8, instances: int = 1, backend: str = "auto", device: str | None = None,
                 resize: str = "stretch", threads: int | None = None, queue_delay_us: int = 500,
                 max_pixels: int | None = MAX_PIXELS_SERVE) -> None:
        require_pytriton()
        self.model, self.host = model, host
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.max_batch, self.instances = max_batch, instances
        self.backend, self.device, self.resize = backend, device, resize
        self.threads = threads if threads is not None else max(1, (os.cpu_count() or 1) // instances)
        self.queue_delay_us = queue_delay_us
        self.max_pixels = max_pixels
        self.name = name
        self.segmenters: list[Any] = []
        self._triton = None
        self._work_dir: Path | None = None  # PyTriton's workspace and the server log, removed on stop
        self.start_seconds: float | None = None

    @property
    def log_path(self) -> Path | None:
        return self._work_dir / "tritonserver.log" if self._work_dir else None

    @property
    def workspace(self) -> Path | None:
        return self._work_dir / _WORKSPACE_LEAF if self._work_dir else None

    def server_log(self) -> str:
        path = self.log_path
        return useful_log(path.read_text(errors="replace")) if path and path.is_file() else ""

    def failure_cause(self) -> str:
        """One line: why the server failed, read from its log ('' when the log says nothing useful)."""
        path = self.log_path
        return log_cause(path.read_text(errors="replace")) if path and path.is_file() else ""

    def keep_log(self) -> Path | None:
        """Copy the server log out of the folder that stop() removes (a failed start keeps its evidence)."""
        path = self.log_path
        if not (path and path.is_file() and path.stat().st_size):
            return None
        fd, kept = tempfile.mkstemp(prefix="lrformer-serve-", suffix=".log")
        os.close(fd)
        shutil.copyfile(path, kept)
        return Path(kept)

    def start(self) -> "Server":
        import numpy as np
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor  # noqa: PLC0415
        from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig  # noqa: PLC0415

        from lrformer_deploy.runtime import Segmenter
        from lrformer_deploy.runtime.postprocess import mask_dtype

        t0 = time.perf_counter()
        for _ in range(self.instances):
            self.segmenters.append(Segmenter(self.model, backend=self.backend, device=self.device,
                                             resize=self.resize, intra_op_threads=self.threads))
        seg = self.segmenters[0]
        self.name = self.name or f"{seg.spec.name}_frames"
        prepare_environment()
        logging.getLogger("pytriton").setLevel(logging.ERROR)
        try:
            self._work_dir = short_workspace_root(self.name, self.instances)
        except BaseException:
            self.stop()
            raise
        # On stop, Triton waits for open client connections up to exit_timeout_secs, then ends the model
        # processes anyway: 10 s lets requests in flight finish without holding Ctrl-C for long.
        config = TritonConfig(http_address=self.host, http_port=self.http_port, grpc_address=self.host,
                              grpc_port=self.grpc_port, allow_metrics=self.metrics_port is not None,
                              metrics_port=self.metrics_port, metrics_address=self.host if self.metrics_port else None,
                              log_file=self.log_path, log_verbose=0, exit_timeout_secs=10)
        try:
            # PyTriton guards these endpoints with a generated token; statistics stay readable so that users
            # (and the tests) can see the dynamic batcher at work. Loading/unloading models stays guarded.
            security = TritonSecurityConfig(restricted_endpoints=["shared-memory", "model-repository", "trace",
                                                                  "logging"])
            self._triton = Triton(config=config, security_config=security, workspace=self.workspace)
            self._triton.bind(
                model_name=self.name,
                infer_func=[make_infer(s, self.max_pixels) for s in self.segmenters],
                inputs=[Tensor(name=FRAME_INPUT, dtype=np.uint8, shape=(-1, -1, 3), optional=True),
                        Tensor(name=ENCODED_INPUT, dtype=np.bytes_, shape=(1,), optional=True)],
                outputs=[Tensor(name=MASK_OUTPUT, dtype=mask_dtype(seg.spec.num_classes).type, shape=(-1, -1))],
                config=ModelConfig(max_batch_size=self.max_batch,
                                   batcher=DynamicBatcher(max_queue_delay_microseconds=self.queue_delay_us)),
                strict=True,
            )
            self._triton.run()
        except BaseException as exc:
            cause = self.failure_cause()
            kept = self.keep_log() if isinstance(exc, Exception) else None
            self.stop()
            if isinstance(exc, Exception):
                raise UserError(self.failure_line("did not start", exc, cause, kept)) from None
            raise
        self.start_seconds = time.perf_counter() - t0
        return self

    @staticmethod
    def failure_line(what: str, exc: BaseException | None, cause: str, kept: Path | None) -> str:
        """`the Triton server <what>: <cause> (server log: <file>)`, on one line."""
        own = f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}" if exc is not None and str(exc).strip() \
            else (exc.__class__.__name__ if exc is not None else "")
        reason = cause or own or "no reason given"
        return f"the Triton server {what}: {reason}" + (f" (server log: {kept})" if kept else "")

    def is_alive(self) -> bool:
        return self._triton is not None and self._triton.is_alive()

    def stop(self) -> None:
        triton, self._triton = self._triton, None
        try:
            if triton is not None:
                triton.stop()
        finally:
            for seg in self.segmenters:
                seg.close()
            self.segmenters.clear()
            if self._work_dir is not None:
                shutil.rmtree(self._work_dir, ignore_errors=True)
                self._work_dir = None

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
