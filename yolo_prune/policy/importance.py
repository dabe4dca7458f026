"""Pruning policy: which channels matter. Thin names over torch-pruning's own importance classes.

Magnitude-style criteria (``l1``, ``l2``, ``bn``, ``lamp``, ``fpgm``) and ``random`` only read the weights. The
gradient criteria (``taylor``, ``hessian``) also read ``param.grad``; `collect_gradients` fills it from a few batches
of the *training* split run through the model's real Ultralytics loss.

Decision written down (gradients and the tracing window): the rules in ``yolo_prune.rules.blocks`` give some blocks a
tracing forward in which ``cv1`` is replaced by two sliced copies (``_cv1a``/``_cv1b``), and the Detect head returns raw
per-level tensors, on which the Ultralytics loss cannot be computed. So gradients are collected with the real forward
and loss *before* the tracing window opens, returned as a plain ``{parameter name: tensor}`` dict, and
``prune_detection_model(gradients=...)`` writes them onto ``param.grad`` and slices the ``cv1`` gradients onto the
temporary twin convs, exactly as their weights were sliced. Because the dict is keyed by name, one calibration serves
any number of deep copies (the target searches and the sensitivity scan prune many copies).

Examples:
    >>> from yolo_prune.policy.importance import collect_gradients, get_importance
    >>> grads = collect_gradients(model, "shapes.yaml", method="taylor", batches=4, imgsz=320)
    >>> prune_detection_model(model, 0.3, get_importance("taylor"), gradients=grads)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from ..config.checks import GRADIENT_METHODS, check_int, check_method
from ..integration.args import torch_device

__all__ = ["GRADIENT_METHODS", "IMPORTANCE_METHODS", "collect_gradients", "get_importance", "needs_gradients"]

# name -> factory of a torch-pruning importance; each maps a dependency group to one score per channel. Scores are
# normalised per group (by their mean, or LAMP's own scheme), so they can also be ranked across groups.
IMPORTANCE_METHODS: dict[str, Callable[[], tp.importance.Importance]] = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "bn": tp.importance.BNScaleImportance,
    "lamp": lambda: tp.importance.LAMPImportance(p=2),
    "fpgm": lambda: tp.importance.FPGMImportance(p=2),
    "taylor": tp.importance.GroupTaylorImportance,
    "hessian": tp.importance.GroupHessianImportance,
    "random": tp.importance.RandomImportance,
}

# Methods that read ``param.grad`` (GRADIENT_METHODS, from yolo_prune.config.checks): first-order Taylor
# (|w * dL/dw|) and the OBD Hessian diagonal (w^2 * E[g^2]).


def get_importance(method: str) -> tp.importance.Importance:
    """Return the torch-pruning importance criterion called ``method``.

    Args:
        method: One of ``IMPORTANCE_METHODS`` (case-insensitive).

    Returns:
        A callable that scores the channels of a torch-pruning group.

    Raises:
        ValueError: If ``method`` is unknown.

    Examples:
        >>> get_importance("l2")(group)  # one score per channel of the group's root layer
    """
    return IMPORTANCE_METHODS[check_method(method)]()


def needs_gradients(method: str) -> bool:
    """Return True if ``method`` scores channels from gradients (then ``data`` is needed to prune).

    Raises:
        ValueError: If ``method`` is unknown.
    """
    return check_method(method) in GRADIENT_METHODS


def _calibration_batches(
    model: nn.Module, data: str, batches: int, batch: int, imgsz: int, device: torch.device
) -> Iterator[dict[str, Any]]:
    """Yield up to ``batches`` preprocessed batches of the training split, built with Ultralytics' own dataset code.

    Images are letterboxed without augmentation and taken in order, so a calibration is reproducible.
    """
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    from ..data.builtin import resolve_data

    info = check_det_dataset(resolve_data(data))
    task = getattr(model, "task", None) or "detect"  # segment/pose/obb datasets also load masks, keypoints, angles
    cfg = get_cfg(overrides={"imgsz": imgsz, "batch": batch, "data": str(data), "task": task})
    stride = int(max(getattr(model, "stride", torch.tensor([32])).tolist()))
    dataset = build_yolo_dataset(cfg, info["train"], batch, info, mode="calib", rect=False, stride=stride, fraction=1.0)
    loader = build_dataloader(dataset, batch, workers=0, shuffle=False, pin_memory=False, device=device)
    for item in itertools.islice(loader, min(batches, len(loader))):
        item["img"] = item["img"].to(device).float() / 255
        for k in ("batch_idx", "cls", "bboxes", "masks", "sem_masks", "keypoints"):
            if k in item:
                item[k] = item[k].to(device)
        yield item


def _single_images(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Split a collated batch into one-image batches (the Hessian needs per-sample gradients)."""
    for i in range(item["img"].shape[0]):
        keep = item["batch_idx"] == i
        sample = {
            "img": item["img"][i : i + 1],
            "batch_idx": torch.zeros_like(item["batch_idx"][keep]),
            "cls": item["cls"][keep],
            "bboxes": item["bboxes"][keep],
        }
        if "keypoints" in item:  # pose: one row per instance
            sample["keypoints"] = item["keypoints"][keep]
        for key in ("masks", "sem_masks"):  # segment (overlap_mask, the default) and YOLO26 semantic: one per image
            if key in item:
                sample[key] = item[key][i : i + 1]
        yield sample


