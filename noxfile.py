"""The test suite, in the environments users get: `pip install nox && nox` (what CI runs, verbatim).

Two environments, because the serving stack cannot share one with the rest:
- `tests`: what a user of the quick start gets (`pip install -e ".[cpu]"`, numpy 2 and OpenCV 5) plus the
  openvino, export and batch extras: runtime (ONNX Runtime and OpenVINO), export, precision, engines (fakes
  and API checks), batch, GStreamer.
- `serve`: what `pip install -e ".[cpu,export,serve]"` gives: PyTriton pins numpy < 2 and so OpenCV 4;
  Triton serving and the exported model repository are tested there.

Each session also prepares what its tests read and a user would otherwise miss: TensorRT's bindings
wheels (only their symbol tables are read, for tests/test_tensorrt_api.py) and, where the session runs as
root on Debian (CI does), GStreamer's packages for tests/test_gst.py; elsewhere those tests skip and say
how to enable them.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.options.sessions = ["tests", "serve"]
nox.options.default_venv_backend = "venv"

# The CPU build: the package index here serves it for this exact version; an unpinned torch pulls CUDA.
TORCH = os.environ.get("LRFORMER_TORCH", "torch==2.13.0")
TRT_BINDINGS = ("10.0.1", "10.16.1.11", "11.4.0.106")
GSTREAMER_PACKAGES = (
    "python3-gst-1.0", "gstreamer1.0-python3-plugin-loader", "gstreamer1.0-tools", "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good", "gstreamer1.0-libav", "libgstreamer1.0-dev", "pkg-config", "gcc", "make",
    "libc6-dev",
)
CACHE = Path(os.environ.get("LRFORMER_DEPLOY_CACHE", Path.home() / ".cache" / "lrformer-deploy"))


def tensorrt_bindings(session: nox.Session) -> dict[str, str]:
    """TensorRT's Python bindings wheels, 10.x and 11.x (~1.3 MB each), kept in the cache folder. They are
    never imported (they need libnvinfer): the API test reads the names their compiled module holds."""
    folder = Path(os.environ.get("LRFORMER_TRT_WHEELS", CACHE / "tensorrt-bindings"))
    folder.mkdir(parents=True, exist_ok=True)
    for version in TRT_BINDINGS:
        if not list(folder.glob(f"tensorrt_cu12_bindings-{version}-*.whl")):
            # One platform/Python tag: the names are the same in every build.
            session.run("python", "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "-d", str(folder),
                        f"tensorrt-cu12-bindings=={version}", success_codes=[0, 1])
    return {"LRFORMER_TRT_WHEELS": str(folder)}


def system_gstreamer(session: nox.Session) -> None:
    """Debian's GStreamer packages when this session may install them (root with apt-get, as on CI)."""
    if shutil.which("gst-inspect-1.0") and shutil.which("gst-launch-1.0"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get") or os.environ.get("LRFORMER_NO_APT"):
        session.log("GStreamer is not installed: tests/test_gst.py will skip (as root: apt-get install "
                    + " ".join(GSTREAMER_PACKAGES) + ")")
        return
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-q", external=True, env=env, silent=True)
    session.run("apt-get", "install", "-y", "-q", "--no-install-recommends", *GSTREAMER_PACKAGES,
                external=True, env=env, silent=True)


def install(session: nox.Session, extras: str) -> None:
    """PyTorch's CPU build first (from LRFORMER_TORCH_INDEX when the default index has no CPU build), then
    the package with `extras`."""
    index = os.environ.get("LRFORMER_TORCH_INDEX")
    session.install(TORCH, *(["--index-url", index] if index else []))
    session.install(TORCH, "-e", f".[{extras}]")


def versions(session: nox.Session) -> None:
    session.run("python", "-c", "import numpy, cv2, onnxruntime; print('numpy', numpy.__version__, '| opencv', "
                "cv2.__version__, '| onnxruntime', onnxruntime.__version__)")


@nox.session
def tests(session: nox.Session) -> None:
    """Runtime, export, precision, engines, batch and GStreamer on the quick start's stack (numpy 2)."""
    install(session, "cpu,openvino,export,batch,test")
    versions(session)
    env = tensorrt_bindings(session)
    system_gstreamer(session)
    session.run("python", "-m", "pytest", "--ignore=tests/test_triton.py", *session.posargs, env=env)


@nox.session
def serve(session: nox.Session) -> None:
    """Triton serving and the exported model repository, in the serve extra's environment (numpy < 2)."""
    install(session, "cpu,export,serve,test")
    versions(session)
    # Here the serving tests must run, never skip for a missing package.
    session.run("python", "-m", "pytest", "tests/test_triton.py",
                "tests/test_openvino.py::test_triton_repository_has_an_openvino_config_triton_parses",
                *session.posargs, env={"LRFORMER_REQUIRE_SERVE": "1"})
