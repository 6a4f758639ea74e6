"""`lrformerseg`: a GStreamer video filter that segments every frame with the torch-free runtime.

    filesrc location=in.mp4 ! decodebin ! videoconvert ! queue ! lrformerseg model=m.onnx ! videoconvert ! ...

Caps: raw BGR or RGB in (`video/x-raw,format={BGR,RGB}`; put `videoconvert` in front). Out:
- `mode=overlay` (default): the same caps, the frame with the class colours blended over it;
- `mode=mask`: `GRAY8` at the frame size, one class id per pixel (models with more than 256 classes
  need `overlay`, since GRAY8 cannot hold their ids);
- `mode=both`: the overlay on `src` and the GRAY8 ids on the request pad `mask` (`name.mask ! ...`),
  whose stream mirrors the input's events (its own stream id, GRAY8 caps, segment, flushes, EOS).
Timestamps, durations and flags are the input buffer's. One element message per frame goes on the bus
(structure `lrformerseg`: frame, pts, width, height, classes, shares, names, infer-ms, total-ms) so an
application gets results without parsing pixels.

Only GObject introspection and the standard library are imported at load time; numpy, OpenCV,
onnxruntime and the runtime are imported when the element starts, so a missing dependency becomes one
GStreamer error on the bus that says how to fix it, never a traceback in the host's stderr.
"""
from __future__ import annotations

import sys
import threading
import time
import traceback

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstBase", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import GLib, GObject, Gst, GstBase, GstVideo  # noqa: E402

from lrformer_deploy.contract import BACKENDS, TRUNCATION_SLACK  # noqa: E402

MODES = ("overlay", "mask", "both")
RESIZES = ("stretch", "keep-ratio")
FORMATS = ("BGR", "RGB")

_RAW = Gst.Caps.from_string(f"video/x-raw,format={{{','.join(FORMATS)}}},"
                            "width=(int)[1,32767],height=(int)[1,32767]")
_GRAY = Gst.Caps.from_string("video/x-raw,format=GRAY8,width=(int)[1,32767],height=(int)[1,32767]")
_SRC = Gst.Caps.from_string(f"video/x-raw,format={{{','.join(FORMATS)},GRAY8}},"
                            "width=(int)[1,32767],height=(int)[1,32767]")

SETUP_HINT = 'run `eval "$(lrformer-gst --env)"` in the shell that starts the pipeline (see `lrformer-gst --check`)'


