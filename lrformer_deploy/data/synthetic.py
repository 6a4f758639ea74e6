"""Procedural segmentation scenes: a small, learnable stand-in dataset for demos and end-to-end tests.

Every scene is a textured background with a few objects drawn on top. Each class has its own shape AND
its own texture, while colours are random per instance, so a model has to look at shape and texture
rather than at colour:

    0 background  smooth two-colour gradient with low-frequency blotches
    1 disc        filled circle, shaded like a lit sphere
    2 box         rotated rectangle with a checkerboard
    3 triangle    triangle covered in a regular grid of dots
    4 ring        annulus (flat colour; its hole shows whatever lies behind it)
    5 band        a straight strip across the whole image, striped across its length (like a crosswalk)

Label maps hold class ids (uint8); 255 is reserved as the ignore index but the generator never needs it.
Everything is deterministic for a given seed (numpy's default_rng), and only numpy and cv2 are used.
Object sizes are given for a 256-pixel short side and scale with the image.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from lrformer_deploy.data.datasets import SYNTHETIC_CLASSES, get_dataset

CLASS_NAMES: tuple[str, ...] = SYNTHETIC_CLASSES
BACKGROUND, DISC, BOX, TRIANGLE, RING, BAND = range(6)
NUM_CLASSES = len(CLASS_NAMES)
IGNORE_INDEX = 255
DEFAULT_SIZE = (256, 256)  # (H, W)
META_FILE = "synthetic.json"  # written at the dataset root; the evaluator uses it to recognise the layout

Seed = int | Sequence[int]


@dataclass
class Shape:
    """One object of a scene, in image coordinates (pixels, float). dims depend on the class:
    disc (r,), box (half_w, half_h), ring (r_out, r_in), band (half_thickness,), triangle: 6 numbers,
    the local (u, v) of its three vertices."""

    cls: int
    cx: float
    cy: float
    angle: float
    dims: tuple[float, ...]
    colour: tuple[float, float, float]  # BGR 0..255
    colour2: tuple[float, float, float]  # second tone of the texture
    period: float  # texture period in pixels
    # Motion per video frame (ignored for still images).
    vx: float = 0.0
    vy: float = 0.0
    spin: float = 0.0


@dataclass
class Background:
    colour_a: tuple[float, float, float]
    colour_b: tuple[float, float, float]
    direction: float  # gradient direction, radians
    blotches: np.ndarray = field(repr=False)  # small grid of low-frequency noise, upsampled when rendered
    grain: float = 5.0  # std of per-pixel sensor noise


# ------------------------------------------------------------------------------------------ sampling
def _random_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(60, 255), rng.uniform(70, 255)]]], np.float32)
    bgr = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)[0, 0]
    return tuple(float(c) for c in bgr)


def _second_tone(rng: np.random.Generator, colour: tuple[float, float, float]) -> tuple[float, float, float]:
    # Same hue family, clearly different brightness: the texture must be visible whatever the colour.
    c = np.array(colour)
    if c.mean() > 110:
        out = c * rng.uniform(0.25, 0.5)
    else:
        out = c + (255 - c) * rng.uniform(0.5, 0.8)
    return tuple(float(v) for v in out)


def _sample_shape(rng: np.random.Generator, cls: int, cx: float, cy: float, scale: float) -> Shape:
    angle = rng.uniform(0, math.pi)
    if cls == DISC:
        dims: tuple[float, ...] = (rng.uniform(16, 44) * scale,)
        period = 0.0
    elif cls == BOX:
        dims = (rng.uniform(16, 46) * scale, rng.uniform(16, 46) * scale)
        period = rng.uniform(8, 14) * scale
    elif cls == RING:
        r_out = rng.uniform(26, 52) * scale
        dims = (r_out, r_out - rng.uniform(0.35, 0.5) * r_out)
        period = 0.0
    elif cls == TRIANGLE:
        r = rng.uniform(24, 52) * scale
        # Roughly equilateral (vertices about 120 degrees apart) so no sliver triangles.
        base = rng.uniform(0, 2 * math.pi)
        verts = []
        for k in range(3):
            a = base + k * 2 * math.pi / 3 + rng.uniform(-0.35, 0.35)
            rk = r * rng.uniform(0.85, 1.1)
            verts += [rk * math.cos(a), rk * math.sin(a)]
        dims = tuple(verts)
        period = rng.uniform(7, 11) * scale
    elif cls == BAND:
        dims = (rng.uniform(11, 20) * scale,)
        period = rng.uniform(10, 16) * scale
    else:
        raise ValueError(f"not an object class: {cls}")
    colour = _random_colour(rng)
    speed = rng.uniform(0.8, 2.5) * scale
    heading = rng.uniform(0, 2 * math.pi)
    return Shape(cls, cx, cy, angle, dims, colour, _second_tone(rng, colour), period,
                 vx=speed * math.cos(heading), vy=speed * math.sin(heading),
                 # A band spans the frame, so even a slow turn sweeps far: it turns 10x slower.
                 spin=rng.uniform(-0.03, 0.03) * (0.1 if cls == BAND else 1.0) if cls != DISC else 0.0)


def _sample_background(rng: np.random.Generator) -> Background:
    return Background(_random_colour(rng), _random_colour(rng), rng.uniform(0, 2 * math.pi),
                      rng.normal(0, 1, size=(5, 5)).astype(np.float32), grain=rng.uniform(2, 7))


def sample_layout(rng: np.random.Generator, size: tuple[int, int] = DEFAULT_SIZE, all_classes: bool = False
                  ) -> tuple[Background, list[Shape]]:
    """Random background and objects (drawing order: first is bottom) for an image of `size` (H, W).
    all_classes=True guarantees a band and at least one object of every class (used for the demo video)."""
    h, w = size
    scale = min(h, w) / 256.0
    background = _sample_background(rng)
    shapes: list[Shape] = []
    if all_classes or rng.random() < 0.6:
        shapes.append(_sample_shape(rng, BAND, rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h, scale))
    # Object sizes follow the short side, so wide images get proportionally more objects.
    n_objects = max(1, round(int(rng.integers(4, 9)) * (h * w) / (min(h, w) ** 2)))
    occupied = np.zeros((h, w), bool)
    yy, xx = _grid(size)
    object_classes = [DISC, BOX, TRIANGLE, RING]
    forced = [int(c) for c in rng.permutation(object_classes)] if all_classes else []
    for i in range(max(n_objects, len(forced))):
        cls = forced[i] if i < len(forced) else int(rng.choice(object_classes))
        # Rejection sampling keeps most of every object visible: heavy occlusion makes labels unlearnable.
        for _attempt in range(20):
            shape = _sample_shape(rng, cls, rng.uniform(0.05, 0.95) * w, rng.uniform(0.05, 0.95) * h, scale)
            mask = _shape_mask(shape, xx, yy)
            area = mask.sum()
            if area > 0 and (mask & occupied).sum() <= 0.3 * area:
                shapes.append(shape)
                occupied |= mask
                break
    return background, shapes


# ----------------------------------------------------------------------------------------- rendering
def _grid(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = size
    # Pixel centres, so shapes stay symmetric about their float centre.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy + 0.5, xx + 0.5


def _local(shape: Shape, xx: np.ndarray, yy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in the object's own rotated frame: textures and masks move and turn with the object."""
    c, s = math.cos(shape.angle), math.sin(shape.angle)
    dx, dy = xx - shape.cx, yy - shape.cy
    return dx * c + dy * s, -dx * s + dy * c


