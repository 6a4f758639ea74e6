"""The work Ray Data runs: decode functions (tasks) and the stateful segmenter (one per actor).

Nothing here imports Ray: these are plain callables that `Dataset.map_batches` runs, so they can be
tested and reused without a cluster. Every stage takes and returns numpy batches (dict of columns).

Frame rows, the common currency between the stages:

    path         the input file (str)
    kind         "image" or "frame" (a frame of a video)
    stem         output name stem (the input file's stem)
    index        frame number in the video (0 for images)
    image        H x W x 3 uint8, BGR (empty 0 x 0 x 3 when `error` is set)
    error        "" or why this row could not be decoded
    range_start  first frame of the video task that made the row (-1 for images)
    range_rows   rows that task made, so the driver knows when a video is complete (1 for images)
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np

from lrformer_deploy.batch.outputs import Layout, mask_name, overlay_name, write_image
from lrformer_deploy.runtime.overlay import blend, palette_lut, with_legend_strip
from lrformer_deploy.runtime.preprocess import as_bgr
from lrformer_deploy.runtime.sources import header_size, pixels_over

_EMPTY = np.zeros((0, 0, 3), np.uint8)
RESULT_COLUMNS = ("path", "kind", "index", "error", "range_start", "range_rows")


def _stem(path: str) -> str:
    return PurePosixPath(path).stem if "://" in path else Path(path).stem


def _rows(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Column batch from row dicts; images stay an object array (frames may differ in size)."""
    out: dict[str, np.ndarray] = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        if key == "image":
            column = np.empty(len(values), dtype=object)
            column[:] = values
            out[key] = column
        else:
            out[key] = np.asarray(values)
    return out


def decode_images(batch: dict[str, np.ndarray], max_pixels: int | None = None) -> dict[str, np.ndarray]:
    """`read_binary_files(..., include_paths=True)` rows -> frame rows, decoded with OpenCV to BGR.

    OpenCV (not Pillow, which `read_images` uses) so pixels are exactly what `lrformer-infer` decodes;
    an undecodable file, or one whose header declares more than `max_pixels` pixels (checked before
    decoding), becomes a row with `error` set instead of failing the whole job."""
    rows = []
    for data, path in zip(batch["bytes"], batch["path"]):
        path = str(path)
        buf = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
        size = header_size(buf.tobytes()) if max_pixels and buf.size else None
        error = pixels_over(*size, max_pixels) if size else None
        image = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size and not error else None
        error = error or ("" if image is not None else ("empty file" if not buf.size
                                                         else "not a decodable image (corrupt or unsupported format)"))
        rows.append({"path": path, "kind": "image", "stem": _stem(path), "index": 0,
                     "image": image if image is not None else _EMPTY, "error": error,
                     "range_start": -1, "range_rows": 1})
    return _rows(rows)


def _open_at(path: str, start: int) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(path)
    if start > 0 and cap.isOpened():
        cap.set(cv2.CAP_PROP_POS_FRAMES, start)
        if int(cap.get(cv2.CAP_PROP_POS_FRAMES)) != start:
            # The container cannot seek by frame exactly: decode from the start instead (slower, exact).
            cap.release()
            cap = cv2.VideoCapture(path)
            for _ in range(start):
                if not cap.grab():
                    break
    return cap


