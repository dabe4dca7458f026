"""Structured channel pruning of Ultralytics detection models with torch-pruning's dependency graph."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from ultralytics import YOLO
from ultralytics.utils import LOGGER, colorstr

from ..integration.args import renamed_kwargs
from ..integration.checkpoint import load_yolo
from ..rules.attention import check_attention, check_heads, head_scores, heads_to_keep, remove_heads, stream_tied
from ..rules.blocks import TracingPlan, check_supported, prepare_for_tracing
from .importance import collect_gradients, get_importance, needs_gradients

__all__ = [
    "PruneStats",
    "check_fraction",
    "check_pruned",
    "check_layer_ratios",
    "check_ratio",
    "prune",
    "prune_detection_model",
    "prune_seeded",
    "reference_shapes",
]

PREFIX = colorstr("yolo-prune: ")
CALIBRATION_PASSES = 3  # latency target: allocations timed against the unpruned network at most
CALIBRATION_TOLERANCE = 0.02  # a measured latency ratio this close to the target (or within its noise) is kept
GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # spreads the rounding thresholds of staggered rounding evenly over [0, 1)


@dataclass
class PruneStats:
    """What one pruning pass did.

    Attributes:
        groups: Number of prunable channel groups found.
        channels_before: Prunable channels before pruning (summed over group roots).
        channels_removed: Channels removed.
        params_before: Parameters before pruning.
        params_after: Parameters after pruning.
        heads_before: Attention heads (``Attention``/``AAttn``) before pruning; 0 with ``attention="keep"``.
        heads_removed: Attention heads removed.
    """

    groups: int
    channels_before: int
    channels_removed: int
    params_before: int
    params_after: int
    heads_before: int = 0
    heads_removed: int = 0


def check_fraction(value: float, name: str, meaning: str, zero_ok: bool, one_ok: bool) -> float:
    """Return ``value`` as a float in the interval ``[0|(0, 1]|1)``, or raise a one-line ``ValueError``.

    Args:
        value: The user's value.
        name: Argument name for the message.
        meaning: What the number means, for the message.
        zero_ok: Whether 0 is allowed.
        one_ok: Whether 1 is allowed.
    """
    interval = f"{'[' if zero_ok else '('}0, 1{']' if one_ok else ')'}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}") from None
    if not ((0.0 <= number if zero_ok else 0.0 < number) and (number <= 1.0 if one_ok else number < 1.0)):
        raise ValueError(f"{name} must be in {interval} ({meaning}), got {number}")
    return number


def check_ratio(ratio: float) -> float:
    """Return ``ratio`` as a float in [0, 1), or raise a one-line ``ValueError``."""
    return check_fraction(ratio, "ratio", "the fraction of prunable channels removed", zero_ok=True, one_ok=False)


def check_layer_ratios(layer_ratios: Mapping[int, float] | None) -> dict[int, float]:
    """Return ``{stage index: ratio}`` with checked values, or raise a one-line ``ValueError``."""
    if layer_ratios is None:
        return {}
    if not isinstance(layer_ratios, Mapping):
        raise ValueError(f"layer_ratios must be a dict {{layer index: ratio}}, got {type(layer_ratios).__name__}")
    out = {}
    for stage, value in layer_ratios.items():
        try:
            index = int(stage)
        except (TypeError, ValueError):
            raise ValueError(f"layer_ratios keys must be layer indices of model.model, got {stage!r}") from None
        out[index] = check_ratio(value)
    return out


def _check_max_ratio(max_ratio: float) -> float:
    """Return ``max_ratio`` as a float in (0, 1], or raise a one-line ``ValueError``."""
    meaning = "the largest fraction of one group removed"
    return check_fraction(max_ratio, "max_ratio", meaning, zero_ok=False, one_ok=True)


def _keep_count(channels: int, ratio: float, round_to: int, min_channels: int, phase: float = 0.0) -> int:
    """Channels to keep in a group of ``channels``: rounded up to ``round_to``, at least ``min_channels``.

    A ``phase`` in [0, 1) moves the rounding threshold: the width rounds up only past ``phase`` of a step. A ratio of
    0 keeps every channel, also when ``channels`` is not a multiple of ``round_to``.
    """
    if ratio <= 0.0:
        return channels
    keep = math.ceil(channels * (1.0 - ratio) / round_to - phase) * round_to
    return min(channels, max(keep, min_channels))


def _touches(graph: tp.DependencyGraph, group: tp.dependency.Group, frozen_in: set[nn.Module]) -> bool:
    """True if pruning ``group`` would change the input channels of a frozen module."""
    return any(dep.target.module in frozen_in and graph.is_in_channel_pruning_fn(dep.handler) for dep, _ in group)


def _out_modules(graph: tp.DependencyGraph, group: tp.dependency.Group) -> set[nn.Module]:
    """Modules whose output channels this group prunes."""
    return {dep.target.module for dep, _ in group if graph.is_out_channel_pruning_fn(dep.handler)}


def _stage_of(model: nn.Module) -> dict[nn.Module, int]:
    """Map every module (temporary tracing convs included) to the index of its top-level layer in ``model.model``."""
    return {module: i for i, layer in enumerate(model.model) for module in layer.modules()}


def _twin_units(
    graph: tp.DependencyGraph, groups: list[tp.dependency.Group], plan: TracingPlan
) -> tuple[list[list[int]], set[int]]:
    """Split group indices into units pruned by equal counts (twins together) and the set that must keep its width."""
    owner: dict[nn.Module, int] = {}
    for i, group in enumerate(groups):
        for module in _out_modules(graph, group):
            owner[module] = i
    fixed: set[int] = set()
    pairs = []
    for first, second in plan.twins:
        i, j = owner.get(first), owner.get(second)
        if i is None or j is None:  # one half is frozen, so the other must keep its width too
            fixed.update(k for k in (i, j) if k is not None)
        else:
            pairs.append((i, j))
    units = _join(len(groups), pairs)
    fixed = {k for unit in units if fixed.intersection(unit) for k in unit}
    return [unit for unit in units if not fixed.intersection(unit)], fixed


def _join(n: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    """Classes of ``range(n)`` joined by ``pairs`` (union-find), each ascending, ordered by their first member."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        parent[find(i)] = find(j)
    classes: dict[int, list[int]] = {}
    for i in range(n):
        classes.setdefault(find(i), []).append(i)
    return list(classes.values())