def _shape_mask(shape: Shape, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    u, v = _local(shape, xx, yy)
    if shape.cls == DISC:
        return u * u + v * v <= shape.dims[0] ** 2
    if shape.cls == RING:
        d2 = u * u + v * v
        return (d2 <= shape.dims[0] ** 2) & (d2 >= shape.dims[1] ** 2)
    if shape.cls == BOX:
        return (np.abs(u) <= shape.dims[0]) & (np.abs(v) <= shape.dims[1])
    if shape.cls == BAND:
        return np.abs(v) <= shape.dims[0]
    if shape.cls == TRIANGLE:
        p = shape.dims
        # Inside when the point lies on the same side of all three edges (sign of the cross products).
        sides = []
        for k in range(3):
            ax, ay, bx, by = p[2 * k], p[2 * k + 1], p[(2 * k + 2) % 6], p[(2 * k + 3) % 6]
            sides.append((bx - ax) * (v - ay) - (by - ay) * (u - ax))
        return ((sides[0] >= 0) & (sides[1] >= 0) & (sides[2] >= 0)) | (
            (sides[0] <= 0) & (sides[1] <= 0) & (sides[2] <= 0))
    raise ValueError(f"not an object class: {shape.cls}")


def _texture(shape: Shape, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """HxWx3 float colours of the object's texture (only read inside its mask)."""
    u, v = _local(shape, xx, yy)
    c1 = np.array(shape.colour, np.float32)
    c2 = np.array(shape.colour2, np.float32)
    if shape.cls == DISC:
        # Lambert shading of a sphere lit from the upper left: a smooth radial cue, no pattern.
        r = shape.dims[0]
        nu, nv = u / r, v / r
        nz = np.sqrt(np.clip(1 - nu * nu - nv * nv, 0, 1))
        light = np.clip(-0.5 * nu - 0.5 * nv + 0.7 * nz, 0, 1)
        return (c1 * (0.35 + 0.75 * light)[..., None]).astype(np.float32)
    if shape.cls == BOX:
        t = ((np.floor(u / shape.period) + np.floor(v / shape.period)) % 2)[..., None]
    elif shape.cls == TRIANGLE:
        p = shape.period
        du = np.mod(u, p) - p / 2
        dv = np.mod(v, p) - p / 2
        t = ((du * du + dv * dv) <= (0.3 * p) ** 2)[..., None].astype(np.float32)
    elif shape.cls == BAND:
        t = (np.mod(u, shape.period) < shape.period / 2)[..., None].astype(np.float32)
    else:  # RING: flat colour, its shape is the cue
        t = np.zeros(u.shape + (1,), np.float32)
    return (c1 * (1 - t) + c2 * t).astype(np.float32)


def _render_background(bg: Background, size: tuple[int, int], xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    h, w = size
    proj = (xx - w / 2) * math.cos(bg.direction) + (yy - h / 2) * math.sin(bg.direction)
    t = (proj / max(h, w) + 0.5).clip(0, 1)[..., None]
    image = np.array(bg.colour_a, np.float32) * (1 - t) + np.array(bg.colour_b, np.float32) * t
    blotches = cv2.resize(bg.blotches, (w, h), interpolation=cv2.INTER_CUBIC)
    return image + 18.0 * blotches[..., None]


def render(background: Background, shapes: Sequence[Shape], size: tuple[int, int] = DEFAULT_SIZE,
           noise_seed: Seed = 0) -> tuple[np.ndarray, np.ndarray]:
    """Draw a layout: returns (BGR uint8 HxWx3, label uint8 HxW). Later shapes cover earlier ones."""
    yy, xx = _grid(size)
    image = _render_background(background, size, xx, yy)
    label = np.full(size, BACKGROUND, np.uint8)
    for shape in shapes:
        mask = _shape_mask(shape, xx, yy)
        if not mask.any():
            continue
        image[mask] = _texture(shape, xx, yy)[mask]
        label[mask] = shape.cls
    # A slight blur and sensor grain, so edges and flat areas look like a camera image, not a drawing.
    image = cv2.GaussianBlur(image, (3, 3), 0.6)
    image += np.random.default_rng(noise_seed).normal(0, background.grain, image.shape).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), label


def generate_scene(seed: Seed, size: tuple[int, int] = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One random scene: (BGR uint8 HxWx3, label uint8 HxW of class ids). Same seed, same scene."""
    h, w = int(size[0]), int(size[1])
    if h < 32 or w < 32:
        raise ValueError(f"scene size must be at least 32x32, got {h}x{w}")
    rng = np.random.default_rng(seed)
    background, shapes = sample_layout(rng, (h, w))
    return render(background, shapes, (h, w), noise_seed=rng.integers(0, 2**32))


# -------------------------------------------------------------------------------------- dataset files
def _scene_seed(seed: int, split: str, index: int) -> list[int]:
    # Independent streams per (seed, split, index): train and val never share a scene.
    return [int(seed), {"train": 1, "val": 2}[split], int(index)]


def write_dataset(root: str | Path, n_train: int, n_val: int, size: tuple[int, int] = DEFAULT_SIZE,
                  seed: int = 0) -> Path:
    """Write root/images/{train,val}/scene_NNNNNN.png and root/annotations/{train,val}/scene_NNNNNN.png
    (label png: class ids, 255 = ignore) plus root/synthetic.json describing the classes. Returns root."""
    root = Path(root)
    counts = {"train": int(n_train), "val": int(n_val)}
    for split, count in counts.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, label = generate_scene(_scene_seed(seed, split, i), size)
            name = f"scene_{i:06d}.png"
            cv2.imwrite(str(root / "images" / split / name), image)
            cv2.imwrite(str(root / "annotations" / split / name), label)
    preset = get_dataset("synthetic")
    meta = {
        "format": "lrformer-deploy-synthetic", "version": 1,
        "dataset": "synthetic", "class_names": list(CLASS_NAMES),
        "palette": [list(c) for c in preset.palette], "ignore_index": IGNORE_INDEX,
        "size": [int(size[0]), int(size[1])], "seed": int(seed), "counts": counts,
    }
    (root / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return root


# --------------------------------------------------------------------------------------------- video
def _advance(shape: Shape, size: tuple[int, int]) -> Shape:
    """Move a shape one frame; centres bounce off a margin inside the frame so objects stay in view."""
    h, w = size
    cx, cy, vx, vy = shape.cx + shape.vx, shape.cy + shape.vy, shape.vx, shape.vy
    if shape.cls == BAND:
        # A band is infinite along its axis: only its offset across the axis matters, so slide it slowly.
        lo_x, hi_x, lo_y, hi_y = 0.2 * w, 0.8 * w, 0.2 * h, 0.8 * h
    else:
        lo_x, hi_x, lo_y, hi_y = 0.08 * w, 0.92 * w, 0.08 * h, 0.92 * h
    if not lo_x <= cx <= hi_x:
        vx = -vx
        cx = min(max(cx, lo_x), hi_x)
    if not lo_y <= cy <= hi_y:
        vy = -vy
        cy = min(max(cy, lo_y), hi_y)
    return replace(shape, cx=cx, cy=cy, vx=vx, vy=vy, angle=shape.angle + shape.spin)


def scene_frames(n_frames: int, size: tuple[int, int] = DEFAULT_SIZE, seed: Seed = 0):
    """Yield (BGR frame, label) pairs of one scene whose objects move smoothly from frame to frame."""
    rng = np.random.default_rng(seed)
    background, shapes = sample_layout(rng, size, all_classes=True)
    for shape in shapes:
        if shape.cls == BAND:
            shape.vx, shape.vy = shape.vx * 0.3, shape.vy * 0.3
    for frame in range(int(n_frames)):
        yield render(background, shapes, size, noise_seed=[int(np.asarray(seed).sum()), frame])
        shapes = [_advance(s, size) for s in shapes]


def render_video(path: str | Path, n_frames: int = 72, size: tuple[int, int] = (256, 448), fps: float = 12.0,
                 seed: Seed = 0) -> Path:
    """Write an mp4 (codec mp4v) of one synthetic scene with moving objects. size is (H, W)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = int(size[0]), int(size[1])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV could not open a video writer for {path}")
    try:
        for image, _label in scene_frames(n_frames, (h, w), seed):
            writer.write(image)
    finally:
        writer.release()
    return path


def colorize(label: np.ndarray, palette: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """Label map -> BGR image with the synthetic palette (ignore pixels black); handy for previews."""
    palette = palette or get_dataset("synthetic").palette
    lut = np.zeros((256, 3), np.uint8)
    for i, (r, g, b) in enumerate(palette):
        lut[i] = (b, g, r)
    return lut[label]
