"""Built-in synthetic detection dataset ("shapes") in Ultralytics YOLO format.

The generator draws coloured geometric shapes on textured, cluttered backgrounds, with partial occlusion, blur and
sensor noise. It is deterministic: the same parameters give byte-identical files. Built-in names such as
``"shapes.yaml"`` are generated on first use into a cache folder by `resolve_data`, so every command that takes
``data=`` works offline without a download.

Two generator versions exist, chosen per dataset with ``version=`` (the ``"version"`` entry of `BUILTIN_DATASETS`);
a version's output never changes, new content gets a new version number:

* v2 (default; ``shapes.yaml``, ``shapes-tiny.yaml``): six classes, 1-5 objects of 12-50 % of the image side.
* v3 (``shapes-v3.yaml``, ``shapes-v3-small.yaml``, ``shapes-v3-tiny.yaml``): ten classes, up to 12 objects of 4-60 %
  of the side (largest placed first), textured backgrounds, more clutter and unlabelled distractor blobs, so that
  objects reach all three detection levels (strides 8, 16 and 32) at 320 px.

Examples:
    >>> from yolo_prune.data.builtin import resolve_data
    >>> from yolo_prune.data.shapes import make_shapes_dataset
    >>> yaml_path = make_shapes_dataset("my-shapes", n_train=64, n_val=16, imgsz=160, seed=1)
    >>> resolve_data("shapes-tiny.yaml")  # generated once into the cache, then reused
    '.../yolo-prune-shapes/shapes-tiny-g2-<hash>/data.yaml'
    >>> make_shapes_dataset("my-shapes-v3", n_train=64, n_val=16, imgsz=320, version=3)
    >>> resolve_data("coco8.yaml")  # any other name is returned unchanged
    'coco8.yaml'

Over 400 lines: both generator versions are drawn by one renderer whose every random draw is pinned, so that the v2
files stay byte-identical (tests hash them); splitting the renderer would put that at risk.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "BUILTIN_DATASETS",
    "CACHE_ENV",
    "CLASS_NAMES",
    "CLASS_NAMES_V3",
    "GENERATOR_VERSION",
    "GENERATOR_VERSIONS",
    "class_names",
    "dataset_cache_dir",
    "ensure_offline_font",
    "make_shapes_dataset",
    "staged_dataset",
]

# Default generator version. A version's pixels and labels for given parameters never change (cached folders are named
# after the version): new content gets a new version in GENERATOR_VERSIONS, selected per dataset with version=.
GENERATOR_VERSION = 2
GENERATOR_VERSIONS = (2, 3)
CLASS_NAMES = ("circle", "square", "triangle", "star", "cross", "ring")  # v2
CLASS_NAMES_V3 = (*CLASS_NAMES, "hexagon", "ellipse", "arrow", "crescent")  # v3: v2's six, then four more

# Single source of truth for the built-in datasets: name -> make_shapes_dataset() keyword arguments ("version" absent:
# GENERATOR_VERSION). datasets/*.yaml in the repository only describe these entries (a test keeps them in sync).
# shapes-v3-small.yaml has the same validation images as shapes-v3.yaml and the first 150 of its training images.
BUILTIN_DATASETS: dict[str, dict[str, int]] = {
    "shapes.yaml": {"n_train": 800, "n_val": 200, "imgsz": 320, "seed": 0},
    "shapes-tiny.yaml": {"n_train": 32, "n_val": 16, "imgsz": 128, "seed": 0},
    "shapes-v3.yaml": {"version": 3, "n_train": 1000, "n_val": 250, "imgsz": 320, "seed": 0},
    "shapes-v3-small.yaml": {"version": 3, "n_train": 150, "n_val": 250, "imgsz": 320, "seed": 0},
    "shapes-v3-tiny.yaml": {"version": 3, "n_train": 24, "n_val": 12, "imgsz": 128, "seed": 0},
}

CACHE_ENV = "YOLO_PRUNE_DATASETS"
DATA_YAML = "data.yaml"
INFO_FILE = "generator.json"
JPEG_QUALITY = 90
MIN_VISIBLE = 0.6  # every labelled object keeps at least this fraction of its pixels visible (occlusion, borders)
# v2 defaults (v3's are in _DESIGNS[3]):
SIZE_RANGE = (0.12, 0.5)  # object diameter as a fraction of the image side (log-uniform)
MAX_OBJECTS = 5  # 1 to MAX_OBJECTS objects per image (fewer when no acceptable place is found)
BACKGROUND_LINES = (0, 6)  # clutter behind the objects: straight lines, [low, high) per image
BACKGROUND_ARCS = (0, 3)  # clutter behind the objects: open arcs, [low, high) per image
FRONT_LINES = (0, 2)  # thin lines drawn in front of the objects, [low, high) per image


@dataclass(frozen=True)
class _Design:
    """What one generator version draws. The v2 values and code paths reproduce v2's files exactly.

    Attributes:
        classes (tuple[str, ...]): Class names, in label order.
        size_range (tuple[float, float]): Object diameters as fractions of the image side (log-uniform).
        max_objects (int): 1 to ``max_objects`` labelled objects are tried per image.
        background_lines (tuple[int, int]): Straight clutter lines behind the objects, [low, high) per image.
        background_arcs (tuple[int, int]): Open clutter arcs behind the objects, [low, high) per image.
        front_lines (tuple[int, int]): Thin lines in front of the objects, [low, high) per image.
        largest_first (bool): Draw all objects' sizes up front and place them largest first (small ones then occlude
            large ones, not the reverse), within `area_budget`; otherwise (v2) each object is drawn as it is placed.
        area_budget (float): With ``largest_first``, objects whose disc would bring the total disc area above this
            fraction of the image are skipped (many small objects, or a few large ones and some small ones).
        distractors (tuple[int, int]): Unlabelled blobs placed among the objects, [low, high) per image. They may hide
            parts of labelled objects (within `MIN_VISIBLE`).
        texture (bool): Add low-frequency noise and stripe/checker patches to the background.
    """

    classes: tuple[str, ...]
    size_range: tuple[float, float]
    max_objects: int
    background_lines: tuple[int, int]
    background_arcs: tuple[int, int]
    front_lines: tuple[int, int]
    largest_first: bool = False
    area_budget: float = 1.0
    distractors: tuple[int, int] = (0, 1)
    texture: bool = False


_DESIGNS: dict[int, _Design] = {
    2: _Design(CLASS_NAMES, SIZE_RANGE, MAX_OBJECTS, BACKGROUND_LINES, BACKGROUND_ARCS, FRONT_LINES),
    3: _Design(
        CLASS_NAMES_V3,
        size_range=(0.04, 0.6),
        max_objects=12,
        background_lines=(0, 9),
        background_arcs=(0, 5),
        front_lines=(0, 3),
        largest_first=True,
        area_budget=0.55,
        distractors=(0, 4),
        texture=True,
    ),
}


def class_names(version: int = GENERATOR_VERSION) -> tuple[str, ...]:
    """Return the class names that generator ``version`` labels, in label order.

    Args:
        version (int): A generator version from `GENERATOR_VERSIONS`.

    Returns:
        (tuple[str, ...]): `CLASS_NAMES` for v2, `CLASS_NAMES_V3` for v3.

    Raises:
        ValueError: On an unknown version.
    """
    if version not in _DESIGNS:
        raise ValueError(f"unknown shapes generator version {version!r}: use one of {GENERATOR_VERSIONS}")
    return _DESIGNS[version].classes


def _shape_mask(name: str, r: float, angle: float, rng: np.random.Generator) -> np.ndarray:
    """Render one shape of radius ``r`` centred in a square float mask (alpha in [0, 1], anti-aliased).

    Args:
        name (str): Class name from `CLASS_NAMES_V3`, or ``"blob"`` for an unlabelled distractor (`_blob_points`).
        r (float): Radius of the circle that (approximately) encloses the shape, in pixels.
        angle (float): Rotation in radians.
        rng (np.random.Generator): Source of the small per-shape variations (aspect, arm width, hole size).

    Returns:
        (np.ndarray): Array of shape (n, n), float32, with the shape centred at ((n - 1) / 2, (n - 1) / 2).
    """
    half = int(np.ceil(r * 1.15)) + 2
    n = 2 * half + 1
    mask = np.zeros((n, n), np.uint8)
    shift = 4  # sub-pixel precision for cv2 drawing
    scale = 1 << shift
    c = np.array([half, half], np.float64)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])

    def poly(points: np.ndarray) -> None:
        pts = np.round((points @ rot.T + c) * scale).astype(np.int32)
        cv2.fillPoly(mask, [pts], 255, cv2.LINE_AA, shift)

    def ellipse(ax: float, ay: float, value: int) -> None:
        axes = (int(round(ax * scale)), int(round(ay * scale)))
        centre = (int(round(half * scale)), int(round(half * scale)))
        cv2.ellipse(mask, centre, axes, float(np.degrees(angle)), 0, 360, value, -1, cv2.LINE_AA, shift)

    if name in ("circle", "ring"):
        aspect = rng.uniform(0.88, 1.0)
        ellipse(r, r * aspect, 255)
        if name == "ring":
            hole = rng.uniform(0.45, 0.65)
            ellipse(r * hole, r * aspect * hole, 0)
    elif name == "square":
        a = r / np.sqrt(1 + rng.uniform(0.8, 1.0) ** 2)
        b = a * rng.uniform(0.8, 1.0)
        poly(np.array([[-a, -b], [a, -b], [a, b], [-a, b]]))
    elif name == "triangle":
        t = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.15, 0.15, 3) - np.pi / 2
        poly(np.stack([np.cos(t), np.sin(t)], 1) * r)
    elif name == "star":
        t = np.arange(10) * np.pi / 5 - np.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, r, r * rng.uniform(0.38, 0.5))
        poly(np.stack([np.cos(t) * radii, np.sin(t) * radii], 1))
    elif name == "cross":
        w = r * rng.uniform(0.28, 0.4)
        poly(np.array([[-w, -r], [w, -r], [w, r], [-w, r]]))
        poly(np.array([[-r, -w], [r, -w], [r, w], [-r, w]]))
    elif name == "hexagon":  # regular: corners are what tells it from a circle
        t = np.arange(6) * np.pi / 3
        poly(np.stack([np.cos(t), np.sin(t)], 1) * r)
    elif name == "ellipse":  # clearly elongated (a circle's aspect is 0.88-1)
        ellipse(r, r * rng.uniform(0.4, 0.6), 255)
    elif name == "arrow":  # shaft and triangular head along +x
        neck, head, shaft = rng.uniform(-0.05, 0.2), rng.uniform(0.45, 0.6), rng.uniform(0.13, 0.2)
        outline = [[-1, -shaft], [neck, -shaft], [neck, -head], [1, 0], [neck, head], [neck, shaft], [-1, shaft]]
        poly(np.array(outline) * r)
    elif name == "crescent":  # a disc with an offset disc cut out that reaches past its edge
        ellipse(r, r, 255)
        bite, offset = rng.uniform(0.7, 0.85), rng.uniform(0.4, 0.55)
        centre = np.round((c + rot @ np.array([offset * r, 0.0])) * scale).astype(np.int32)
        cv2.circle(mask, (int(centre[0]), int(centre[1])), int(round(bite * r * scale)), 0, -1, cv2.LINE_AA, shift)
    elif name == "blob":
        poly(_blob_points(r, rng))
    else:
        raise ValueError(f"unknown shape {name!r}")
    return mask.astype(np.float32) / 255.0


def _blob_points(r: float, rng: np.random.Generator) -> np.ndarray:
    """Outline of an irregular, lumpy blob within radius ``r``: an unlabelled distractor unlike any class.

    Args:
        r (float): Largest distance of the outline from the centre, in pixels.
        rng (np.random.Generator): Random source for the lumps.

    Returns:
        (np.ndarray): Array of shape (32, 2), float64, the outline around the origin.
    """
    t = np.arange(32) * (2 * np.pi / 32)
    f = np.ones_like(t)
    for k, most in ((2, 0.25), (3, 0.25), (4, 0.1)):  # few, broad lumps: a potato, not a star or a cross
        f += rng.uniform(most / 3, most) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    radii = r * f / f.max()
    return np.stack([np.cos(t) * radii, np.sin(t) * radii], 1)


def _background(rng: np.random.Generator, size: int, clutter: bool = True, design: _Design = _DESIGNS[2]) -> np.ndarray:
    """Draw a textured, cluttered background: colour gradient, low-frequency blotches, lines and arcs.

    Args:
        rng (np.random.Generator): Random source.
        size (int): Image side in pixels.
        clutter (bool): Draw the lines and arcs (without them the random draws are the same, only nothing is drawn).
        design (_Design): Numbers of lines and arcs, and whether to add `_add_texture` (before the lines and arcs).

    Returns:
        (np.ndarray): Float32 BGR image of shape (size, size, 3), values roughly in [0, 255].
    """
    mid = max(size // 8, 8)  # gradient and blotches are smooth: draw them small, then upscale linearly
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    t = rng.uniform(0, 2 * np.pi)
    ramp = (np.arange(mid, dtype=np.float32) + 0.5) / mid - 0.5
    g = np.clip(ramp[None, :] * float(np.cos(t)) + ramp[:, None] * float(np.sin(t)) + 0.5, 0, 1)[..., None]
    k = int(rng.integers(3, 8))
    blotches = rng.normal(0, rng.uniform(10, 45), (k, k, 3)).astype(np.float32)
    small = c0 + (c1 - c0) * g + cv2.resize(blotches, (mid, mid), interpolation=cv2.INTER_CUBIC)
    img = cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)
    if design.texture:
        _add_texture(rng, img)
    for _ in range(int(rng.integers(*(design.background_lines if clutter else (0, 1))))):  # clutter: straight lines
        p = rng.integers(-size // 4, size + size // 4, 4)
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), colour, int(rng.integers(1, 4)), cv2.LINE_AA)
    for _ in range(int(rng.integers(*(design.background_arcs if clutter else (0, 1))))):  # clutter: open arcs
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        axes = tuple(int(v) for v in rng.integers(size // 20 + 1, size // 4 + 2, 2))
        start = float(rng.uniform(0, 360))
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        thickness = int(rng.integers(1, 3))
        cv2.ellipse(img, centre, axes, 0.0, start, start + rng.uniform(40, 200), colour, thickness, cv2.LINE_AA)
    return img


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 1) -> np.ndarray:
    """Low-frequency noise: a ``cells`` x ``cells`` grid of standard normal values upscaled smoothly to ``size``
    (cubic to a quarter of the size, then linear: smooth enough, and cheaper than cubic all the way).

    Args:
        rng (np.random.Generator): Random source.
        size (int): Output side in pixels.
        cells (int): Grid side; more cells give finer detail.
        channels (int): Independent noise channels.

    Returns:
        (np.ndarray): Float32 array of shape (size, size, channels), values of about unit spread.
    """
    grid = rng.standard_normal((cells, cells, channels), dtype=np.float32)
    mid = max(size // 4, cells)
    grid = cv2.resize(grid, (mid, mid), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_LINEAR).reshape(size, size, channels)


def _add_texture(rng: np.random.Generator, img: np.ndarray) -> None:
    """Add v3's background texture to ``img`` in place: coloured and grey low-frequency noise, then 0-2 patches of
    stripes or checkerboard with soft, irregular outlines (never geometric shapes that could pass for an object).

    Args:
        rng (np.random.Generator): Random source.
        img (np.ndarray): Float32 BGR image of shape (size, size, 3), modified in place.
    """
    size = img.shape[0]
    img += _smooth_noise(rng, size, int(rng.integers(4, 9)), 3) * np.float32(rng.uniform(5, 25))
    img += _smooth_noise(rng, size, int(rng.integers(12, 33))) * np.float32(rng.uniform(3, 15))
    coords = np.arange(size, dtype=np.float32)

    def wave(u: np.ndarray) -> np.ndarray:  # triangle wave in [-1, 1], period 1: exact arithmetic, unlike np.sin
        return np.abs(u - np.floor(u) - np.float32(0.5)) * np.float32(4) - np.float32(1)

    for _ in range(int(rng.integers(0, 3))):
        t = rng.uniform(0, np.pi)
        cos, sin = np.float32(np.cos(t)), np.float32(np.sin(t))
        period = np.float32(size * rng.uniform(0.012, 0.06) + 2)
        level = wave((coords[None, :] * cos + coords[:, None] * sin) / period)  # stripes
        if rng.uniform() < 0.5:  # checkerboard: the product of two perpendicular waves
            level *= wave((coords[:, None] * cos - coords[None, :] * sin) / period)
        level = np.clip(level * np.float32(2) + np.float32(0.5), 0, 1)
        c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        pattern = cv2.merge([c0[ch] + (c1[ch] - c0[ch]) * level for ch in range(3)])
        region = _smooth_noise(rng, size, int(rng.integers(2, 5)))  # soft blobby region of the image
        weight = np.clip((region - np.float32(rng.uniform(-0.3, 0.8))) * np.float32(2.5), 0, 1)
        weight *= np.float32(rng.uniform(0.35, 0.8))
        img += (pattern - img) * weight


Label = tuple[int, float, float, float, float]  # class, x_center, y_center, width, height (normalised)


def _objects(rng: np.random.Generator, size: int, design: _Design, clutter: bool) -> Iterator[tuple[int, float]]:
    """Yield the objects to place in one image, as (class index or -1 for a distractor blob, radius in pixels).

    v2 (``largest_first`` false) draws each object's class and size only when the previous one has been placed, as v2
    always did (its files depend on that order). v3 draws them all first and yields them largest first, skipping those
    that would exceed ``design.area_budget`` (never the largest labelled one).

    Args:
        rng (np.random.Generator): Random source for this image.
        size (int): Image side in pixels.
        design (_Design): The generator version's design.
        clutter (bool): Include distractor blobs.

    Yields:
        (tuple[int, float]): Class index (-1: unlabelled distractor) and radius of the next object to place.
    """
    lo, hi = np.log(design.size_range[0] * size), np.log(design.size_range[1] * size)
    if not design.largest_first:
        for _ in range(int(rng.integers(1, design.max_objects + 1))):
            cls = int(rng.integers(len(design.classes)))
            yield cls, float(np.exp(rng.uniform(lo, hi))) / 2
        return
    n = int(rng.integers(1, design.max_objects + 1))
    n_blobs = int(rng.integers(*design.distractors)) if clutter else 0
    classes = np.concatenate([rng.integers(len(design.classes), size=n), np.full(n_blobs, -1)])
    radii = np.exp(rng.uniform(lo, hi, n + n_blobs)) / 2
    budget, labelled = design.area_budget * size * size, False
    for j in np.argsort(-radii, kind="stable"):
        area = np.pi * radii[j] ** 2
        if area <= budget or (classes[j] >= 0 and not labelled):  # the largest labelled object is always tried
            budget -= area
            labelled |= bool(classes[j] >= 0)
            yield int(classes[j]), float(radii[j])


def _render_image(
    rng: np.random.Generator, size: int, design: _Design = _DESIGNS[2], clutter: bool = True
) -> tuple[np.ndarray, list[Label]]:
    """Render one image and its YOLO labels.

    Objects are placed one after another; a placement is rejected when it would leave any earlier labelled object (or
    itself, at the image border) with less than `MIN_VISIBLE` of its pixels visible. Boxes enclose the visible pixels.

    Args:
        rng (np.random.Generator): Random source for this image.
        size (int): Image side in pixels.
        design (_Design): The generator version's design (with any size range and object count overrides).
        clutter (bool): Draw lines and arcs behind and in front of the objects, and distractor blobs.

    Returns:
        (tuple[np.ndarray, list]): The uint8 BGR image and a list of (class, x_center, y_center, width, height)
            normalised to [0, 1].
    """
    img = _background(rng, size, clutter, design)
    owner = np.full((size, size), -1, np.int16)  # index of the object that owns each pixel
    classes: list[int] = []  # class of each object, -1 for a distractor
    areas: list[float] = []  # full pixel count of each object (also the part outside the image)
    visible: list[int] = []  # pixels of each object still visible
    rects: list[tuple[int, int, int, int]] = []  # in-image extent (x0, y0, x1, y1) of each object
    for cls, r in _objects(rng, size, design, clutter):
        alpha = _shape_mask(design.classes[cls] if cls >= 0 else "blob", r, rng.uniform(0, 2 * np.pi), rng)
        half = alpha.shape[0] // 2
        full = alpha >= 0.5
        area = float(full.sum())
        for _attempt in range(10):
            cx, cy = (int(v) for v in rng.integers(-int(r * 0.3), size + int(r * 0.3), 2))
            x0, y0 = cx - half, cy - half  # mask origin in image coordinates
            ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + 2 * half + 1, size), min(y0 + 2 * half + 1, size)
            if ix1 <= ix0 or iy1 <= iy0:
                continue
            sub = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
            cover = full[sub]
            n_cover = int(cover.sum())
            if n_cover < MIN_VISIBLE * area:
                continue  # too much of the new object would fall outside the image
            hidden = np.bincount(owner[iy0:iy1, ix0:ix1][cover] + 1, minlength=len(areas) + 1)[1:]
            if all(visible[j] - hidden[j] >= MIN_VISIBLE * areas[j] for j in range(len(areas)) if classes[j] >= 0):
                break
        else:
            continue  # no acceptable place for this object: skip it
        background = img[iy0:iy1, ix0:ix1]
        a = alpha[sub][..., None]
        mean = (background * a).sum((0, 1)) / max(float(a.sum()), 1.0)
        colours = rng.uniform(0, 255, (8, 3))
        colour = colours[np.argmax(np.linalg.norm(colours - mean, axis=1) > 70)]  # first one that contrasts
        t, k = rng.uniform(0, 2 * np.pi), rng.uniform(-0.35, 0.35) / (2 * r)
        xs = (np.arange(ix0, ix1, dtype=np.float32) - cx) * np.float32(k * np.cos(t))
        ys = (np.arange(iy0, iy1, dtype=np.float32) - cy) * np.float32(k * np.sin(t))
        shade = 1 + xs[None, :, None] + ys[:, None, None]  # linear shading across the object
        img[iy0:iy1, ix0:ix1] = background * (1 - a) + colour.astype(np.float32) * shade * a
        owner[iy0:iy1, ix0:ix1][cover] = len(areas)
        visible = [v - int(h) for v, h in zip(visible, hidden, strict=True)] + [n_cover]
        classes.append(cls)
        areas.append(area)
        rects.append((ix0, iy0, ix1, iy1))
    for _ in range(int(rng.integers(*(design.front_lines if clutter else (0, 1))))):  # thin lines in front
        p = rng.integers(0, size, 4)
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), colour, 1, cv2.LINE_AA)
    sigma = rng.uniform(0, 1.2)
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    noise = rng.standard_normal((size, size, 1), dtype=np.float32) * np.float32(rng.uniform(2, 12))
    img += noise  # grey sensor noise (one draw per pixel keeps generation fast)
    image = (np.clip(img, 0, 255, out=img) + 0.5).astype(np.uint8)

    labels = []
    for j, (cls, (rx0, ry0, rx1, ry1)) in enumerate(zip(classes, rects, strict=True)):
        if cls < 0:
            continue  # distractor: never labelled
        ys, xs = np.nonzero(owner[ry0:ry1, rx0:rx1] == j)
        if len(xs) == 0:
            continue
        x0, x1, y0, y1 = rx0 + xs.min(), rx0 + xs.max() + 1, ry0 + ys.min(), ry0 + ys.max() + 1
        if x1 - x0 < 3 or y1 - y0 < 3:
            continue
        labels.append((cls, (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size))
    return image, labels


def _render_sample(
    seed: int, split_id: int, index: int, size: int, design: _Design = _DESIGNS[2], clutter: bool = True
) -> tuple[np.ndarray, list[Label]]:
    """Render image ``index`` of split ``split_id`` (0 train, 1 val): it depends only on these and the arguments.

    Args:
        seed (int): Dataset seed.
        split_id (int): 0 for train, 1 for val.
        index (int): Image index within the split.
        size (int): Image side in pixels.
        design (_Design): The generator version's design (with any overrides).
        clutter (bool): See `_render_image`.

    Returns:
        (tuple[np.ndarray, list]): The uint8 BGR image and its labels (see `_render_image`).
    """
    return _render_image(np.random.default_rng([seed, split_id, index]), size, design, clutter)


def _label_text(labels: list[Label]) -> str:
    """Return the YOLO label file text for ``labels`` (one ``cls x y w h`` row each, 6 decimals)."""
    return "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels)


@contextlib.contextmanager
def staged_dataset(root: str | Path):
    """Yield a hidden sibling folder of ``root`` to write a dataset into; on success it is renamed to ``root``.

    Nothing half-written is ever visible at ``root``: any error removes the staging folder, and a ``root`` filled by
    another process in the meantime raises ``FileExistsError``.

    Args:
        root (str | Path): The dataset folder to create; it must not exist or be empty.

    Yields:
        (Path): The staging folder (not yet created).

    Raises:
        FileExistsError: If ``root`` exists and is not empty, before or after writing.
    """
    root = Path(root).expanduser().resolve()
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"dataset folder {root} exists and is not empty")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        if root.exists():
            root.rmdir()  # empty (checked above); fails if another process filled it meanwhile
        os.rename(tmp, root)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if root.exists() and any(root.iterdir()):
            raise FileExistsError(f"dataset folder {root} was created by another process") from e
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def make_shapes_dataset(
    root: str | Path,
    n_train: int = 800,
    n_val: int = 200,
    imgsz: int = 320,
    seed: int = 0,
    *,
    version: int = GENERATOR_VERSION,
    max_objects: int | None = None,
    min_size: float | None = None,
    max_size: float | None = None,
    clutter: bool = True,
) -> Path:
    """Generate the shapes detection dataset in Ultralytics YOLO format under ``root``.

    Writes ``images/{train,val}/*.jpg``, ``labels/{train,val}/*.txt``, ``data.yaml`` (absolute ``path``) and
    ``generator.json`` (version and parameters). Everything is first written to a hidden sibling folder that is renamed
    to ``root`` only when complete, so an interrupted run never leaves a dataset that looks complete. Image ``i`` of a
    split depends only on (seed, split, i) and the version and style arguments, so changing ``n_train`` leaves the
    validation images unchanged.

    Args:
        root (str | Path): Dataset folder to create; it must not exist or be empty.
        n_train (int): Number of training images.
        n_val (int): Number of validation images.
        imgsz (int): Side of the square images in pixels.
        seed (int): Random seed; the same arguments give byte-identical files.
        version (int): Generator version from `GENERATOR_VERSIONS`: 2 (six classes, 12-50 % of the side, 1-5 objects)
            or 3 (ten classes, 4-60 % of the side, up to 12 objects, textured background, distractors).
        max_objects (int | None): At most this many objects per image (``None``: the version's, 5 for v2, 12 for v3).
        min_size (float | None): Smallest object diameter as a fraction of the image side (``None``: the version's,
            0.12 for v2, 0.04 for v3).
        max_size (float | None): Largest object diameter as a fraction of the image side (``None``: the version's,
            0.5 for v2, 0.6 for v3).
        clutter (bool): Draw background lines and arcs, thin lines in front of the objects and (v3) distractor
            blobs. Fewer, larger objects on a clean background make an easy variant that a tiny model learns in
            seconds (the tests use one).

    Returns:
        (Path): Path of the written data yaml (``root / "data.yaml"``).

    Raises:
        ValueError: On an unknown version or invalid style arguments.
        FileExistsError: If ``root`` exists and is not empty (for example, another process finished first).

    Examples:
        >>> yaml_path = make_shapes_dataset("shapes-demo", n_train=100, n_val=20, imgsz=160)
        >>> yaml_path = make_shapes_dataset("shapes-v3-demo", n_train=100, n_val=20, imgsz=320, version=3)
    """
    root = Path(root).expanduser().resolve()
    if version not in _DESIGNS:
        raise ValueError(f"unknown shapes generator version {version!r}: use one of {GENERATOR_VERSIONS}")
    base = _DESIGNS[version]
    style = {
        "version": int(version),
        "max_objects": int(base.max_objects if max_objects is None else max_objects),
        "min_size": float(base.size_range[0] if min_size is None else min_size),
        "max_size": float(base.size_range[1] if max_size is None else max_size),
        "clutter": bool(clutter),
    }
    defaults = {"version": GENERATOR_VERSION, "max_objects": base.max_objects, "clutter": True}
    defaults |= {"min_size": base.size_range[0], "max_size": base.size_range[1]}
    if style["max_objects"] < 1 or not 0 < style["min_size"] <= style["max_size"] <= 1:
        raise ValueError(f"need max_objects >= 1 and 0 < min_size <= max_size <= 1, got {style}")
    design = replace(base, max_objects=style["max_objects"], size_range=(style["min_size"], style["max_size"]))
    with staged_dataset(root) as tmp:
        for split_id, (split, count) in enumerate((("train", n_train), ("val", n_val))):
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
            for i in range(count):
                image, labels = _render_sample(seed, split_id, i, imgsz, design, style["clutter"])
                ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                if not ok:
                    raise RuntimeError("JPEG encoding failed")
                (tmp / "images" / split / f"{i:06d}.jpg").write_bytes(buf.tobytes())
                (tmp / "labels" / split / f"{i:06d}.txt").write_text(_label_text(labels))
        params = {"n_train": n_train, "n_val": n_val, "imgsz": imgsz, "seed": seed}
        params |= {k: v for k, v in style.items() if v != defaults[k]}  # only what differs: default files unchanged
        generator = "yolo_prune.data.shapes.make_shapes_dataset"
        info = {"generator": generator, "version": version, "params": params}
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        names = "\n".join(f"  {i}: {n}" for i, n in enumerate(design.classes))
        (tmp / DATA_YAML).write_text(
            f"# yolo-prune synthetic shapes dataset, generator v{version}, {json.dumps(params)}\n"
            f"path: {json.dumps(str(root))}\ntrain: images/train\nval: images/val\nnames:\n{names}\n"
        )
    return root / DATA_YAML


def dataset_cache_dir() -> Path:
    """Return the folder where built-in datasets are generated.

    ``$YOLO_PRUNE_DATASETS`` if set, else ``<ultralytics DATASETS_DIR>/yolo-prune-shapes`` (the ``datasets_dir``
    setting, changed with ``yolo settings datasets_dir=...``).

    Returns:
        (Path): The cache folder (not created here).
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().resolve()
    from ultralytics.utils import DATASETS_DIR

    return Path(DATASETS_DIR) / "yolo-prune-shapes"


def ensure_offline_font() -> None:
    """Let Ultralytics' ``check_font()`` find ``Arial.ttf`` and ``Arial.Unicode.ttf`` offline, for this process only.

    ``check_font()`` looks in ``USER_CONFIG_DIR``, then in matplotlib's font list, then downloads. When neither has the
    font, matplotlib's bundled DejaVuSans.ttf is linked under those names into a temporary folder (removed when the
    process exits) and added to matplotlib's in-memory font list. Nothing is written to the user's Ultralytics config
    folder or to matplotlib's font cache.
    """
    import atexit
    import tempfile

    import matplotlib
    from matplotlib import font_manager
    from ultralytics.utils import USER_CONFIG_DIR

    src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    known = [f.fname for f in font_manager.fontManager.ttflist]
    names = [
        n
        for n in ("Arial.ttf", "Arial.Unicode.ttf")
        if not (Path(USER_CONFIG_DIR) / n).exists() and not any(n in f and os.path.exists(f) for f in known)
    ]
    if not names or not src.is_file():
        return
    folder = Path(tempfile.mkdtemp(prefix="yolo_prune_fonts_"))
    atexit.register(shutil.rmtree, folder, True)
    for name in names:
        try:
            (folder / name).symlink_to(src)
        except OSError:  # no symlinks (some Windows setups): a copy in the same temporary folder
            shutil.copyfile(src, folder / name)
        font_manager.fontManager.addfont(str(folder / name))
