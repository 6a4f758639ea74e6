"""Where the GStreamer plugin lives, and how the Python that GStreamer embeds finds our packages.

Debian's gst-python loader embeds the system Python (/usr/bin/python3), not a virtualenv's. The plugin
file (`plugins/python/lrformerseg.py`, inside this package) therefore puts its own package root first on
`sys.path`, then every folder listed in LRFORMER_GST_SITE_PACKAGES (a virtualenv's site-packages, with
its .pth files, so editable installs resolve too), so numpy, OpenCV and onnxruntime come from the same
install as the CLIs. Standard library only: this module is imported before those paths exist.
"""
from __future__ import annotations

import os
import site
import sys
from pathlib import Path

SITE_ENV = "LRFORMER_GST_SITE_PACKAGES"
PLUGIN_DIR = Path(__file__).resolve().parent / "plugins"   # the folder for GST_PLUGIN_PATH
PLUGIN_FILE = PLUGIN_DIR / "python" / "lrformerseg.py"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]          # the folder holding lrformer_deploy/


def extend_sys_path(environ=os.environ) -> list[str]:
    """Put LRFORMER_GST_SITE_PACKAGES' folders (with their .pth files) first on sys.path; return them."""
    folders = [f for f in environ.get(SITE_ENV, "").split(os.pathsep) if f]
    before = list(sys.path)
    for folder in folders:
        site.addsitedir(folder)
    # addsitedir appends; a distribution's own numpy (python3-numpy) must not shadow the venv's wheels,
    # which were built against the venv's numpy.
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + before
    return folders
