"""GStreamer's Python plugin loader imports this file (GST_PLUGIN_PATH=<this folder's parent>).

It must never raise: an exception here is printed by the loader as a Python traceback into the host
application's stderr. The element itself lives in lrformer_deploy.gst.element.
"""
import sys
from pathlib import Path

__gstelementfactory__ = None
try:
    _root = str(Path(__file__).resolve().parents[4])
    if _root not in sys.path:
        sys.path.insert(0, _root)
    from lrformer_deploy.gst.paths import extend_sys_path

    extend_sys_path()
    from lrformer_deploy.gst.element import register

    __gstelementfactory__ = register()
except Exception as _exc:  # noqa: BLE001 - report in one line, never a traceback
    sys.stderr.write(f"lrformerseg: element not registered ({_exc.__class__.__name__}: {_exc}); "
                     "run `lrformer-gst --check`\n")
    del __gstelementfactory__
