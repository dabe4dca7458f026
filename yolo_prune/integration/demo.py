"""`yolo-prune demo`: the whole pipeline on the built-in shapes dataset, offline, in minutes on a CPU.

The demo trains a small baseline (``yolov8n.yaml`` from scratch) on ``shapes.yaml`` with the stock Ultralytics trainer,
or reuses one cached by an earlier demo with the same settings, then runs `yolo_prune.integration.pipeline.run_prune` on
it (2x fewer MACs shared out by a sensitivity scan, a few fine-tuning epochs) and writes the usual report
(``report.md``, ``pareto.png``, ...).

The baseline cache lives beside the generated dataset (``yolo_prune.data.shapes.dataset_cache_dir() / "demo-models"``),
one file per setting hash. It is copied in with ``os.replace`` only after training finished, so an interrupted training
is never reused.

Examples:
    >>> from yolo_prune.integration.demo import run_demo
    >>> run_dir = run_demo()  # full demo: about 10 minutes on a 2-core CPU
    >>> run_dir = run_demo(fast=True, project="/tmp/demo")  # seconds; for tests
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

__all__ = ["DEMO_DEFAULTS", "DEMO_SETTINGS", "baseline_checkpoint", "check_demo_args", "run_demo"]

DEMO_DEFAULTS: dict[str, Any] = {
    "fast": False,  # tiny dataset and image size, one epoch: a smoke test
    "baseline_epochs": None,  # epochs of the baseline training (None: the mode's setting)
    "project": "runs/prune",
    "name": "demo",
}

# Per mode: the baseline training and the prune run. Chosen by timing on a 2-core CPU (see the README).
DEMO_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "baseline": {
            "model": "yolov8n.yaml",
            "data": "shapes.yaml",
            "imgsz": 128,
            "epochs": 15,
            "batch": 16,
            "optimizer": "AdamW",
            "lr0": 0.004,
            "warmup_epochs": 1,
            "close_mosaic": 3,
            "seed": 0,
        },
        "prune": {
            "target_macs": 0.5,  # the product's defaults otherwise: sensitivity allocation, fine-tuning recipe
            "scan_images": 100,  # half the validation split: keeps the scan under 3 minutes on 2 cores
            "epochs": 4,
            "close_mosaic": 2,
            "runs": 50,
            "warmup": 5,
            "threads": 1,  # one thread times a 128 px model steadily (2 threads on 2 cores: 10-90 % ranges of 5x)
        },
    },
    "fast": {
        "baseline": {
            "model": "yolov8n.yaml",
            "data": "shapes-tiny.yaml",
            "imgsz": 64,
            "epochs": 1,
            "batch": 8,
            "close_mosaic": 0,
            "seed": 0,
        },
        "prune": {
            "target_macs": 0.5,
            "scan_ratios": (0.5,),
            "epochs": 1,
            "runs": 3,
            "warmup": 1,
            "backends": "torch",
            "reconstruct_images": 16,
        },
    },
}
# Shared by baseline and fine-tuning; keep demo runs quiet and light on a small CPU
COMMON_TRAIN = {"workers": 2, "plots": False, "device": "cpu", "amp": False}


def check_demo_args(overrides: dict[str, Any]) -> dict[str, Any]:
    """Check demo arguments: `DEMO_DEFAULTS` keys plus any `yolo-prune prune` argument except model and data.

    Args:
        overrides (dict[str, Any]): User arguments.

    Returns:
        (dict[str, Any]): The arguments for `yolo_prune.integration.pipeline.run_prune` (demo-only keys removed).

    Raises:
        ValueError: On an unknown key, ``model``/``data`` (the demo picks them) or a bad value.
    """
    from ..config.checks import check_bool, check_int
    from .pipeline import parse_prune_args

    for key in ("model", "data"):
        if key in overrides:
            raise ValueError(f"the demo chooses {key}= itself; use 'yolo-prune prune' for your own model and data")
    check_bool(overrides.get("fast", False), "fast")
    if overrides.get("baseline_epochs") is not None:
        check_int(overrides["baseline_epochs"], "baseline_epochs", 1)
    prune_args = {k: v for k, v in overrides.items() if k not in ("fast", "baseline_epochs")}
    try:
        parse_prune_args({"model": "demo.pt", "data": "shapes.yaml", **prune_args})
    except ValueError as e:
        if "unknown argument" in str(e):
            raise ValueError(f"{e} (demo: also {', '.join(DEMO_DEFAULTS)})") from None
        raise
    return prune_args


def _cache_key(settings: dict[str, Any]) -> str:
    """Return a short hash of the baseline settings, the dataset generator version and the Ultralytics version."""
    from ultralytics import __version__

    from ..data.shapes import BUILTIN_DATASETS, GENERATOR_VERSION

    blob = {
        **settings,
        "dataset": BUILTIN_DATASETS.get(settings["data"]),
        "generator": GENERATOR_VERSION,
        "ultralytics": __version__,
        "common": COMMON_TRAIN,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:10]


def baseline_checkpoint(settings: dict[str, Any]) -> Path:
    """Return the cached baseline for ``settings``, training it first if needed.

    Args:
        settings (dict[str, Any]): Ultralytics training arguments: ``model`` (yaml), ``data`` (built-in name), ...

    Returns:
        (Path): The cached ``.pt`` (stock Ultralytics checkpoint, trained with the stock trainer).
    """
    from ultralytics import YOLO
    from ultralytics.utils import LOGGER, colorstr

    from ..data.builtin import resolve_data
    from ..data.shapes import dataset_cache_dir

    prefix = colorstr("demo: ")
    folder = dataset_cache_dir() / "demo-models"
    stem = f"{Path(settings['model']).stem}-{Path(settings['data']).stem}-{_cache_key(settings)}"
    cached = folder / f"{stem}.pt"
    if cached.is_file():
        LOGGER.info(f"{prefix}reusing the cached baseline {cached}")
        return cached
    work = folder / f".train-{stem}-{uuid.uuid4().hex[:8]}"
    args = {k: v for k, v in settings.items() if k != "model"}
    args["data"] = resolve_data(args["data"])
    LOGGER.info(f"{prefix}training the baseline {settings['model']} for {settings['epochs']} epoch(s) (cached after)")
    try:
        yolo = YOLO(settings["model"])
        yolo.train(**COMMON_TRAIN, **args, project=str(work), name="train", exist_ok=True, verbose=False)
        best = Path(yolo.trainer.best)
        best = best if best.is_file() else Path(yolo.trainer.last)
        tmp = folder / f".{stem}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            shutil.copyfile(best, tmp)
            tmp.replace(cached)  # whole file or nothing: a half-trained baseline is never reused
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return cached


def run_demo(fast: bool = False, command: str | None = None, **overrides: Any) -> Path:
    """Train or reuse a baseline on the built-in shapes data, prune it to 2x fewer MACs, fine-tune, measure and report.

    Args:
        fast (bool): Tiny dataset, 64 px and one epoch each: a smoke test of the whole pipeline.
        command (str, optional): Command line recorded in the report.
        **overrides (Any): ``baseline_epochs``, and any `yolo_prune.integration.pipeline.run_prune` argument except
            ``model`` and ``data`` (e.g. ``ratio=0.6``, ``epochs=5``, ``project=...``, ``name=...``).

    Returns:
        (Path): The prune run folder (with ``report.md`` and ``pareto.png``).

    Raises:
        ValueError: On bad arguments.
    """
    import time

    from ultralytics.utils import LOGGER, colorstr

    from ..config.checks import check_output_folder
    from .pipeline import run_prune

    start = time.perf_counter()
    prune_args = check_demo_args({"fast": fast, **overrides})
    mode = DEMO_SETTINGS["fast" if fast else "full"]
    settings = dict(mode["baseline"])
    if overrides.get("baseline_epochs") is not None:
        settings["epochs"] = int(overrides["baseline_epochs"])
    if "imgsz" in prune_args:
        settings["imgsz"] = int(prune_args["imgsz"])
    check_output_folder(prune_args.get("project", DEMO_DEFAULTS["project"]))  # before training the baseline
    baseline = baseline_checkpoint(settings)
    args = {
        **COMMON_TRAIN,
        **{k: v for k, v in mode["prune"].items() if not (k == "target_macs" and "ratio" in prune_args)},
        "imgsz": settings["imgsz"],
        "batch": settings["batch"],
        "project": DEMO_DEFAULTS["project"],
        "name": DEMO_DEFAULTS["name"],
        **prune_args,
    }
    run_dir = run_prune(model=str(baseline), data=settings["data"], command=command, **args)
    LOGGER.info(f"{colorstr('demo: ')}done in {time.perf_counter() - start:.0f} s: {run_dir}")
    return run_dir
