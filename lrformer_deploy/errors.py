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


def cli_entry(func):
    """Run a CLI main: user errors become one line on stderr and exit code 2; Ctrl-C, SIGTERM and SIGHUP
    unwind through the same `finally` blocks (partial videos finalised, temporaries removed) and exit
    128 + signal number (130, 143, 129)."""
    from lrformer_deploy.atomic import exit_code, termination_as_interrupt

    @functools.wraps(func)
    def wrapper(argv=None):
        try:
            with termination_as_interrupt():
                return func(argv) or 0
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
            if not getattr(exc, "reported", False):  # the command may have said what it kept, in one line
                print(f"interrupted ({getattr(exc, 'args', None) and exc.args[0] or 'SIGINT'})", file=sys.stderr)
            return exit_code(exc)
        except BrokenPipeError:
            # The reader went away (`... | head`): stop quietly, and keep Python from complaining at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0

    return wrapper