def _min_keep(channels: int, round_to: int, min_channels: int, max_ratio: float) -> int:
    """Fewest channels a group may keep under global allocation: ``min_channels``, ``max_ratio`` and ``round_to``."""
    return _keep_count(channels, max_ratio, round_to, max(min_channels, round_to))


def _global_counts(
    scores: list[torch.Tensor | None],
    units: list[list[int]],
    ratio: float,
    round_to: int,
    min_channels: int,
    max_ratio: float,
) -> dict[int, int]:
    """Removals per unit when ranking normalised scores across all groups, until ``ratio`` of the channels go."""
    steps, owners, costs, sizes = [], [], [], {}
    for u, unit in enumerate(units):
        if any(scores[i] is None for i in unit):
            continue
        size = min(len(scores[i]) for i in unit)
        sizes[u] = size
        cap = size - _min_keep(size, round_to, min_channels, max_ratio)
        if cap <= 0:
            continue
        ordered = torch.stack([torch.sort(scores[i][:size]).values for i in unit]).mean(0)  # k-th cheapest per twin
        steps.append(ordered[:cap])
        owners.append(torch.full((cap,), u))
        costs.append(torch.full((cap,), len(unit)))
    if not steps:
        return {}
    total = sum(sizes[u] * len(units[u]) for u in sizes)
    wanted = ratio * total
    order = torch.argsort(torch.cat(steps), stable=True)  # ascending steps within a unit keep each pick a prefix
    spent = torch.cumsum(torch.cat(costs)[order], 0)
    taken = int((spent < wanted).sum()) + (1 if wanted > 0 else 0)
    counts: dict[int, int] = {}
    for u in torch.cat(owners)[order][:taken].tolist():
        counts[u] = counts.get(u, 0) + 1
    out = {}
    for u, raw in counts.items():  # round the kept width to the nearest allowed multiple of round_to
        size = sizes[u]
        keep = int(round((size - raw) / round_to)) * round_to
        out[u] = size - min(size, max(keep, _min_keep(size, round_to, min_channels, max_ratio)))
    return out


def _plan_removals(
    graph: tp.DependencyGraph,
    groups: list[tp.dependency.Group],
    plan: TracingPlan,
    ratio: float | list[float],
    importance: tp.importance.Importance,
    round_to: int,
    min_channels: int,
    global_pruning: bool = False,
    max_ratio: float = 0.9,
    staggered: bool = False,
    forced: Mapping[int, int] | None = None,
) -> list[tuple[nn.Module, list[int]]]:
    """Decide, per group, which root channels go: the lowest-scored ones, twins pruned by equal counts.

    ``ratio`` is one value, or one per group (layer ratios). With ``global_pruning`` the counts come from ranking the
    normalised scores of all groups together instead, until ``ratio`` of all their channels are removed.
    ``staggered`` gives each unit its own rounding threshold (a golden-ratio sequence), so that widths do not all
    change at the same ratios. ``forced`` maps group indices to the exact width their unit keeps (the stream of an
    ``Attention`` that loses heads); those units are left out of the ratio and the global ranking.
    """
    ratios = [ratio] * len(groups) if isinstance(ratio, (int, float)) else list(ratio)
    units, fixed = _twin_units(graph, groups, plan)
    forced = dict(forced or {})
    counts = [0] * len(groups)
    scores: list[torch.Tensor | None] = [None] * len(groups)

    def score(i: int) -> torch.Tensor | None:
        if scores[i] is None:
            s = importance(groups[i])
            scores[i] = None if s is None else torch.nan_to_num(s.detach().float().cpu(), nan=0.0)
        return scores[i]

    free = [unit for unit in units if not forced.keys() & set(unit)]
    for unit in units:
        widths = {forced[i] for i in unit if i in forced}
        if widths:  # _plan_heads gives every group of a unit the same width
            keep = min(widths)
            count = min(len(groups[i][0].idxs) for i in unit) - keep
            for i in unit:
                counts[i] = count
    if global_pruning:
        for unit in free:
            for i in unit:
                score(i)
        for u, count in _global_counts(scores, free, ratios[0], round_to, min_channels, max_ratio).items():
            for i in free[u]:
                counts[i] = count
    else:
        for u, unit in enumerate(units):
            if forced.keys() & set(unit):
                continue
            phase = (u * GOLDEN) % 1.0 if staggered else 0.0
            count = min(
                len(groups[i][0].idxs) - _keep_count(len(groups[i][0].idxs), ratios[i], round_to, min_channels, phase)
                for i in unit
            )
            for i in unit:
                counts[i] = count
    removals = []
    for i, (group, count) in enumerate(zip(groups, counts, strict=True)):
        if i in forced and count > 0 and score(i) is None:  # the width must be met: fall back to weight magnitude
            scores[i] = tp.importance.GroupMagnitudeImportance(p=2)(group).detach().float().cpu()
        if count <= 0 or i in fixed or score(i) is None:
            continue
        removals.append((group[0].dep.target.module, _pick_channels(group, scores[i], count, plan.shared)))
    return [(root, idxs) for root, idxs in removals if idxs]


