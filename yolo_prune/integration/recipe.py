"""The fine-tuning recipe: a learning rate derived from how the input checkpoint was trained.

A converged model ends its training at a tiny learning rate (Ultralytics decays to ``lr0 * lrf``, 1 % of the peak).
Restarting it with a fresh AdamW at a fixed ``lr0=0.002`` (the 0.4 recipe) moves every weight by about the learning
rate on each of the first steps, whatever the gradient. On 150 training images (10 batches an epoch), a YOLO11n
fine-tuned from COCO weights to mAP50-95 0.943 with Ultralytics' defaults (AdamW at lr0=0.001) fell to 0.284 after one
epoch of that recipe and was at 0.858 after ten (``benchmarks/results/small_data``). The learning rate the model was
trained with is the scale that matters: at 0.1 x its peak the same fine-tune stayed within 0.8 point and ended 0.5
above; at 0.4 x it dipped 3 points and ended level; and its 2x pruned copy recovered to 0.591 (0.1 x), 0.743 (0.4 x),
0.754 (1 x) and 0.724 (2 x) in ten epochs. 0.4 x serves both; the trainer keeps the start model when no epoch beats it
(`yolo_prune.integration.trainer.PrunedDetectionTrainer`). The checkpoint records that peak (``train_args``: the
optimizer and ``lr0`` Ultralytics resolved, or ``optimizer=auto`` in older files, resolved here), so the recipe follows
the model instead of one number for every model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_EPOCHS",
    "FALLBACK",
    "LR_FRACTION",
    "MIN_IMAGES",
    "count_images",
    "finetune_defaults",
    "finetune_epochs",
    "trained_optimizer",
]

LR_FRACTION = 0.4  # fine-tuning lr0 as a fraction of the peak lr the input model was trained with
# when the checkpoint records no training (a yaml, a foreign file): the recipe of the accuracy study
FALLBACK: dict[str, Any] = {"optimizer": "AdamW", "lr0": 0.002}
SHARED: dict[str, Any] = {"warmup_epochs": 0.5, "warmup_bias_lr": 0.0, "dis": 1.0}
# The fine-tuning budget when epochs= is not given: 10 epochs, raised on a small training set until the fine-tune sees
# MIN_IMAGES images (on 150 images, 10 epochs are 15 optimizer steps of batch 16 x 10; the 2x pruned small-data model
# recovered to 0.834 mAP50-95 in 10 epochs and to 0.90 in 30, benchmarks/results/small_data). On 800 images or more it
# stays 10 epochs.
DEFAULT_EPOCHS = 10
MIN_IMAGES = 4500


def trained_optimizer(train_args: dict | None, nc: int) -> tuple[str, float] | None:
    """Return the optimizer and peak learning rate a checkpoint was trained with, or None when it does not say.

    Ultralytics saves the optimizer and ``lr0`` it resolved. Older files may say ``optimizer=auto``, which their
    trainer resolved to SGD at 0.01 for runs past 10,000 iterations and AdamW at ``0.002 * 5 / (4 + nc)`` otherwise;
    the file does not say how many images it saw, so the smaller of the two (AdamW) is taken: a fine-tune that starts
    too gently loses less than one that starts too hard.

    Args:
        train_args: ``ckpt["train_args"]``.
        nc: The model's class count.

    Returns:
        ``(optimizer name, lr0)`` or None.

    Examples:
        >>> trained_optimizer({"optimizer": "AdamW", "lr0": 0.001}, nc=6)
        ('AdamW', 0.001)
        >>> trained_optimizer({"optimizer": "auto", "lr0": 0.01}, nc=80)
        ('AdamW', 0.000119)
    """
    args = train_args or {}
    name, lr0 = args.get("optimizer"), args.get("lr0")
    if not name or lr0 is None:
        return None
    if str(name).lower() == "auto":
        return "AdamW", round(0.002 * 5 / (4 + nc), 6)
    return str(name), float(lr0)


def finetune_defaults(train_args: dict | None, nc: int) -> tuple[dict[str, Any], str]:
    """Fine-tuning arguments for a model trained with ``train_args``, and a one-line reason for the log and report.

    The optimizer is the one the model was trained with, at `LR_FRACTION` of its peak learning rate; warm-up is
    short (half an epoch, biases from 0), and distillation (when used) weighs ``dis=1.0``. Any of them can be
    overridden on the command line.

    Examples:
        >>> finetune_defaults({"optimizer": "AdamW", "lr0": 0.001}, nc=6)[0]["lr0"]
        0.0004
    """
    trained = trained_optimizer(train_args, nc)
    if trained is None:
        reason = f"the model records no training: optimizer={FALLBACK['optimizer']} lr0={FALLBACK['lr0']}"
        return {**FALLBACK, **SHARED}, reason
    name, lr0 = trained
    lr = float(f"{lr0 * LR_FRACTION:.3g}")
    reason = f"optimizer={name} lr0={lr:g}: {LR_FRACTION:g} x the peak lr0={lr0:g} the model was trained with"
    return {"optimizer": name, "lr0": lr, **SHARED}, reason


def count_images(train: Any) -> int:
    """Number of images of a dataset split as Ultralytics lists it: a folder (searched recursively), a ``.txt`` of image
    paths, or a list of either."""
    from ultralytics.data.utils import IMG_FORMATS

    if isinstance(train, (list, tuple)):
        return sum(count_images(t) for t in train)
    path = Path(str(train))
    if path.is_dir():
        return sum(1 for p in path.rglob("*") if p.suffix[1:].lower() in IMG_FORMATS)
    if path.suffix == ".txt" and path.is_file():
        return sum(1 for line in path.read_text().splitlines() if line.strip())
    return 0


def finetune_epochs(epochs: int | None, train_images: int, min_images: int = MIN_IMAGES) -> tuple[int, str | None]:
    """The fine-tuning epochs per step, and a line for the log and report when they were chosen here.

    ``epochs`` given by the user is kept. Otherwise `DEFAULT_EPOCHS`, raised so that the fine-tune sees at least
    ``min_images`` training images (epochs mislead on small sets: 10 epochs of 150 images are 1,500 images).

    Examples:
        >>> finetune_epochs(None, 150)[0], finetune_epochs(None, 1000)[0], finetune_epochs(5, 150)[0]
        (30, 10, 5)
    """
    if epochs is not None:
        return int(epochs), None
    if train_images <= 0 or min_images <= 0 or DEFAULT_EPOCHS * train_images >= min_images:
        return DEFAULT_EPOCHS, None
    raised = math.ceil(min_images / train_images)
    return raised, (
        f"epochs={raised}: {DEFAULT_EPOCHS} epochs of {train_images} training images would see "
        f"{DEFAULT_EPOCHS * train_images}; raised to see at least {min_images} (epochs= sets it)"
    )