def decode_video_ranges(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Video tasks (columns path, stem, start, count, total) -> frame rows, one per decoded frame.

    `count` frames from `start` (0 = to the end of the file). A task that finds fewer frames than the
    container promised adds one error row: the video is truncated or corrupt from that frame on."""
    rows: list[dict[str, Any]] = []
    for path, stem, start, count, total in zip(batch["path"], batch["stem"], batch["start"], batch["count"],
                                               batch["total"]):
        path, stem, start, count, total = str(path), str(stem), int(start), int(count), int(total)
        task: list[dict[str, Any]] = []
        cap = _open_at(path, start)
        try:
            index = start
            while count == 0 or index < start + count:
                ok, frame = cap.read() if cap.isOpened() else (False, None)
                if not ok or frame is None:
                    break
                task.append({"path": path, "kind": "frame", "stem": stem, "index": index, "image": frame,
                             "error": ""})
                index += 1
        finally:
            cap.release()
        if (count and index < start + count) or index == start:
            what = f"its container says {total} frames" if total else "no frames decoded"
            task.append({"path": path, "kind": "frame", "stem": stem, "index": index, "image": _EMPTY,
                         "error": f"video ends at frame {index}, {what} (truncated or corrupt)"})
        for row in task:
            row.update(range_start=start, range_rows=len(task))
        rows.extend(task)
    return _rows(rows)


class BatchSegmenter:
    """Stateful map_batches class: one `Segmenter` per Ray actor, created once in the actor.

    Input rows need `image` (H x W x 3 uint8, in `color` order: "BGR" from this module's decoders,
    "RGB" from `ray.data.read_images`) or `bytes` (an encoded image), and `path`. Other frame-row
    columns (see the module docstring) are used when present.

    With `output_dir`, masks (and overlays of images) are written there and the result rows are small:
    the RESULT_COLUMNS. Without it, the result rows carry the class-id `mask` instead.
    """

    def __init__(self, model: str | None = None, *, backend: str = "auto", device: str | None = None,
                 resize: str = "stretch", input_size: tuple[int, int] | None = None, threads: int | None = None,
                 output_dir: str | None = None, save_mask: bool = True, overlay: bool = False,
                 opacity: float = 0.5, legend: bool = False, color: str = "BGR",
                 run_started: float | None = None) -> None:
        """`run_started` (time.time() when the job began): an output file modified since then was written by
        this run already, by an actor that was killed before it could return the batch; Ray restarts the
        actor and retries the batch, and the retry leaves that file alone instead of writing it twice."""
        from lrformer_deploy.runtime.segmenter import Segmenter

        if color not in ("BGR", "RGB"):
            raise ValueError(f"color must be BGR or RGB, got {color!r}")
        self.segmenter = Segmenter(model, backend=backend, device=device, resize=resize, input_size=input_size,
                                   intra_op_threads=threads)
        self.layout = Layout(Path(output_dir), save_mask, overlay) if output_dir else None
        self.opacity, self.legend, self.color = opacity, legend, color
        self.run_started = run_started
        self.lut = palette_lut(self.segmenter.palette)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["path"])
        paths = [str(p) for p in batch["path"]]
        kinds = [str(k) for k in batch["kind"]] if "kind" in batch else ["image"] * n
        stems = [str(s) for s in batch["stem"]] if "stem" in batch else [_stem(p) for p in paths]
        indices = [int(i) for i in batch["index"]] if "index" in batch else [0] * n
        errors = [str(e) for e in batch["error"]] if "error" in batch else [""] * n
        images: list[np.ndarray | None] = [None] * n
        for i in range(n):
            if errors[i]:
                continue
            try:
                images[i] = self._image(batch, i)
            except Exception as exc:  # noqa: BLE001 - one bad row must not fail the batch
                errors[i] = _reason(exc)
        masks = self._segment(images, errors)
        if self.layout is not None:
            for i in range(n):
                if not errors[i]:
                    try:
                        self._write(kinds[i], stems[i], indices[i], images[i], masks[i])
                    except Exception as exc:  # noqa: BLE001 - e.g. disk full: reported per input
                        errors[i] = f"cannot write output: {_reason(exc)}"
        out = {"path": np.asarray(paths), "kind": np.asarray(kinds), "index": np.asarray(indices, dtype=np.int64),
               "error": np.asarray(errors),
               "range_start": np.asarray(batch["range_start"], dtype=np.int64) if "range_start" in batch
               else np.full(n, -1, dtype=np.int64),
               "range_rows": np.asarray(batch["range_rows"], dtype=np.int64) if "range_rows" in batch
               else np.ones(n, dtype=np.int64)}
        if self.layout is None:
            column = np.empty(n, dtype=object)
            column[:] = [m if m is not None else np.zeros((0, 0), np.uint8) for m in masks]
            out["mask"] = column
        return out

    def _image(self, batch: dict[str, np.ndarray], i: int) -> np.ndarray:
        if "image" in batch:
            image = np.asarray(batch["image"][i])
            if image.size == 0:
                raise ValueError("empty image")
            if self.color == "RGB" and image.ndim == 3 and image.shape[2] in (3, 4):
                image = image[:, :, 2::-1] if image.shape[2] == 3 else image[:, :, [2, 1, 0]]
            return as_bgr(np.ascontiguousarray(image))
        data = np.frombuffer(batch["bytes"][i], dtype=np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        if image is None:
            raise ValueError("not a decodable image (corrupt or unsupported format)")
        return image

    def _segment(self, images: list[np.ndarray | None], errors: list[str]) -> list[np.ndarray | None]:
        masks: list[np.ndarray | None] = [None] * len(images)
        good = [i for i, image in enumerate(images) if image is not None and not errors[i]]
        try:
            for i, mask in zip(good, self.segmenter.segment_batch([images[i] for i in good])):
                masks[i] = mask
        except Exception:  # noqa: BLE001 - find the row that breaks the batch, keep the rest
            for i in good:
                try:
                    masks[i] = self.segmenter(images[i])
                except Exception as exc:  # noqa: BLE001
                    errors[i] = f"segmentation failed: {_reason(exc)}"
        return masks

    def _written_this_run(self, path: Path) -> bool:
        if self.run_started is None:
            return False
        try:
            return path.stat().st_mtime >= self.run_started
        except OSError:
            return False

    def _write(self, kind: str, stem: str, index: int, image: np.ndarray, mask: np.ndarray) -> None:
        layout = self.layout
        if kind == "frame":
            # Overlay videos are encoded in order afterwards, from these masks (outputs.assemble_overlay_video).
            if layout.save_mask or layout.overlay:
                folder = layout.frame_mask_dir(stem)
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / mask_name(stem, index)
                if not self._written_this_run(path):
                    write_image(path, mask)
            return
        if layout.save_mask and not self._written_this_run(layout.mask_dir / mask_name(stem)):
            write_image(layout.mask_dir / mask_name(stem), mask)
        if layout.overlay and not self._written_this_run(layout.overlay_dir / overlay_name(stem, False)):
            drawn = blend(image, mask, self.lut, self.opacity)
            if self.legend:
                drawn = with_legend_strip(drawn, mask, self.segmenter.class_names, self.lut)
            write_image(layout.overlay_dir / overlay_name(stem, False), drawn)

    def __del__(self) -> None:
        seg = getattr(self, "segmenter", None)
        if seg is not None:
            try:
                seg.close()
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else exc.__class__.__name__)[:300]