def _plan_heads(
    graph: tp.DependencyGraph,
    groups: list[tp.dependency.Group],
    plan: TracingPlan,
    stage_ratio: Callable[[nn.Module], float],
) -> tuple[list[tuple[nn.Module, list[int]]], dict[int, int]]:
    """Decide which heads each attention module of ``plan`` keeps, and the stream widths that this forces.

    Every module keeps `yolo_prune.rules.attention.heads_to_keep` of its heads at ``stage_ratio(module)``, the best by
    `yolo_prune.rules.attention.head_scores`. An ``Attention`` needs its stream (the group that prunes ``proj``'s
    output, and its twins) at exactly ``heads * head_dim`` channels (its whole width when no head goes): all attention
    modules on one stream keep the largest of their head counts, and none loses a head when that stream is not prunable.

    Returns:
        ``[(module, head indices to keep)]`` for modules that lose heads, and ``{group index: width}`` for the streams.
    """
    owner: dict[nn.Module, int] = {}
    for i, group in enumerate(groups):
        for module in _out_modules(graph, group):
            owner[module] = i
    units, fixed = _twin_units(graph, groups, plan)
    unit_of = {i: u for u, unit in enumerate(units) for i in unit}
    wanted = {m: heads_to_keep(m.num_heads, stage_ratio(m)) for m in plan.attention}
    on_stream: dict[int, list[nn.Module]] = {}
    for m in plan.attention:
        if stream_tied(m):
            g = owner.get(m.proj.conv)
            if g is None or g in fixed or g not in unit_of:
                wanted[m] = m.num_heads
            else:
                on_stream.setdefault(unit_of[g], []).append(m)
    forced: dict[int, int] = {}
    for u, modules in on_stream.items():
        keep = max(wanted[m] for m in modules)
        if len({(m.num_heads, m.head_dim) for m in modules}) > 1:
            keep = modules[0].num_heads  # attention modules of different shapes on one stream: leave them whole
        for m in modules:
            wanted[m] = keep
        # Forced even when no head goes: then the stream keeps its whole width, as the view in forward needs.
        forced.update({i: keep * modules[0].head_dim for i in units[u]})
    heads = []
    for m, keep in wanted.items():
        if keep < m.num_heads:
            best = torch.argsort(head_scores(m), descending=True, stable=True)[:keep]
            heads.append((m, sorted(best.tolist())))
    return heads, forced


def _tied_root_channels(group: tp.dependency.Group, shared: Mapping[nn.Module, int]) -> list[list[int]]:
    """Classes of root channels that reach the same channel of some layer, so must be removed together.

    GhostConv feeds channel ``i`` of its primary conv to outputs ``i`` and ``c2 / 2 + i``; a group rooted at a conv
    coupled with that output (a residual stream) sees two root channels for one channel of the primary conv. Removing
    only one of them would leave the layers disagreeing on widths. ``shared`` maps modules whose output channels are
    one channel space (see ``TracingPlan.shared``) to a common key. Most groups have only singletons.
    """
    first: dict[tuple[int, int, int], int] = {}
    pairs = []
    for item in group:
        module, handler = item.dep.target.module, item.dep.handler
        space = (shared[module], 0) if module in shared and "out" in handler.__name__ else (id(module), id(handler))
        for idx, root in zip(item.idxs, getattr(item, "root_idxs", item.idxs), strict=True):
            key = (*space, int(idx))
            if key in first:
                pairs.append((int(root), first[key]))
            else:
                first[key] = int(root)
    return _join(len(group[0].idxs), pairs)


def _pick_channels(
    group: tp.dependency.Group, scores: torch.Tensor, count: int, shared: Mapping[nn.Module, int]
) -> list[int]:
    """The ``count`` lowest-scored root channels of ``group``; tied channels go together (whole classes, at most
    ``count`` channels in all, ranked by mean score)."""
    classes = _tied_root_channels(group, shared)
    if all(len(c) == 1 for c in classes):
        return sorted(torch.argsort(scores, stable=True)[:count].tolist())
    means = torch.stack([scores[c].mean() for c in classes])
    picked: list[int] = []
    for k in torch.argsort(means, stable=True).tolist():
        if len(picked) + len(classes[k]) <= count:
            picked.extend(classes[k])
    return sorted(picked)


def _apply_gradients(model: nn.Module, gradients: Mapping[str, torch.Tensor]) -> None:
    """Write collected gradients onto ``param.grad`` (see ``yolo_prune.policy.importance.collect_gradients``)."""
    for name, p in model.named_parameters():
        g = gradients.get(name)
        if g is None:
            continue
        if tuple(g.shape) != tuple(p.shape):
            raise ValueError(f"gradients do not match the model: '{name}' is {tuple(p.shape)}, got {tuple(g.shape)}")
        p.grad = g.to(p.device, p.dtype).clone()


def _slice_twin_gradients(model: nn.Module) -> None:
    """Give the temporary twin convs ``_cv1a``/``_cv1b`` the gradient slices of the ``cv1`` they were sliced from."""
    for block in model.modules():
        halves = getattr(block, "_cv1a", None), getattr(block, "_cv1b", None)
        if halves[0] is None or halves[1] is None:
            continue
        width = halves[0].conv.out_channels
        for k, half in enumerate(halves):
            for path in ("conv.weight", "conv.bias", "bn.weight", "bn.bias"):
                source, target = (_parameter(m, path) for m in (block.cv1, half))
                if source is not None and target is not None and source.grad is not None:
                    target.grad = source.grad[k * width : (k + 1) * width].clone()


def _parameter(module: nn.Module, path: str) -> nn.Parameter | None:
    """Return the parameter at dotted ``path`` under ``module``, or None."""
    for name in path.split("."):
        module = getattr(module, name, None)
    return module if isinstance(module, nn.Parameter) else None


