"""One exception type for mistakes a user can fix, and the CLI wrapper that prints them as one line."""
from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """A problem with the user's input (file, flag, model). The CLIs print it as one line, exit 2."""


def cli_entry(func):
    """Run a CLI main: user errors become one line on stderr and exit code 2, Ctrl-C exits 130."""

    @functools.wraps(func)
    def wrapper(argv=None):
        try:
            return func(argv) or 0
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
