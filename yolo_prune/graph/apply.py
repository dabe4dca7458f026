"""Applying a pruning plan to a detection model: torch-pruning's dependency graph over the traced model, twin
units, attention heads, rounding of kept widths, and the model put back in stock Ultralytics modules.

`prune_detection_model` removes ``ratio`` of every prunable group (or per-layer ratios, or a global ranking) with a
given importance; `prune_seeded` does it reproducibly. What to remove where is decided in `yolo_prune.policy`
(ratios, targets, allocation, latency calibration); this module only carries it out. Over 400 lines because the
graph pass, its twin/head planning and the group surgery share private state and are read together.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from ..config.checks import check_attention, check_layer_ratios, check_max_ratio, check_ratio
from ..rules.attention import check_heads, head_scores, heads_to_keep, remove_heads, stream_tied
from ..rules.blocks import TracingPlan, check_supported, prepare_for_tracing
from .shape_check import check_pruned, reference_shapes, stage_of

__all__ = ["PruneStats", "prune_detection_model", "prune_seeded"]


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
    max_ratio = check_max_ratio(max_ratio)
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
            stage = stage_of(model)
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
