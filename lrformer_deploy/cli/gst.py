"""lrformer-gst: set up and check the `lrformerseg` GStreamer element.

    lrformer-gst --plugin-path        # the folder to put on GST_PLUGIN_PATH
    eval "$(lrformer-gst --env)"      # set GST_PLUGIN_PATH and where the embedded Python finds our wheels
    lrformer-gst --check              # what is missing (GStreamer, the Python loader, our packages), and how to fix it

Exit status: 0; 1 when --check finds something missing; 2 for a usage mistake.
"""
from __future__ import annotations

import sys

from lrformer_deploy.cli.common import OneLineParser
from lrformer_deploy.errors import cli_entry


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="lrformer-gst", description="Set up and check the lrformerseg GStreamer element.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--plugin-path", action="store_true", help="print the folder to put on GST_PLUGIN_PATH")
    what.add_argument("--env", action="store_true",
                      help='print shell exports for the element; use as: eval "$(lrformer-gst --env)"')
    what.add_argument("--check", action="store_true", help="check GStreamer, the Python plugin loader and our "
                                                           "packages in the Python it embeds")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lrformer_deploy.gst import check

    if args.plugin_path:
        print(check.PLUGIN_DIR)
        return 0
    if args.env:
        sys.stdout.write(check.shell_exports())
        conflict = _path_conflict(check)
        if conflict:
            print(f"warning: {conflict}; GStreamer's embedded Python would adopt it: {check.NOT_IN_VENV}",
                  file=sys.stderr)
        return 0
    items = check.run_checks()
    width = max(len(i.name) for i in items)
    for item in items:
        print(f"{'ok' if item.ok else 'MISSING':8s}{item.name:{width}s}  {item.detail}")
        if not item.ok and item.fix:
            print(f"{'':8s}{'':{width}s}  fix: {item.fix}")
    return 0 if all(i.ok for i in items) else 1


def _path_conflict(check) -> str | None:
    library = check.loader_library(check.gst_environment())
    version = check.embedded_python_version(library) if library else None
    python = check.embedded_interpreter(version) if version else None
    return check.path_python_conflict(python) if python else None


if __name__ == "__main__":
    sys.exit(main())