def prune_detection_model(
    model: nn.Module,
    ratio: float,
    importance: tp.importance.Importance,
    round_to: int = 8,
    min_channels: int | None = None,
    imgsz: int | None = None,
    *,
    global_pruning: bool = False,
    max_ratio: float = 0.9,
    layer_ratios: Mapping[int, float] | None = None,
    gradients: Mapping[str, torch.Tensor] | None = None,
    staggered: bool = False,
    attention: str = "heads",
) -> PruneStats:
    """Prune an Ultralytics ``DetectionModel`` in place.

    Args:
        model: The detection model (``YOLO(...).model``); changed in place.
        ratio: Fraction of the prunable channels to remove, in [0, 1): of every group (per-layer uniform), or of all
            groups together (``global_pruning``). With ``layer_ratios``, the ratio of the layers not listed there.
        importance: A torch-pruning importance (see ``yolo_prune.policy.importance.get_importance``).
        round_to: Kept widths are rounded to a multiple of this.
        min_channels: No group is cut below this width (default: ``round_to``).
        imgsz: Image size of the tracing input (default: twice the largest stride).
        global_pruning: Rank normalised channel scores across all groups instead of cutting each group by ``ratio``.
        max_ratio: With ``global_pruning``, the largest fraction of any one group that may be removed.
        layer_ratios: ``{index in model.model: ratio}`` for groups whose root conv lies in that top-level layer
            (``{4: 0.5}`` with ``ratio=0`` prunes layer 4 alone). Not combined with ``global_pruning``.
        gradients: ``{parameter name: gradient statistic}`` for gradient criteria (taylor, hessian), from
            ``yolo_prune.policy.importance.collect_gradients``; written onto ``param.grad`` (and sliced onto the
            temporary twin convs) for the duration of the call.
        staggered: Per-layer-uniform mode only: give each group its own rounding threshold instead of rounding every
            kept width up. Widths stay multiples of ``round_to``, but they no longer all change at the same ratios,
            so the cost falls smoothly with ``ratio`` (the target searches use it).
        attention: ``heads`` (default): attention modules (``Attention``, ``AAttn``) lose whole heads at the ratio of
            their layer, and the stream around them is pruned; ``keep``: attention and its stream keep their widths.
            See ``yolo_prune.rules.blocks``.

    Returns:
        A ``PruneStats`` summary.

    Raises:
        ValueError: On a bad ratio, ``layer_ratios`` together with ``global_pruning``, gradients that do not match the
            model, or an unsupported model; also when the result would be broken (a width of 0, a failing forward
            in eval or train mode, changed output shapes), naming the block: the model is then left broken in
            place, so prune a copy (as ``prune()`` does).
    """
    ratio = check_ratio(ratio)
    layer_ratios = check_layer_ratios(layer_ratios)
    if global_pruning and layer_ratios:
        raise ValueError("layer_ratios sets the ratio of each layer, so it cannot be combined with global_pruning")
    max_ratio = _check_max_ratio(max_ratio)
    attention = check_attention(attention)
    check_supported(model)
    round_to = max(1, int(round_to))
    min_channels = round_to if min_channels is None else max(1, int(min_channels))
    stride = int(max(getattr(model, "stride", torch.tensor([32])).tolist()))
    size = imgsz or 2 * stride
    device = next(model.parameters()).device
    example = torch.zeros(1, 3, size, size, device=device)
    params_before = sum(p.numel() for p in model.parameters())
    reference = reference_shapes(model, example)  # checked again after pruning: a broken model is never returned

    was_training = model.training
    # torch-pruning replaces pruned parameters by new ones, so the flags are kept by name; restored even on an error
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    plan = None
    try:
        if gradients is not None:
            _apply_gradients(model, gradients)
        plan = prepare_for_tracing(model, attention)
        _slice_twin_gradients(model)
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
            ratios: float | list[float] = ratio
            stage = _stage_of(model)
            if layer_ratios:
                ratios = [layer_ratios.get(stage.get(g[0].dep.target.module, -1), ratio) for g in groups]
            heads, forced = _plan_heads(graph, groups, plan, lambda m: layer_ratios.get(stage.get(m, -1), ratio))
            removals = _plan_removals(
                graph,
                groups,
                plan,
                ratios,
                importance,
                round_to,
                min_channels,
                global_pruning,
                max_ratio,
                staggered,
                forced,
            )
            for root, idxs in removals:
                pruner = graph.get_pruner_of_module(root)
                graph.get_pruning_group(root, pruner.prune_out_channels, idxs).prune()
    finally:
        if plan is not None:
            plan.restore()
        for name, p in model.named_parameters():
            p.grad = None
            p.requires_grad_(requires_grad.get(name, True))
        model.train(was_training)
    names = {m: n for n, m in model.named_modules()}
    heads_before = sum(m.num_heads for m in plan.attention)
    heads_removed = sum(m.num_heads - len(keep) for m, keep in heads)
    for module, keep in heads:
        remove_heads(module, keep)
    for module in plan.attention:
        try:
            check_heads(module)
        except ValueError as e:
            raise ValueError(f"pruning broke attention '{names.get(module, '?')}': {e}; please report it") from e
    check_pruned(model, example, reference)
    return PruneStats(
        groups=len(groups),
        channels_before=sum(len(g[0].idxs) for g in groups),
        channels_removed=sum(len(idxs) for _, idxs in removals),
        params_before=params_before,
        params_after=sum(p.numel() for p in model.parameters()),
        heads_before=heads_before,
        heads_removed=heads_removed,
    )


def _shapes(output: Any) -> list[tuple[int, ...]]:
    """Flatten a model output (tensors in lists, tuples and dicts) into shapes; the head's ``feats`` (its input
    feature maps, whose widths pruning changes) are left out."""
    if isinstance(output, torch.Tensor):
        return [tuple(output.shape)]
    if isinstance(output, dict):
        return [s for key in sorted(output) if key != "feats" for s in _shapes(output[key])]
    if isinstance(output, (list, tuple)):
        return [s for item in output for s in _shapes(item)]
    return []


def _run_shapes(model: nn.Module, x: torch.Tensor, training: bool) -> list[tuple[int, ...]]:
    """Output shapes of one forward in train or eval mode; raises a ValueError naming the top-level block that failed.

    Weights, BatchNorm statistics and the module's mode are left as they were.
    """
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    entered: list[int] = []
    hooks = [
        layer.register_forward_pre_hook(lambda m, a, i=i: entered.append(i)) for i, layer in enumerate(model.model)
    ]
    was_training = model.training
    try:
        with torch.no_grad():
            return _shapes(model.train(training)(x))
    except Exception as e:  # noqa: BLE001 - any failure means the same: the network does not run
        i = entered[-1] if entered else 0
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"layer {i} ({type(model.model[i]).__name__}) fails in {'train' if training else 'eval'} mode: "
            f"{type(e).__name__}: {message[:200]}"
        ) from e
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers and b.shape == buffers[name].shape:
                    b.copy_(buffers[name])


