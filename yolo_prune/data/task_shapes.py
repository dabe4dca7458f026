"""Built-in synthetic datasets for the segment, pose and obb tasks ("shapes-seg", "shapes-pose", "shapes-obb").

Each image shows one to four filled quadrilaterals (``square``, ``rectangle``, ``kite``), randomly rotated, that never
overlap and lie wholly inside the image, on the smooth background of the detection dataset (`yolo_prune.data.shapes`),
so every label is exact:

* segment: the polygon of the shape's four corners (``cls x1 y1 ... x4 y4``);
* pose: the axis-aligned box and the four corners as keypoints, ``kpt_shape: [4, 3]``, ordered clockwise from the
  topmost corner, so a horizontal flip keeps the topmost one and reverses the rest (``flip_idx: [0, 3, 2, 1]``);
* obb: the rotated box of the shape (``cv2.minAreaRect``) as four corner points (``cls x1 y1 ... x4 y4``).

Like ``shapes.yaml`` they are generated on first use by `yolo_prune.data.builtin.resolve_data`
(``data=shapes-seg.yaml``), deterministically and in well under a second for the default sizes.

Examples:
    >>> from yolo_prune.data.task_shapes import make_task_dataset
    >>> yaml_path = make_task_dataset("my-seg", "segment", n_train=16, n_val=8, imgsz=128)
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

__all__ = ["TASK_CLASS_NAMES", "TASK_DATASETS", "make_task_dataset"]

TASK_CLASS_NAMES = ("square", "rectangle", "kite")
# name -> make_task_dataset() keyword arguments; resolved by yolo_prune.data.builtin.resolve_data like shapes.yaml
TASK_DATASETS: dict[str, dict] = {
    "shapes-seg.yaml": {"task": "segment", "n_train": 32, "n_val": 16, "imgsz": 128, "seed": 0},
    "shapes-pose.yaml": {"task": "pose", "n_train": 32, "n_val": 16, "imgsz": 128, "seed": 0},
    "shapes-obb.yaml": {"task": "obb", "n_train": 32, "n_val": 16, "imgsz": 128, "seed": 0},
}
TASK_GENERATOR_VERSION = 1  # bump whenever the pixels or labels produced for given parameters change
KPT_SHAPE = (4, 3)
FLIP_IDX = (0, 3, 2, 1)
SIZE_RANGE = (0.2, 0.45)  # shape diameter as a fraction of the image side
MAX_OBJECTS = 4


def _corners(cls: int, r: float, angle: float, rng: np.random.Generator) -> np.ndarray:
    """Four corners (4, 2) of a shape of radius ``r`` around the origin, rotated by ``angle``, in drawing order."""
    if cls == 0:  # square
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) / np.sqrt(2)
    elif cls == 1:  # rectangle, aspect 1.6 to 2.4
        a = rng.uniform(1.6, 2.4)
        pts = np.array([[-a, -1], [a, -1], [a, 1], [-a, 1]], np.float64) / np.hypot(a, 1)
    else:  # kite: one long and three short half-diagonals
        s = rng.uniform(0.45, 0.7)
        pts = np.array([[0, -1], [s, 0], [0, s], [-s, 0]], np.float64)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return pts @ rot.T * r


def _clockwise_from_top(pts: np.ndarray) -> np.ndarray:
    """Order corners clockwise on screen (y down), starting at the topmost one (ties: the leftmost)."""
    centre = pts.mean(0)
    order = np.argsort(np.arctan2(pts[:, 1] - centre[1], pts[:, 0] - centre[0]))  # clockwise on screen
    pts = pts[order]
    top = min(range(len(pts)), key=lambda i: (round(float(pts[i, 1]), 3), float(pts[i, 0])))
    return np.roll(pts, -top, axis=0)


def _render(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Draw one image; return it (uint8 BGR) and its objects as (class, corners in pixels ordered clockwise)."""
    from .shapes import _background

    img = _background(rng, size, clutter=False)
    placed: list[tuple[np.ndarray, float]] = []
    objects = []
    lo, hi = np.log(SIZE_RANGE[0] * size), np.log(SIZE_RANGE[1] * size)
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        cls = int(rng.integers(len(TASK_CLASS_NAMES)))
        r = float(np.exp(rng.uniform(lo, hi))) / 2
        corners = _corners(cls, r, rng.uniform(0, 2 * np.pi), rng)
        for _attempt in range(10):
            centre = rng.uniform(r + 1, size - r - 1, 2)
            if all(np.linalg.norm(centre - c) > r + rc + 2 for c, rc in placed):
                break
        else:
            continue  # no free place: skip this object
        placed.append((centre, r))
        pts = corners + centre
        colours = rng.uniform(0, 255, (8, 3))
        mean = img[int(centre[1]), int(centre[0])]
        colour = colours[np.argmax(np.linalg.norm(colours - mean, axis=1) > 80)]
        cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], tuple(float(c) for c in colour), cv2.LINE_AA, 4)
        objects.append((cls, _clockwise_from_top(pts)))
    img += rng.standard_normal((size, size, 1), dtype=np.float32) * np.float32(rng.uniform(1, 6))
    return (np.clip(img, 0, 255) + 0.5).astype(np.uint8), objects


