"""Structured channel pruning of Ultralytics detection models with torch-pruning's dependency graph."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from ultralytics import YOLO
from ultralytics.utils import LOGGER, colorstr

from .checkpoint import load_yolo
from .importance import get_importance
from .rules import TracingPlan, check_supported, prepare_for_tracing

__all__ = ["PruneStats", "check_ratio", "prune", "prune_detection_model"]

PREFIX = colorstr("yolo-prune: ")


@dataclass
class PruneStats:
    """What one pruning pass did.

    Attributes:
        groups: Number of prunable channel groups found.
        channels_before: Prunable channels before pruning (summed over group roots).
        channels_removed: Channels removed.
        params_before: Parameters before pruning.
        params_after: Parameters after pruning.
    """

    groups: int
    channels_before: int
    channels_removed: int
    params_before: int
    params_after: int


def check_ratio(ratio: float) -> float:
    """Return ``ratio`` as a float in [0, 1), or raise a one-line ``ValueError``."""
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"ratio must be a number in [0, 1), got {ratio!r}") from None
    if not 0.0 <= value < 1.0:
        raise ValueError(f"ratio must be in [0, 1) (the fraction of prunable channels removed), got {value}")
    return value


def _keep_count(channels: int, ratio: float, round_to: int, min_channels: int) -> int:
    """Channels to keep in a group of ``channels``: rounded up to ``round_to``, at least ``min_channels``."""
    keep = math.ceil(channels * (1.0 - ratio) / round_to) * round_to
    return min(channels, max(keep, min_channels))


def _touches(graph: tp.DependencyGraph, group: tp.dependency.Group, frozen_in: set[nn.Module]) -> bool:
    """True if pruning ``group`` would change the input channels of a frozen module."""
    return any(dep.target.module in frozen_in and graph.is_in_channel_pruning_fn(dep.handler) for dep, _ in group)


def _out_modules(graph: tp.DependencyGraph, group: tp.dependency.Group) -> set[nn.Module]:
    """Modules whose output channels this group prunes."""
    return {dep.target.module for dep, _ in group if graph.is_out_channel_pruning_fn(dep.handler)}


def _plan_removals(
    graph: tp.DependencyGraph,
    groups: list[tp.dependency.Group],
    plan: TracingPlan,
    ratio: float,
    importance: tp.importance.Importance,
    round_to: int,
    min_channels: int,
) -> list[tuple[nn.Module, list[int]]]:
    """Decide, per group, which root channels go: the lowest-scored ones, twins pruned by equal counts."""
    counts = [len(g[0].idxs) - _keep_count(len(g[0].idxs), ratio, round_to, min_channels) for g in groups]
    owner: dict[nn.Module, int] = {}
    for i, group in enumerate(groups):
        for module in _out_modules(graph, group):
            owner[module] = i
    for first, second in plan.twins:
        i, j = owner.get(first), owner.get(second)
        if i is None or j is None:  # one half is frozen, so the other must keep its width too
            for k in (i, j):
                if k is not None:
                    counts[k] = 0
        elif i != j:
            counts[i] = counts[j] = min(counts[i], counts[j])
    removals = []
    for group, count in zip(groups, counts, strict=True):
        if count <= 0:
            continue
        scores = importance(group)
        if scores is None:
            continue
        order = torch.argsort(scores.detach().float().cpu(), stable=True)
        removals.append((group[0].dep.target.module, sorted(order[:count].tolist())))
    return removals


def prune_detection_model(
    model: nn.Module,
    ratio: float,
    importance: tp.importance.Importance,
    round_to: int = 8,
    min_channels: int | None = None,
    imgsz: int | None = None,
) -> PruneStats:
    """Prune an Ultralytics ``DetectionModel`` in place.

    Args:
        model: The detection model (``YOLO(...).model``); changed in place.
        ratio: Fraction of the channels of every prunable group to remove, in [0, 1).
        importance: A torch-pruning importance (see ``yolo_prune.importance.get_importance``).
        round_to: Kept widths are rounded up to a multiple of this.
        min_channels: No group is cut below this width (default: ``round_to``).
        imgsz: Image size of the tracing input (default: twice the largest stride).

    Returns:
        A ``PruneStats`` summary.
    """
    ratio = check_ratio(ratio)
    check_supported(model)
    round_to = max(1, int(round_to))
    min_channels = round_to if min_channels is None else max(1, int(min_channels))
    stride = int(max(getattr(model, "stride", torch.tensor([32])).tolist()))
    size = imgsz or 2 * stride
    device = next(model.parameters()).device
    example = torch.zeros(1, 3, size, size, device=device)
    params_before = sum(p.numel() for p in model.parameters())

    was_training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    plan = prepare_for_tracing(model)
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                model, example, unwrapped_parameters=plan.unwrapped or None, verbose=False
            )
            groups = [
                g
                for g in graph.get_all_groups(
                    ignored_layers=list(plan.frozen_out), root_module_types=(nn.Conv2d, nn.ConvTranspose2d)
                )
                if not _touches(graph, g, plan.frozen_in)
            ]
            removals = _plan_removals(graph, groups, plan, ratio, importance, round_to, min_channels)
            for root, idxs in removals:
                pruner = graph.get_pruner_of_module(root)
                graph.get_pruning_group(root, pruner.prune_out_channels, idxs).prune()
    finally:
        plan.restore()
    model.train(was_training)
    return PruneStats(
        groups=len(groups),
        channels_before=sum(len(g[0].idxs) for g in groups),
        channels_removed=sum(len(idxs) for _, idxs in removals),
        params_before=params_before,
        params_after=sum(p.numel() for p in model.parameters()),
    )


def _copy_yolo(yolo: YOLO) -> YOLO:
    """Deep-copy a ``YOLO`` wrapper (model included) without its cached predictor or trainer."""
    held = yolo.predictor, yolo.trainer
    yolo.predictor = yolo.trainer = None
    try:
        return copy.deepcopy(yolo)
    finally:
        yolo.predictor, yolo.trainer = held


def prune(
    model: YOLO | str,
    ratio: float = 0.5,
    method: str = "l2",
    round_to: int = 8,
    min_channels: int | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> YOLO:
    """Remove whole filters from a YOLO detection model; coupled layers shrink together.

    The input is never modified: a ``YOLO`` is deep-copied and a checkpoint file is only read.

    Args:
        model: An Ultralytics ``YOLO``, a path to a ``.pt`` checkpoint, or a model yaml such as ``"yolo11n.yaml"``.
        ratio: Fraction of prunable channels to remove, in [0, 1). ``0`` returns an equivalent model.
        method: Importance criterion (``l1``, ``l2``, ``random``; see ``IMPORTANCE_METHODS``).
        round_to: Kept widths are rounded up to a multiple of this (hardware-friendly channel counts).
        min_channels: No group is cut below this width (default: ``round_to``).
        seed: Seed for random criteria.
        verbose: Log a one-line summary.

    Returns:
        A new ``YOLO`` whose ``.model`` is the pruned network, made only of stock Ultralytics classes.

    Raises:
        ValueError: On a bad ``ratio``, unknown ``method``, unreadable model or unsupported model family.

    Examples:
        >>> from yolo_prune import prune
        >>> pruned = prune("yolo11n.yaml", ratio=0.5)
        >>> pruned.save("yolo11n-pruned.pt")
    """
    ratio = check_ratio(ratio)
    importance = get_importance(method)
    source = load_yolo(model)
    check_supported(source.model)
    pruned = _copy_yolo(source)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        stats = prune_detection_model(pruned.model, ratio, importance, round_to=round_to, min_channels=min_channels)
    if verbose:
        LOGGER.info(
            f"{PREFIX}removed {stats.channels_removed}/{stats.channels_before} channels in {stats.groups} groups "
            f"({method}, ratio={ratio}): {stats.params_before:,} -> {stats.params_after:,} parameters"
        )
    return pruned