def reference_shapes(model: nn.Module, x: torch.Tensor) -> dict[bool, list[tuple[int, ...]]]:
    """Output shapes of ``model`` in eval (``False``) and train (``True``) mode, for `check_pruned`.

    Args:
        model: An Ultralytics ``DetectionModel``.
        x: A small input batch.

    Raises:
        ValueError: If the model does not run before pruning.
    """
    try:
        return {training: _run_shapes(model, x, training) for training in (False, True)}
    except ValueError as e:
        raise ValueError(f"the model does not run before pruning: {e}") from e


def check_pruned(model: nn.Module, x: torch.Tensor, reference: Mapping[bool, list[tuple[int, ...]]]) -> None:
    """Raise a one-line ``ValueError`` naming the broken block unless the pruned ``model`` is sound.

    Sound: every conv and BatchNorm keeps at least one channel, and one forward in eval and in train mode runs and
    gives outputs of the shapes in ``reference`` (from `reference_shapes` before pruning).

    Args:
        model: The pruned ``DetectionModel``.
        x: The input used for ``reference``.
        reference: ``{training: output shapes}`` before pruning.
    """
    stage = _stage_of(model)
    for name, module in model.named_modules():
        widths = [getattr(module, k, 1) for k in ("in_channels", "out_channels", "num_features")]
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d)) and min(widths) < 1:
            i = stage.get(module, 0)
            raise ValueError(
                f"pruning broke layer {i} ({type(model.model[i]).__name__}): '{name}' was left with 0 channels; "
                "this block's coupling is not supported, please report it"
            )
    for training in (False, True):
        try:
            shapes = _run_shapes(model, x, training)
        except ValueError as e:
            raise ValueError(f"pruning broke the model: {e}; this block is not supported, please report it") from e
        if shapes != list(reference[training]):
            raise ValueError(
                f"pruning changed the output shapes in {'train' if training else 'eval'} mode "
                f"({reference[training]} -> {shapes}); please report this model"
            )


def prune_seeded(
    model: nn.Module, ratio: float, importance: tp.importance.Importance, seed: int, **options: Any
) -> PruneStats:
    """Run `prune_detection_model` with torch seeded by ``seed`` (random criteria); the global RNG is restored.

    Args:
        model: The detection model; changed in place.
        ratio: As in `prune_detection_model`.
        importance: As in `prune_detection_model`.
        seed: Seed for the duration of the call.
        **options: Further keyword arguments of `prune_detection_model`.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return prune_detection_model(model, ratio, importance, **options)


def _pct(x: float | None) -> str:
    """A relative error as a percentage for the log."""
    return "-" if x is None else f"{100 * x:.1f} %"


def _copy_yolo(yolo: YOLO) -> YOLO:
    """Deep-copy a ``YOLO`` wrapper (model included) without its cached predictor or trainer."""
    held = yolo.predictor, yolo.trainer
    yolo.predictor = yolo.trainer = None
    try:
        return copy.deepcopy(yolo)
    finally:
        yolo.predictor, yolo.trainer = held


def _describe(stats: PruneStats) -> dict:
    """Return the plain-dict form of ``stats`` for ``prune_info``."""
    return dict(stats.__dict__)


def _latency_savings(curves: list, cost: Any, pruned_copy: Any) -> list:
    """Return ``curves`` with each point's saving re-measured as the fraction of ``cost`` saved (e.g. latency)."""
    from .allocate import LayerCurve

    out = []
    for curve in curves:
        savings = [0.0 if r == 0 else max(0.0, 1.0 - cost(pruned_copy({curve.stage: r}))) for r in curve.ratios]
        for k in range(1, len(savings)):  # measured savings may wobble; a larger cut never saves less
            savings[k] = max(savings[k], savings[k - 1])
        out.append(LayerCurve(curve.stage, list(curve.ratios), list(curve.losses), savings))
    return out


