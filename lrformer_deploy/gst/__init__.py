"""GStreamer integration: the `lrformerseg` element (gst-python) and its setup checks.

    eval "$(lrformer-gst --env)"        # GST_PLUGIN_PATH + where the embedded Python finds our wheels
    gst-launch-1.0 filesrc location=in.mp4 ! decodebin ! videoconvert ! queue ! lrformerseg model=m.onnx \\
        ! videoconvert ! jpegenc ! avimux ! filesink location=out.avi

`element.py` runs inside the Python interpreter that GStreamer's plugin loader embeds and imports
PyGObject; `paths.py` and `setup.py` use the standard library only, so the CLI works from any venv.
"""