class _Failure(Exception):
    """An error to post on the bus: (GStreamer error domain enum value, message)."""

    def __init__(self, code, text: str) -> None:
        super().__init__(text)
        self.code = code


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class LrformerSeg(GstBase.BaseTransform):
    __gtype_name__ = "LrformerSeg"
    __gstmetadata__ = (
        "LRFormer semantic segmentation",
        "Filter/Effect/Video",
        "Segments each frame with an LRFormer model (lrformer-deploy runtime): overlay or GRAY8 class-id mask",
        "lrformer-deploy",
    )
    __gsttemplates__ = (
        Gst.PadTemplate.new("sink", Gst.PadDirection.SINK, Gst.PadPresence.ALWAYS, _RAW),
        Gst.PadTemplate.new("src", Gst.PadDirection.SRC, Gst.PadPresence.ALWAYS, _SRC),
        # mode=both: the overlay on "src" and the class ids on this request pad (`name.mask ! ...`).
        Gst.PadTemplate.new("mask", Gst.PadDirection.SRC, Gst.PadPresence.REQUEST, _GRAY),
    )
    __gproperties__ = {
        "model": (str, "model", "model file: .onnx, manifest .json, .engine or .pth (default: the demo model)",
                  None, GObject.ParamFlags.READWRITE),
        "backend": (str, "backend", "auto, tensorrt, onnxruntime, openvino or torch (as lrformer-infer --backend)",
                    "auto", GObject.ParamFlags.READWRITE),
        "device": (str, "device", "auto, cpu, cuda, cuda:N, tensorrt (as lrformer-infer --device)",
                   "auto", GObject.ParamFlags.READWRITE),
        "resize": (str, "resize", "stretch or keep-ratio", "stretch", GObject.ParamFlags.READWRITE),
        "mode": (str, "mode", "overlay (same caps out as in), mask (GRAY8 class ids at the frame size) or both "
                 "(overlay on src, GRAY8 on the request pad 'mask')",
                 "overlay", GObject.ParamFlags.READWRITE),
        "opacity": (float, "opacity", "mask opacity in the overlay", 0.0, 1.0, 0.5, GObject.ParamFlags.READWRITE),
    }

    def __init__(self) -> None:
        super().__init__()
        self._props = {"model": None, "backend": "auto", "device": "auto", "resize": "stretch",
                       "mode": "overlay", "opacity": 0.5}
        self._seg = None          # the runtime's Segmenter, made in do_start
        self._rt = None           # runtime modules (numpy, cv2, overlay), imported in do_start
        self._lock = threading.Lock()
        self._in_info = None
        self._out_info = None
        self._frames = 0
        self._last_end = None     # pts + duration of the last frame segmented (a truncated input's end)
        self._seeked = False      # after a flush the frames seen no longer cover the stream from its start
        self._mask_pad = None
        self.set_qos_enabled(False)  # never drop frames: every input frame gets its mask

    # ------------------------------------------------------------------ properties
    def do_get_property(self, prop):
        return self._props[prop.name]

    def do_set_property(self, prop, value):
        # Values are checked in do_start, where a bad one can become an error on the bus.
        with self._lock:
            self._props[prop.name] = value

    # ------------------------------------------------------------------ errors
    def _post_error(self, code, text: str, debug: str | None = None) -> None:
        domain = {Gst.ResourceError: Gst.ResourceError.quark(), Gst.LibraryError: Gst.LibraryError.quark(),
                  Gst.StreamError: Gst.StreamError.quark(), Gst.CoreError: Gst.CoreError.quark()}[type(code)]
        err = GLib.Error.new_literal(domain, text, int(code))
        self.post_message(Gst.Message.new_error(self, err, debug or f"lrformerseg mode={self._props['mode']} "
                                                                     f"model={self._props['model']}"))

    # ------------------------------------------------------------------ lifetime
    def do_start(self):
        try:
            self._open()
            return True
        except _Failure as exc:
            self._post_error(exc.code, str(exc))
        except Exception as exc:  # noqa: BLE001 - one error on the bus, never a traceback in stderr
            Gst.error("lrformerseg start failed:\n" + traceback.format_exc())
            self._post_error(Gst.LibraryError.INIT, f"lrformerseg: cannot start ({exc.__class__.__name__}: {exc})")
        self._close()
        return False

    def do_stop(self):
        self._close()
        return True

    def _open(self) -> None:
        p = dict(self._props)
        if p["mode"] not in MODES:
            raise _Failure(Gst.LibraryError.SETTINGS, f"lrformerseg: mode must be one of {', '.join(MODES)}, "
                                                      f"got {p['mode']!r}")
        if p["resize"] not in RESIZES:
            raise _Failure(Gst.LibraryError.SETTINGS, f"lrformerseg: resize must be one of {', '.join(RESIZES)}, "
                                                      f"got {p['resize']!r}")
        if (p["backend"] or "auto") not in BACKENDS:
            raise _Failure(Gst.LibraryError.SETTINGS, f"lrformerseg: backend must be one of {', '.join(BACKENDS)}, "
                                                      f"got {p['backend']!r}")
        try:
            import cv2
            import numpy as np

            from lrformer_deploy.errors import UserError
            from lrformer_deploy.runtime import overlay
            from lrformer_deploy.runtime.preprocess import Preprocessor
            from lrformer_deploy.runtime.segmenter import Segmenter
        except ImportError as exc:
            v = sys.version_info
            raise _Failure(Gst.LibraryError.INIT,
                           f"lrformerseg: the Python {v.major}.{v.minor}.{v.micro} that GStreamer embeds cannot import "
                           f"{exc.name or exc}: {SETUP_HINT}") from None
        try:
            seg = Segmenter(p["model"] or None, backend=p["backend"] or "auto",
                            device=None if p["device"] in (None, "", "auto") else p["device"], resize=p["resize"])
        except UserError as exc:
            code = Gst.ResourceError.NOT_FOUND if "not found" in str(exc) else Gst.ResourceError.OPEN_READ
            raise _Failure(code, f"lrformerseg: {exc}") from None
        except ModuleNotFoundError as exc:
            raise _Failure(Gst.LibraryError.INIT, f"lrformerseg: this model or backend needs the {exc.name} package, "
                                                  f"which the Python GStreamer embeds cannot import: {SETUP_HINT}") from None
        if p["mode"] == "mask" and seg.spec.num_classes > 256:
            seg.close()
            raise _Failure(Gst.LibraryError.SETTINGS, f"lrformerseg: the model has {seg.spec.num_classes} classes, "
                                                      "more than GRAY8 can hold: use mode=overlay")
        lut_bgr = overlay.palette_lut(seg.palette)
        # RGB frames: the same runtime with the colour order flipped at both ends (no per-frame conversion).
        flipped = {"RGB": "BGR", "BGR": "RGB"}[seg.spec.color_order]
        self._rt = {
            "np": np, "cv2": cv2, "overlay": overlay,
            "pre": {"BGR": seg.preprocessor,
                    "RGB": Preprocessor(seg.spec.input_size, seg.spec.mean, seg.spec.std, flipped, p["resize"],
                                        seg.spec.input_dtype)},
            "lut": {"BGR": lut_bgr, "RGB": np.ascontiguousarray(lut_bgr[:, ::-1])},
        }
        self._seg = seg
        self._frames = 0
        self._last_end, self._seeked = None, False
        Gst.info(f"lrformerseg: {seg.model_path} on {seg.backend_name}, input {seg.input_size}")

    def _close(self) -> None:
        seg, self._seg, self._rt = self._seg, None, None
        if seg is not None:
            seg.close()

    # ------------------------------------------------------------------ the mask pad (mode=both)
    def do_request_new_pad(self, templ, name, caps):
        if self._mask_pad is not None:
            return None
        pad = Gst.Pad.new_from_template(templ, "mask")
        pad.use_fixed_caps()
        pad.set_active(True)
        self.add_pad(pad)
        self._mask_pad = pad
        return pad

    def do_release_pad(self, pad):
        # Also called while the element is disposed, when the Python attributes may be gone already.
        if pad is getattr(self, "_mask_pad", None):
            self._mask_pad = None
        try:
            pad.set_active(False)
            self.remove_pad(pad)
        except Exception:  # noqa: BLE001 - teardown: nothing left to report to
            pass

    def do_sink_event(self, event):
        if event.type == Gst.EventType.FLUSH_STOP:
            self._seeked = True
        elif event.type == Gst.EventType.EOS:
            try:
                self._check_ended_early()
            except Exception:  # noqa: BLE001 - a check, never a reason to lose the EOS
                Gst.error("lrformerseg: length check failed:\n" + traceback.format_exc())
        pad = self._mask_pad
        if pad is not None and self._mode() == "both":
            try:
                self._mirror_event(pad, event)
            except Exception:  # noqa: BLE001 - the main stream must go on; the log has the details
                Gst.error("lrformerseg: mask pad event failed:\n" + traceback.format_exc())
        return GstBase.BaseTransform.do_sink_event(self, event)

    def _check_ended_early(self) -> None:
        """At EOS: when upstream states a duration and the frames stopped more than a frame short of it (a
        truncated or damaged file: demuxers end such files with a plain EOS), post one warning on the bus.
        (A demuxer that re-scans a file without its index, as avidemux does, states only what is there.)
        The pipeline still ends normally with every frame that arrived segmented."""
        info = self._in_info
        if self._seeked or self._last_end is None or info is None or not info.fps_n or not info.fps_d:
            return
        ok, duration = self.get_static_pad("sink").peer_query_duration(Gst.Format.TIME)
        if not ok or duration <= 0 or duration == Gst.CLOCK_TIME_NONE:
            return
        frame_ns = Gst.SECOND * info.fps_d / info.fps_n
        if duration - self._last_end <= (TRUNCATION_SLACK + 0.5) * frame_ns:
            return
        expected = int(duration / frame_ns + 1e-6)  # the last frame's duration may be rounded up
        text = (f"lrformerseg: read {self._frames} of {expected} frames: the input ended at "
                f"{self._last_end / Gst.SECOND:.2f} s of its stated {duration / Gst.SECOND:.2f} s (truncated or "
                f"damaged); every frame that arrived was segmented")
        err = GLib.Error.new_literal(Gst.StreamError.quark(), text, int(Gst.StreamError.DECODE))
        self.post_message(Gst.Message.new_warning(self, err, f"frames={self._frames} expected={expected}"))

    def _mirror_event(self, pad, event) -> None:
        """The mask stream follows the video stream: its own stream id, GRAY8 caps, the same segment/EOS/flushes."""
        kind = event.type
        if kind == Gst.EventType.STREAM_START:
            mirrored = Gst.Event.new_stream_start(f"{event.parse_stream_start()}/lrformerseg-mask")
            ok, group = event.parse_group_id()
            if ok:
                mirrored.set_group_id(group)
            pad.push_event(mirrored)
        elif kind == Gst.EventType.CAPS:
            s = event.parse_caps().get_structure(0).copy()
            s.set_value("format", "GRAY8")
            caps = Gst.Caps.new_empty()
            caps.append_structure(s)
            pad.push_event(Gst.Event.new_caps(caps))
        elif kind in (Gst.EventType.SEGMENT, Gst.EventType.EOS, Gst.EventType.FLUSH_START,
                      Gst.EventType.FLUSH_STOP, Gst.EventType.GAP):
            pad.push_event(event)

    def _push_mask(self, inbuf, mask):
        np = self._rt["np"]
        h, w = mask.shape
        stride = (w + 3) // 4 * 4  # GRAY8 rows are padded to 4 bytes
        rows = mask if stride == w else np.pad(mask, ((0, 0), (0, stride - w)))
        buf = Gst.Buffer.new_wrapped(np.ascontiguousarray(rows).tobytes())
        buf.pts, buf.dts, buf.duration = inbuf.pts, inbuf.dts, inbuf.duration
        buf.offset = inbuf.offset
        ret = self._mask_pad.push(buf)
        return Gst.FlowReturn.OK if ret == Gst.FlowReturn.NOT_LINKED else ret

    # ------------------------------------------------------------------ caps
    def _mode(self) -> str:
        return self._props["mode"] if self._props["mode"] in MODES else "overlay"

    def do_transform_caps(self, direction, caps, filter_):
        if self._mode() != "mask":
            out = caps.copy()  # overlay: what comes in goes out
        else:
            # Frame size and rate carry over; the pixel format is the only thing this element changes.
            to_src = direction == Gst.PadDirection.SINK
            caps = caps.intersect(_RAW if to_src else Gst.Caps.from_string("video/x-raw,format=GRAY8"))
            out = Gst.Caps.new_empty()
            for i in range(caps.get_size()):
                s = caps.get_structure(i).copy()
                s.set_value("format", "GRAY8" if to_src else Gst.ValueList(list(FORMATS)))
                out.append_structure(s)
        if filter_ is not None:
            out = filter_.intersect_full(out, Gst.CapsIntersectMode.FIRST)
        return out

    def do_get_unit_size(self, caps):
        info = GstVideo.VideoInfo.new_from_caps(caps)
        return (info is not None), (info.size if info is not None else 0)

    def do_set_caps(self, incaps, outcaps):
        in_info = GstVideo.VideoInfo.new_from_caps(incaps)
        out_info = GstVideo.VideoInfo.new_from_caps(outcaps)
        if in_info is None or out_info is None:
            return False
        fmt = incaps.get_structure(0).get_value("format")
        if fmt not in FORMATS:
            return False
        # Caps may change mid-stream (new resolution): the runtime maps masks to whatever size comes.
        self._in_info, self._out_info, self._format = in_info, out_info, fmt
        return True

    # ------------------------------------------------------------------ frames
    def _view(self, data, info, channels: int):
        np = self._rt["np"]
        h, w, stride = info.height, info.width, info.stride[0]
        shape = (h, w, channels) if channels > 1 else (h, w)
        strides = (stride, channels, 1) if channels > 1 else (stride, 1)
        return np.ndarray(shape, dtype=np.uint8, buffer=data, offset=info.offset[0], strides=strides)

    def do_transform(self, inbuf, outbuf):
        try:
            return self._transform(inbuf, outbuf)
        except Exception as exc:  # noqa: BLE001 - one error on the bus, never a traceback in stderr
            Gst.error("lrformerseg transform failed:\n" + traceback.format_exc())
            self._post_error(Gst.StreamError.FAILED,
                             f"lrformerseg: segmentation failed on frame {self._frames} "
                             f"({exc.__class__.__name__}: {exc})")
            return Gst.FlowReturn.ERROR

    def _transform(self, inbuf, outbuf):
        seg, rt = self._seg, self._rt
        if seg is None or self._in_info is None:
            self._post_error(Gst.CoreError.NEGOTIATION, "lrformerseg: frame arrived before the model or caps were ready")
            return Gst.FlowReturn.NOT_NEGOTIATED
        np, fmt = rt["np"], self._format
        t0 = time.perf_counter()
        ok_in, src = inbuf.map(Gst.MapFlags.READ)
        if not ok_in:
            raise RuntimeError("cannot map the input buffer")
        try:
            frame = self._view(src.data, self._in_info, 3)
            tensor, geo = rt["pre"][fmt](frame)
            batch = np.zeros((seg.batch_size, *tensor.shape), dtype=tensor.dtype) if seg.batch_size > 1 else None
            if batch is not None:
                batch[0] = tensor
            t1 = time.perf_counter()
            output = seg.infer(batch if batch is not None else tensor[None])
            t2 = time.perf_counter()
            mask = seg.postprocess(output, [geo])[0]
            ok_out, dst = outbuf.map(Gst.MapFlags.WRITE)
            if not ok_out:
                raise RuntimeError("cannot map the output buffer")
            try:
                if self._mode() == "mask":
                    out = self._view(dst.data, self._out_info, 1)
                    out[...] = mask
                else:
                    out = self._view(dst.data, self._out_info, 3)
                    out[...] = rt["overlay"].blend(frame, mask, rt["lut"][fmt], float(self._props["opacity"]))
                del out
            finally:
                outbuf.unmap(dst)
            del frame
        finally:
            inbuf.unmap(src)
        self._post_frame(inbuf, mask, (t2 - t1) * 1000.0, (time.perf_counter() - t0) * 1000.0)
        self._frames += 1
        if inbuf.pts != Gst.CLOCK_TIME_NONE:
            duration = inbuf.duration
            if duration == Gst.CLOCK_TIME_NONE and self._in_info.fps_n and self._in_info.fps_d:
                duration = Gst.SECOND * self._in_info.fps_d // self._in_info.fps_n
            self._last_end = inbuf.pts + (duration if duration != Gst.CLOCK_TIME_NONE else 0)
        if self._mode() == "both" and self._mask_pad is not None:
            return self._push_mask(inbuf, mask)
        return Gst.FlowReturn.OK

    def _post_frame(self, buf, mask, infer_ms: float, total_ms: float) -> None:
        np = self._rt["np"]
        counts = np.bincount(mask.ravel(), minlength=1)
        ids = np.flatnonzero(counts)
        ids = ids[np.argsort(-counts[ids], kind="stable")]  # largest area first
        shares = counts[ids] / mask.size
        names = self._seg.class_names
        pts = buf.pts if buf.pts != Gst.CLOCK_TIME_NONE else Gst.CLOCK_TIME_NONE
        fields = [
            f"frame=(guint64){self._frames}",
            f"pts=(guint64){pts}",
            f"width=(int){mask.shape[1]}",
            f"height=(int){mask.shape[0]}",
            "classes=(int)<" + ", ".join(str(int(i)) for i in ids) + ">",
            "shares=(double)<" + ", ".join(f"{s:.6f}" for s in shares) + ">",
            "names=(string)<" + ", ".join(_quote(names[i] if i < len(names) else f"class {i}") for i in ids) + ">",
            f"infer-ms=(double){infer_ms:.3f}",
            f"total-ms=(double){total_ms:.3f}",
        ]
        structure = Gst.Structure.new_from_string("lrformerseg, " + ", ".join(fields))
        if structure is not None:
            self.post_message(Gst.Message.new_element(self, structure))


_warning_filter_installed = False


def _hide_floating_critical() -> None:
    """Hide pygobject's "created element should be floating" critical, and only that message.

    gst_element_factory_create() expects a floating reference; pygobject sinks it when it wraps an
    element implemented in Python (pygobject merge request 129). Reference counting is still right:
    the message is harmless, but it would look like a failure in every host's stderr.
    """
    global _warning_filter_installed
    if _warning_filter_installed:
        return

    def handler(domain, level, message, *_):
        if "should be floating" in (message or ""):
            return
        GLib.log_default_handler(domain, level, message, None)

    GLib.log_set_handler("GStreamer", GLib.LogLevelFlags.LEVEL_CRITICAL, handler, None)
    _warning_filter_installed = True


def register():
    """The loader's (name, rank, type) triple; also hides the harmless floating-reference critical."""
    GObject.type_register(LrformerSeg)
    _hide_floating_critical()
    return ("lrformerseg", Gst.Rank.NONE, LrformerSeg)