def _allocate(
    pruned: YOLO,
    curves: list,
    kind: str,
    wanted: float | None,
    ratio: float,
    importance: tp.importance.Importance,
    seed: int,
    options: dict,
    measure: dict,
    verbose: bool,
) -> tuple[Any, PruneStats, dict]:
    """Prune ``pruned.model`` in place with per-layer ratios allocated from ``curves`` to meet the cost target.

    Without a target (``wanted`` None), the target is the MACs that uniform pruning at ``ratio`` keeps. For a latency
    target on a CPU, the cost is the latency predicted by a per-conv `yolo_prune.measurement.hardware.LatencyTable`
    (deterministic, cached in ``measure["table"]``), the curves' savings are re-measured in that latency, and the final
    network is then timed for real against the unpruned one (interleaved rounds).
    Returns the `yolo_prune.policy.allocate.Allocation`, the stats of the final pruning pass and what the latency model
    and the final measurement found (empty for MACs).
    """
    from ..measurement.hardware import LatencyTable, compare_latency
    from .allocate import allocate
    from .targets import cost_meter

    layer_options = {**options, "layer_ratios": None, "staggered": False}

    def apply(module: nn.Module, layer_ratios: dict[int, float] | None, uniform: float = 0.0) -> PruneStats:
        return prune_seeded(module, uniform, importance, seed, **{**layer_options, "layer_ratios": layer_ratios})

    def pruned_copy(layer_ratios: dict[int, float] | None, uniform: float = 0.0) -> nn.Module:
        module = copy.deepcopy(pruned.model)
        apply(module, layer_ratios, uniform)
        return module

    extra: dict = {}
    table = None
    if kind == "latency" and str(measure["device"]).lower() == "cpu" and measure["backend"] in ("torch", "onnx"):
        threads = int(measure["threads"] or 1)
        table = LatencyTable(measure["backend"], measure["imgsz"], threads, path=measure.get("table"))
        convs = table.predict(pruned.model)
        rest = table.rest_ms(pruned.model, convs)  # concat, upsample, pooling, attention, decoding: held fixed
        extra = {"model": "latency table", "base_convs_ms": convs, "rest_ms": rest}
        if verbose:
            LOGGER.info(
                f"{PREFIX}latency model ({measure['backend']}, {threads} thread(s), imgsz {measure['imgsz']}): "
                f"{convs:.1f} ms in convs + {rest:.1f} ms elsewhere"
            )

        def meter(module: nn.Module) -> float:
            return table.predict(module) + rest
    else:
        meter = cost_meter(kind, **{k: v for k, v in measure.items() if k != "table"})
    base_cost = meter(pruned.model)
    if kind == "latency":
        curves = _latency_savings(curves, lambda m: meter(m) / base_cost, pruned_copy)
    if wanted is None:
        wanted = meter(pruned_copy(None, ratio)) / base_cost
        if verbose:
            LOGGER.info(f"{PREFIX}uniform ratio {ratio:g} keeps {wanted:.1%} of the {kind}: allocating that budget")

    def cost(r: dict[int, float]) -> float:
        return meter(pruned_copy(r)) / base_cost

    if table is None:
        allocation = allocate(curves, cost, wanted, verbose=verbose)
        return allocation, apply(pruned.model, allocation.ratios), extra
    # The table is a model: per-conv timings add up only roughly to the network's (per-call overheads, fusion, cache
    # effects), most at small sizes. Each pass times the allocation against the unpruned network and, when the
    # measured ratio misses the target by more than the noise, re-allocates at the goal the measurement implies.
    base = copy.deepcopy(pruned.model)
    goal, passes, chosen = wanted, [], None
    for _ in range(CALIBRATION_PASSES):
        try:
            allocation = allocate(curves, cost, goal, verbose=verbose)
        except ValueError:
            if chosen is None:
                raise
            break  # a corrected goal beyond what the curves allow: keep the passes so far
        candidate = copy.deepcopy(base)
        stats = apply(candidate, allocation.ratios)
        timed = compare_latency(base, candidate, measure["backend"], measure["imgsz"], table.threads)
        lo, hi = timed["spread"]
        tolerance = max(CALIBRATION_TOLERANCE, (hi - lo) / 2)
        passes.append({"goal": goal, "predicted": allocation.achieved, "measured": timed["ratio"], "spread": [lo, hi]})
        if verbose:
            LOGGER.info(
                f"{PREFIX}latency predicted {allocation.achieved:.1%}, measured {timed['ratio']:.1%} of the unpruned "
                f"model ({timed['pruned_ms']:.1f} / {timed['base_ms']:.1f} ms; per-round 10-90 %: {lo:.1%}-{hi:.1%})"
            )
        miss = timed["ratio"] - wanted
        rank = (miss > tolerance, abs(miss))  # within or under the target first, then the closest
        if chosen is None or rank < chosen[0]:
            chosen = (rank, allocation, stats, candidate, timed)
        if abs(miss) <= tolerance:
            break
        goal = min(1.0, max(0.01, allocation.achieved * wanted / timed["ratio"]))
    _, allocation, stats, pruned.model, timed = chosen
    extra.update(
        convs_timed=table.measured,
        table=None if table.path is None else str(table.path),
        measured=timed,
        calibration=passes,
    )
    if verbose and len(passes) > 1:
        LOGGER.info(f"{PREFIX}latency target {wanted:.1%}: kept the pass measured at {timed['ratio']:.1%}")
    return allocation, stats, extra