def _label_line(task: str, cls: int, pts: np.ndarray, size: int) -> str:
    """One label row of ``task`` for a shape with corners ``pts`` (pixels) in an image of side ``size``."""
    n = np.clip(pts / size, 0.0, 1.0)
    if task == "segment":
        return f"{cls} " + " ".join(f"{v:.6f}" for v in n.reshape(-1))
    if task == "obb":
        box = np.clip(cv2.boxPoints(cv2.minAreaRect(pts.astype(np.float32))) / size, 0.0, 1.0)
        return f"{cls} " + " ".join(f"{v:.6f}" for v in box.reshape(-1))
    (x0, y0), (x1, y1) = n.min(0), n.max(0)
    kpts = " ".join(f"{x:.6f} {y:.6f} 2" for x, y in n)
    return f"{cls} {(x0 + x1) / 2:.6f} {(y0 + y1) / 2:.6f} {x1 - x0:.6f} {y1 - y0:.6f} {kpts}"


def make_task_dataset(
    root: str | Path, task: str, n_train: int = 32, n_val: int = 16, imgsz: int = 128, seed: int = 0
) -> Path:
    """Generate a shapes dataset for ``task`` (segment, pose or obb) in Ultralytics YOLO format under ``root``.

    Writes ``images/{train,val}/*.jpg``, ``labels/{train,val}/*.txt``, ``data.yaml`` (with ``kpt_shape`` and
    ``flip_idx`` for pose) and ``generator.json``, first into a hidden sibling folder renamed to ``root`` when complete.

    Args:
        root (str | Path): Dataset folder to create; it must not exist or be empty.
        task (str): ``segment``, ``pose`` or ``obb``.
        n_train (int): Number of training images.
        n_val (int): Number of validation images.
        imgsz (int): Side of the square images in pixels.
        seed (int): Random seed; the same arguments give byte-identical files.

    Returns:
        (Path): Path of the written data yaml.

    Raises:
        ValueError: On an unknown task.
        FileExistsError: If ``root`` exists and is not empty.
    """
    if task not in ("segment", "pose", "obb"):
        raise ValueError(f"unknown task '{task}' for a shapes dataset: use segment, pose or obb")
    root = Path(root).expanduser().resolve()
    from .shapes import staged_dataset

    with staged_dataset(root) as tmp:
        for split_id, (split, count) in enumerate((("train", n_train), ("val", n_val))):
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
            for i in range(count):
                image, objects = _render(np.random.default_rng([seed, 100 + split_id, i]), imgsz)
                ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
                if not ok:
                    raise RuntimeError("JPEG encoding failed")
                (tmp / "images" / split / f"{i:06d}.jpg").write_bytes(buf.tobytes())
                lines = "".join(_label_line(task, c, p, imgsz) + "\n" for c, p in objects)
                (tmp / "labels" / split / f"{i:06d}.txt").write_text(lines)
        params = {"task": task, "n_train": n_train, "n_val": n_val, "imgsz": imgsz, "seed": seed}
        info = {"generator": "yolo_prune.data.task_shapes.make_task_dataset", "version": TASK_GENERATOR_VERSION}
        (tmp / "generator.json").write_text(json.dumps({**info, "params": params}, indent=2) + "\n")
        names = "\n".join(f"  {i}: {n}" for i, n in enumerate(TASK_CLASS_NAMES))
        extra = f"kpt_shape: {list(KPT_SHAPE)}\nflip_idx: {list(FLIP_IDX)}\n" if task == "pose" else ""
        (tmp / "data.yaml").write_text(
            f"# yolo-prune synthetic shapes dataset for task {task}, generator v{TASK_GENERATOR_VERSION}, "
            f"{json.dumps(params)}\npath: {json.dumps(str(root))}\ntrain: images/train\nval: images/val\n{extra}"
            f"names:\n{names}\n"
        )
    return root / "data.yaml"