def collect_gradients(
    model: nn.Module,
    data: str,
    method: str = "taylor",
    batches: int = 4,
    batch: int = 8,
    imgsz: int = 640,
    device: str | torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """Run training images through the Ultralytics loss and return per-parameter gradient statistics.

    The model runs its real forward in eval mode (BatchNorm statistics are used, not updated, so the model is left
    exactly as it was) and its own criterion (``model.init_criterion()`` with default hyperparameters from
    ``get_cfg``). For ``taylor`` the result is the mean gradient over ``batches`` batches; for ``hessian`` it is the
    mean squared *per-image* gradient (the diagonal Fisher approximation of the Hessian that torch-pruning's
    ``GroupHessianImportance`` expects in ``param.grad``; its own ``accumulate_grad`` is not used because it keys its
    running sums inconsistently in torch-pruning 1.6 and keeps only the last sample).

    Args:
        model: The ``DetectionModel``; its weights, buffers, ``args`` and ``criterion`` are left unchanged.
        data: Dataset yaml or built-in name (``shapes.yaml``); its ``train`` split is used.
        method: ``taylor`` or ``hessian``.
        batches: Number of batches (fewer if the training split is smaller).
        batch: Images per batch.
        imgsz: Image size.
        device: Where to run (default: where the model is); the model is moved back afterwards.

    Returns:
        ``{parameter name: tensor}`` on the CPU, for ``prune_detection_model(gradients=...)``.

    Raises:
        ValueError: If ``method`` is not a gradient method, ``batches < 1`` or the dataset has no training images.
    """
    key = check_method(method)
    if key not in GRADIENT_METHODS:
        raise ValueError(
            f"method '{method}' needs no gradients; gradient methods: {', '.join(sorted(GRADIENT_METHODS))}"
        )
    batches, batch = check_int(batches, "calib_batches", 1), check_int(batch, "calib_batch", 1)
    from ultralytics.cfg import get_cfg

    home = next(model.parameters()).device
    dev = torch_device(device, home)
    held = {name: model.__dict__[name] for name in ("args", "criterion") if name in model.__dict__}
    was_training = model.training
    params = dict(model.named_parameters())
    flags = {name: p.requires_grad for name, p in params.items()}
    sums: dict[str, torch.Tensor] = {}
    count = 0
    try:
        model.to(dev).eval()
        if (getattr(model, "task", None) or "detect") != "detect":
            # the raw training outputs of task heads (Pose26 sigmas, Proto26 semantic logits) feed their loss; only
            # the head's and proto's own flags change, so every BatchNorm stays in eval mode
            head = model.model[-1]
            for module in (head, getattr(head, "proto", None)):
                if module is not None:
                    module.training = True
        model.args = get_cfg()  # the criterion reads box/cls/dfl gains (and epochs for end-to-end heads) from here
        model.criterion = None
        for p in params.values():
            p.requires_grad_(True)
            p.grad = None
        for item in _calibration_batches(model, data, int(batches), int(batch), imgsz, dev):
            steps = _single_images(item) if key == "hessian" else (item,)
            for sample in steps:
                model.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    loss, _ = model.loss(sample)
                    loss.sum().backward()
                for name, p in params.items():
                    if p.grad is not None:
                        g = p.grad.detach().float()
                        g = g * g if key == "hessian" else g
                        sums[name] = sums[name] + g if name in sums else g.clone()
                count += 1
        if count == 0:
            raise ValueError(f"no training images found in '{data}' to collect gradients from")
        return {name: (s / count).cpu() for name, s in sums.items()}
    finally:
        model.zero_grad(set_to_none=True)
        for name, p in params.items():
            p.requires_grad_(flags[name])
        for name in ("args", "criterion"):
            model.__dict__.pop(name, None)
        model.__dict__.update(held)
        model.to(home).train(was_training)