@renamed_kwargs(latency_runs="runs", latency_threads="threads")
def prune(
    model: YOLO | str,
    ratio: float | None = None,
    method: str = "l2",
    round_to: int | str = "auto",
    min_channels: int | None = None,
    seed: int = 0,
    verbose: bool = True,
    *,
    global_pruning: bool = False,
    max_ratio: float = 0.9,
    layer_ratios: Mapping[int, float] | None = None,
    target_macs: float | None = None,
    target_latency: float | None = None,
    backend: str = "torch",
    device: str | None = None,
    imgsz: int = 640,
    data: str | None = None,
    calib_batches: int = 4,
    calib_batch: int = 8,
    staggered: bool = False,
    runs: int = 30,
    threads: int | None = None,
    sensitivity: dict | str | Path | list | None = None,
    latency_table: str | Path | None = None,
    attention: str = "heads",
    reconstruct: str | None = None,
    reconstruct_images: int = 256,
) -> YOLO:
    """Remove whole filters from a YOLO detection model; coupled layers shrink together.

    The input is never modified: a ``YOLO`` is deep-copied and a checkpoint file is only read. The returned object
    carries ``prune_info``, a plain dict with what was done (method, ratio, channel and parameter counts and, for a
    target, the search result); it lives on the ``YOLO`` wrapper only, never inside the saved ``.model``.

    Args:
        model: An Ultralytics ``YOLO``, a path to a ``.pt`` checkpoint, or a model yaml such as ``"yolo11n.yaml"``.
        ratio: Fraction of prunable channels to remove, in [0, 1). ``0`` returns an equivalent model. Default 0.5,
            or 0 for the layers not in ``layer_ratios``. Not allowed together with a target.
        method: Importance criterion: ``l1``, ``l2``, ``bn``, ``lamp``, ``fpgm``, ``taylor``, ``hessian``, ``random``
            (see ``IMPORTANCE_METHODS``). ``taylor`` and ``hessian`` need ``data``.
        round_to: Kept widths are rounded to a multiple of this. ``"auto"`` (default) picks the channel block of the
            deployment target, `yolo_prune.measurement.hardware.auto_round_to` for ``backend`` and ``device``: 16 on a
            CPU with AVX-512, 8 on other CPUs and on GPUs. The value used and why are in ``prune_info``.
        min_channels: No group is cut below this width (default: ``round_to``).
        seed: Seed for random criteria.
        verbose: Log a one-line summary (and each target-search probe).
        global_pruning: Rank normalised channel scores across all groups (twins cut equally, frozen groups excluded)
            instead of removing ``ratio`` of every group; ``ratio`` is still the fraction of all prunable channels.
        max_ratio: With ``global_pruning``, the largest fraction removed from any one group, in (0, 1].
        layer_ratios: ``{index in model.model: ratio}``, e.g. from ``yolo_prune.policy.sensitivity.layer_ratios``.
        target_macs: Keep at most this fraction of the MACs, in (0, 1]; the ratio is searched. MACs are counted with
            channel counts padded up to the hardware's channel block (``prune_info["macs_block"]``; see
            `yolo_prune.measurement.hardware.padded_macs`), so the target is on the work a blocked kernel executes.
        target_latency: Keep at most this fraction of the latency on ``backend``/``device`` at ``imgsz``. With
            ``sensitivity`` on a CPU, a per-conv latency table of the backend predicts each candidate's latency
            (cached in ``latency_table``) and the allocated model is timed against the unpruned one in interleaved
            rounds (``prune_info["target"]["measured"]``, with its spread); a measurement that misses the target by
            more than its noise re-allocates at the goal it implies (up to ``CALIBRATION_PASSES`` passes, each in
            ``prune_info["target"]["calibration"]``). Otherwise each candidate is measured.
        backend: Latency backend for ``target_latency`` and for ``round_to="auto"``: ``torch``, ``onnx`` or
            ``openvino`` (CPU; ``torch`` and ``onnx`` get a latency table, ``openvino`` measures each candidate).
        device: Device for latency measurement and gradient collection; None picks the first GPU when there is one,
            else the CPU (as Ultralytics does).
        imgsz: Image size for MACs, latency and gradient collection.
        data: Dataset yaml (or built-in name such as ``shapes.yaml``) whose training split feeds gradient criteria.
        calib_batches: Batches of training images for gradient criteria.
        calib_batch: Images per calibration batch.
        staggered: Stagger the rounding thresholds of the groups (see ``prune_detection_model``); always on for a
            target, so that ``prune(ratio=info["ratio"], staggered=True)`` rebuilds the same widths.
        runs: Timed runs per latency measurement of ``target_latency`` (after 5 untimed ones); ``runs=`` of the CLI.
            The old name ``latency_runs`` still works, with a deprecation warning.
        threads: CPU threads for those measurements (default: every usable core; 1 is far steadier on a machine
            shared with other jobs); ``threads=`` of the CLI. The old name ``latency_threads`` still works, with a
            deprecation warning.
        sensitivity: Per-layer sensitivity results (``sensitivity.json``, its run folder, the dict, or a list of
            ``yolo_prune.policy.allocate.LayerCurve``; from ``yolo_prune.policy.sensitivity.run_sensitivity``). Instead
            of removing the same fraction of every layer, the layers' ratios are allocated from the measured curves
            (``yolo_prune.allocate``) so that the target (or, with ``ratio``, the MACs that uniform pruning at
            ``ratio`` would keep) is met with the least predicted mAP loss.
        latency_table: JSON file caching the per-conv latency table of a latency target (reused when it was written
            for the same backend, threads and CPU); None keeps it in memory.
        attention: ``heads`` (default): attention (``Attention`` in PSA/C2PSA/C3k2, ``AAttn`` in A2C2f) loses whole
            heads at the ratio of its layer, and the stream around it is pruned too; ``keep``: attention and its
            stream keep their widths (the behaviour before 0.3). ``prune_info["heads_removed"]`` counts the heads.
        reconstruct: Re-fit the pruned network to the input model on ``reconstruct_images`` training images of
            ``data`` before returning it (`yolo_prune.policy.reconstruct.reconstruct`): ``ls`` (least-squares
            reconstruction of each conv's kept weights and an offset, stock shapes), ``seq`` (the same, conv after
            conv on the pruned network's own inputs) or ``bn`` (BatchNorm statistics only). None (default): off.
            Needs ``data``; what it did is in ``prune_info["reconstruct"]``.
        reconstruct_images: Calibration images for ``reconstruct``.

    Returns:
        A new ``YOLO`` whose ``.model`` is the pruned network, made only of stock Ultralytics classes.

    Raises:
        ValueError: On a bad ``ratio`` or target, both given, an unknown ``method`` or ``attention``, a gradient
            method without ``data``, an unreachable target, an unreadable model, an unsupported model family, or an
            old argument name (``latency_runs``, ``latency_threads``) given together with its new one.

    Examples:
        >>> from yolo_prune import prune
        >>> pruned = prune("yolo11n.yaml", ratio=0.5)
        >>> pruned = prune("best.pt", method="taylor", data="data.yaml", target_macs=0.5, global_pruning=True)
        >>> pruned.prune_info["target"]["achieved"]  # measured MACs ratio, <= 0.5
        >>> pruned.save("yolo11n-pruned.pt")
        >>> pruned = prune("best.pt", target_macs=0.5, sensitivity="runs/sensitivity/exp")  # measured allocation
    """
    from ..integration.args import resolve_device
    from ..measurement.hardware import auto_round_to, resolve_round_to
    from .targets import check_backend, check_target, cost_meter, search_ratio

    device = resolve_device(device)
    backend = check_backend(backend)
    rounding = resolve_round_to(round_to, backend, device)
    round_to, block = rounding.value, auto_round_to(backend, device).value
    importance = get_importance(method)
    attention = check_attention(attention)
    given = {k: v for k, v in (("macs", target_macs), ("latency", target_latency)) if v is not None}
    if len(given) > 1:
        raise ValueError("give at most one of target_macs and target_latency")
    if given and ratio is not None:
        raise ValueError(f"ratio and target_{next(iter(given))} are mutually exclusive: give one of them")
    if given and layer_ratios:
        raise ValueError("layer_ratios sets the ratio of each layer, so it cannot be combined with a target")
    target = {kind: check_target(value, f"target_{kind}") for kind, value in given.items()}
    layers = check_layer_ratios(layer_ratios)
    if global_pruning and layers:
        raise ValueError("layer_ratios sets the ratio of each layer, so it cannot be combined with global_pruning")
    if sensitivity is not None and (layers or global_pruning):
        raise ValueError(
            "sensitivity allocates the ratio of every layer: do not combine it with layer_ratios or global_pruning"
        )
    curves = None
    if sensitivity is not None:
        from .allocate import curves_from_sensitivity

        curves = sensitivity if isinstance(sensitivity, list) else curves_from_sensitivity(sensitivity)
    ratio = check_ratio((0.0 if layers else 0.5) if ratio is None else ratio)
    max_ratio = _check_max_ratio(max_ratio)
    from .reconstruct import check_reconstruct

    reconstruct = check_reconstruct(reconstruct)
    if reconstruct and data is None:
        raise ValueError(f"reconstruct='{reconstruct}' re-fits the pruned model on training images: give data=")
    if needs_gradients(method) and data is None:
        raise ValueError(
            f"method='{method}' scores channels from gradients: give data= (a dataset yaml) to compute them"
        )
    source = load_yolo(model)
    check_supported(source.model)
    pruned = _copy_yolo(source)
    gradients = None
    if needs_gradients(method):
        gradients = collect_gradients(
            pruned.model, data, method, batches=calib_batches, batch=calib_batch, imgsz=imgsz, device=device
        )
    options = {
        "round_to": round_to,
        "min_channels": min_channels,
        "global_pruning": global_pruning,
        "max_ratio": max_ratio,
        "layer_ratios": layers,
        "gradients": gradients,
        "staggered": bool(staggered) or bool(target),
        "attention": attention,
    }

    def prune_module(module: nn.Module, value: float) -> PruneStats:
        return prune_seeded(module, value, importance, seed, **options)

    info: dict = {
        "method": str(method).lower(),
        "global_pruning": bool(global_pruning),
        "staggered": options["staggered"],
        "round_to": round_to,
        "round_to_reason": rounding.reason,
        "macs_block": block,
        "attention": attention,
    }
    if verbose and rounding.reason != "given":
        LOGGER.info(f"{PREFIX}round_to=auto -> {round_to} ({rounding.reason})")
    measure = {
        "imgsz": imgsz,
        "backend": backend,
        "device": device,
        "runs": runs,
        "threads": threads,
        "block": block,
        "table": latency_table,
    }
    if curves is not None:
        kind, wanted = next(iter(target.items())) if target else ("macs", None)
        allocation, stats, latency = _allocate(
            pruned, curves, kind, wanted, ratio, importance, seed, options, measure, verbose
        )
        ratio, layers = 0.0, allocation.ratios
        info["allocation"] = {"kind": kind, **allocation.as_dict()}
        if target:
            info["target"] = {"kind": kind, "target": wanted, "achieved": allocation.achieved, **latency}
            if kind == "latency":
                info["target"].update(backend=backend, device=str(device), imgsz=imgsz)
    elif target:
        kind, wanted = next(iter(target.items()))
        meter = cost_meter(kind, **{k: v for k, v in measure.items() if k != "table"})
        base_cost = meter(pruned.model)
        base_params = sum(p.numel() for p in pruned.model.parameters())
        found: dict[float, PruneStats] = {}

        def cost(module: nn.Module) -> float:
            # A candidate that lost no channel is the unpruned network: its cost is the base cost, not a noisy
            # re-measurement that could pass a latency target by chance.
            unchanged = sum(p.numel() for p in module.parameters()) == base_params
            return base_cost if unchanged else meter(module)

        def prune_copy(value: float) -> nn.Module:
            module = copy.deepcopy(pruned.model)
            found[value] = prune_module(module, value)
            return module

        search, pruned.model = search_ratio(
            prune_copy, cost, base_cost, wanted, kind=kind, max_ratio=0.95, verbose=verbose
        )
        ratio, stats = search.ratio, found[search.ratio]
        info["target"] = search.as_dict()
        if kind == "latency":
            info["target"].update(backend=backend, device=str(device), imgsz=imgsz)
    else:
        stats = prune_module(pruned.model, ratio)
    info.update(ratio=ratio, layer_ratios={str(k): v for k, v in layers.items()}, **_describe(stats))
    if reconstruct:
        from .reconstruct import reconstruct as refit

        start = time.perf_counter()
        fit = refit(
            pruned.model, source.model, data, reconstruct, images=reconstruct_images, imgsz=imgsz, device=device
        )
        info["reconstruct"] = {**fit.as_dict(), "seconds": round(time.perf_counter() - start, 1)}
        if verbose:
            r = info["reconstruct"]
            LOGGER.info(
                f"{PREFIX}reconstruct={reconstruct} on {r['images']} images in {r['seconds']:.0f} s: "
                f"{r['layers_fitted']} convs re-fitted (mean output error {_pct(r['mean_error_before'])} -> "
                f"{_pct(r['mean_error_after'])}), {r['bn_recalibrated']} BatchNorms re-estimated"
            )
    pruned.prune_info = info
    if verbose:
        reached = ""
        if "allocation" in info:
            a = info["allocation"]
            reached = f", sensitivity allocation over {len(a['ratios'])} layers -> kept {a['achieved']:.1%}"
        elif "target" in info:
            t = info["target"]
            reached = f", target {t['kind']}={t['target']} -> kept {t['achieved']:.1%}"
        LOGGER.info(
            f"{PREFIX}removed {stats.channels_removed}/{stats.channels_before} channels in {stats.groups} groups "
            f"({method}, ratio={ratio:.4g}{', global' if global_pruning else ''}{reached}): "
            f"{stats.params_before:,} -> {stats.params_after:,} parameters"
        )
    return pruned
