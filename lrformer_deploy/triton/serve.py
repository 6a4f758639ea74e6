"""`lrformer-serve`'s server: a real tritonserver, started from Python by NVIDIA PyTriton, running Segmenter.

PyTriton (`pip install "lrformer-deploy[serve]"`) ships the tritonserver binary and its Python backend;
the model it serves is the frames model of `frames.py` (same tensors as a repository's `NAME_frames`),
with Triton's dynamic batcher grouping concurrent requests into one `Segmenter.segment_batch` call.

Two things about PyTriton 0.7 that this module handles for the user:
- the Python backend's stub process embeds the interpreter and must load *this* interpreter's
  libpython3.X.so; another 3.X build found first (e.g. the distribution's) crashes it with
  `_thread.RLock ... _recursion_count`, so our libpython folder goes first on LD_LIBRARY_PATH;
- without CUDA the server logs that it cannot allocate pinned memory: harmless on a CPU, so the server's
  log goes to a file and that line is dropped when the log is shown.
"""
from __future__ import annotations

import logging
import os
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
        self._log_dir: tempfile.TemporaryDirectory | None = None
        self.start_seconds: float | None = None

    @property
    def log_path(self) -> Path | None:
        return Path(self._log_dir.name) / "tritonserver.log" if self._log_dir else None

    def server_log(self) -> str:
        path = self.log_path
        return useful_log(path.read_text(errors="replace")) if path and path.is_file() else ""

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
        self._log_dir = tempfile.TemporaryDirectory(prefix="lrformer-serve-")
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
            self._triton = Triton(config=config, security_config=security)
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
            log = self.server_log()
            self.stop()
            if isinstance(exc, Exception):
                raise UserError(f"the Triton server did not start ({exc.__class__.__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''})" + (f"\n{log}" if log else "")) from None
            raise
        self.start_seconds = time.perf_counter() - t0
        return self

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
            if self._log_dir is not None:
                self._log_dir.cleanup()
                self._log_dir = None

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
