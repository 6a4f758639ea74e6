"""Run by the test suite with the Python that has PyGObject (the system one), not the venv's.

    python3 gst_probe.py VIDEO OUT_DIR [element properties...]

Runs `filesrc ! decodebin ! videoconvert ! lrformerseg ... ! fakesink` and records, with pad probes on
the element, every buffer's pts/duration/size and the caps on both sides; the first frames' bytes on
both sides go to OUT_DIR/in_N.raw and out_N.raw. Writes OUT_DIR/probe.json; exit 1 on a bus error.
"""
import json
import sys
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

KEEP = 3


def main() -> int:
    video, out_dir, props = sys.argv[1], Path(sys.argv[2]), " ".join(sys.argv[3:])
    Gst.init(None)
    pipeline = Gst.parse_launch(f'filesrc location="{video}" ! decodebin ! videoconvert ! '
                                f"video/x-raw,format=BGR ! lrformerseg name=seg {props} ! fakesink sync=false")
    seg = pipeline.get_by_name("seg")
    record = {"sink": [], "src": [], "caps": {}}

    def on_buffer(pad, info, side):
        buf = info.get_buffer()
        record[side].append([buf.pts, buf.duration, buf.get_size()])
        if len(record[side]) <= KEEP:
            name = "in" if side == "sink" else "out"
            (out_dir / f"{name}_{len(record[side]) - 1}.raw").write_bytes(buf.extract_dup(0, buf.get_size()))
        if side not in record["caps"]:
            record["caps"][side] = pad.get_current_caps().to_string()
        return Gst.PadProbeReturn.OK

    for side in ("sink", "src"):
        seg.get_static_pad(side).add_probe(Gst.PadProbeType.BUFFER, on_buffer, side)
    pipeline.set_state(Gst.State.PLAYING)
    msg = pipeline.get_bus().timed_pop_filtered(Gst.CLOCK_TIME_NONE, Gst.MessageType.ERROR | Gst.MessageType.EOS)
    pipeline.set_state(Gst.State.NULL)
    (out_dir / "probe.json").write_text(json.dumps(record))
    if msg.type == Gst.MessageType.ERROR:
        print("error:", msg.parse_error()[0].message, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
