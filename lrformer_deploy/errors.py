"""One exception type for mistakes a user can fix, and the CLI wrapper that prints them as one line."""
from __future__ import annotations

import functools
import os
import sys


class UserError(Exception):
    """A problem with the user's input (file, flag, model). The CLIs print it as one line, exit 2."""


# Optional packages a command may need, and the extra that installs them.
_EXTRAS = {"torch": "export", "onnx": "export", "onnxscript": "export", "onnxruntime": "cpu] or [gpu",
           "tensorrt": "tensorrt", "pycuda": "gpu", "jsonschema": "test"}


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
            print(f"error: this command needs the {root} package: pip install 'lrformer-deploy[{_EXTRAS[root]}]'",
                  file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            return interrupted(exc)
        except BrokenPipeError:
            # The reader went away (`... | head`): stop quietly, and keep Python from complaining at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0

    return wrapper
