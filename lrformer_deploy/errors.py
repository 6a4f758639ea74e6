"""One exception type for mistakes a user can fix, and the CLI wrapper that prints them as one line."""
from __future__ import annotations

import functools
import os
import sys


class UserError(Exception):
    """A problem with the user's input (file, flag, model). The CLIs print it as one line, exit 2."""


# Optional packages a command may need, and the extra that installs them.
_EXTRAS = {"torch": "export", "onnx": "export", "onnxscript": "export", "onnxruntime": "cpu] or [gpu",
           "tensorrt": "tensorrt", "pycuda": "gpu", "jsonschema": "test", "psutil": "export",
           "openvino": "openvino", "pytriton": "serve", "tritonclient": "serve", "ray": "batch"}

# An unpinned `torch` from PyPI pulls several GB of CUDA packages; this pin resolves to a CPU build where
# the index serves one (the README says how to get PyTorch's CPU build elsewhere).
TORCH_CPU_PIN = "torch==2.13.0"


def install_hint(package: str) -> str:
    """The one way every command says how to install an optional package: the project's extra that holds
    it (for torch, with the CPU build pin), never a bare `pip install <package>`."""
    root = package.split(".")[0]
    extra = _EXTRAS.get(root)
    if extra is None:
        return f"pip install {root}"
    if extra == "export":
        return f"pip install '{TORCH_CPU_PIN}' 'lrformer-deploy[export]' (the pinned CPU build we test)" \
            if root == "torch" else "pip install 'lrformer-deploy[export]'"
    return f"pip install 'lrformer-deploy[{extra}]'"


def missing_package(package: str, what: str = "this command") -> str:
    """`<what> needs the <package> package: <install hint>` -- one line."""
    return f"{what} needs the {package.split('.')[0]} package: {install_hint(package)}"


def has_package(name: str) -> bool:
    """Whether `name` can be imported, found without importing it (a finder that refuses it: False)."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def require_torch(what: str = "this command", alternative: str | None = None) -> None:
    """UserError with the shared install hint unless torch can be imported (found without importing it)."""
    if not has_package("torch"):
        raise UserError(missing_package("torch", what) + (f"; {alternative}" if alternative else ""))


def _interrupt_in_chain(exc: BaseException) -> KeyboardInterrupt | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def cli_entry(func):
    """Run a CLI main: user errors become one line on stderr and exit code 2; Ctrl-C, SIGTERM and SIGHUP
    unwind through the same `finally` blocks (partial videos finalised, temporaries removed) and exit
    128 + signal number (130, 143, 129)."""
    from lrformer_deploy.atomic import exit_code, termination_as_interrupt

    def interrupted(exc: BaseException) -> int:
        if not getattr(exc, "reported", False):  # the command may have said what it kept, in one line
            print(f"interrupted ({getattr(exc, 'args', None) and exc.args[0] or 'SIGINT'})", file=sys.stderr)
        return exit_code(exc)

    @functools.wraps(func)
    def wrapper(argv=None):
        try:
            try:
                with termination_as_interrupt():
                    return func(argv) or 0
            except Exception as exc:
                # Some libraries catch everything, a signal too, and raise their own error from it (torch's
                # ONNX exporter does): an interrupt anywhere in the chain is still an interrupt.
                cause = _interrupt_in_chain(exc)
                if cause is None:
                    raise
                return interrupted(cause)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except ModuleNotFoundError as exc:
            root = (exc.name or "").split(".")[0]
            if root not in _EXTRAS:
                raise
            print(f"error: {missing_package(root)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            return interrupted(exc)
        except BrokenPipeError:
            # The reader went away (`... | head`): stop quietly, and keep Python from complaining at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0

    return wrapper
