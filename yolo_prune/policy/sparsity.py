"""Group-level sparsity: an L2,1 (group-lasso) penalty over the channels of each DepGraph group.

A *group* is what pruning removes together: one output channel of a conv with its BatchNorm entries and the input
slices of every layer that consumes it (found by torch-pruning's dependency graph, the same graph
``yolo_prune.policy.prune.prune_detection_model`` prunes with). Penalising the L2 norm of each channel's whole group
slice drives whole removable channels towards zero, which is what the group-norm pruner of torch-pruning does before
pruning.

The groups are traced once (on temporary twin convs for the blocks that ``chunk`` their input, see
``yolo_prune.rules.blocks``) and stored as ``(parameter name, dim, indices)`` slices of the real model, so the penalty
is applied to the stock modules during training.

Examples:
    >>> from yolo_prune.policy.sparsity import channel_groups, group_norms
    >>> groups = channel_groups(model)              # once, before training
    >>> add_group_lasso_gradient(model, groups, 1e-4)  # after backward(), before the optimizer step
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

__all__ = ["ChannelGroup", "add_group_lasso_gradient", "channel_groups", "group_norms"]

TWIN_HALVES = {"_cv1a": 0, "_cv1b": 1}  # temporary tracing convs -> half of the stock ``cv1`` they were sliced from


@dataclass
class ChannelGroup:
    """The parameter slices that one DepGraph group removes together, channel by channel.

    Attributes:
        slices: ``(parameter name, dim, channel indices)``; every slice has the group's channel count along ``dim``,
            in the same channel order.
    """

    slices: list[tuple[str, int, list[int]]]


def _real_name(name: str, dim: int, index: list[int], width: dict[str, int]) -> tuple[str, list[int]]:
    """Map a parameter of a temporary twin conv (``...._cv1a.conv.weight``) onto the stock ``cv1`` it came from: its
    output channels are one half of ``cv1``'s, its input channels are ``cv1``'s own."""
    parts = name.split(".")
    for k, part in enumerate(parts):
        if part in TWIN_HALVES:
            offset = TWIN_HALVES[part] * width[".".join(parts[: k + 1])] if dim == 0 else 0
            return ".".join([*parts[:k], "cv1", *parts[k + 1 :]]), [i + offset for i in index]
    return name, index


def channel_groups(model: nn.Module, imgsz: int | None = None) -> list[ChannelGroup]:
    """Trace ``model``'s prunable channel groups and return them as slices of its own parameters.

    Args:
        model: An Ultralytics ``DetectionModel`` (not changed: a copy is traced).
        imgsz: Tracing input size (default: twice the largest stride).

    Returns:
        One `ChannelGroup` per prunable group (groups touching frozen layers, such as the head's output convs, are
        left out, as pruning leaves them).
    """
    import copy

    from ..rules.blocks import prepare_for_tracing

    # Trace a copy: joining the tracing convs back creates new Parameter objects, and a model in training must keep
    # the ones its optimizer and EMA hold. Parameter names are the same in the copy.
    model = copy.deepcopy(model)
    stride = int(max(getattr(model, "stride", torch.tensor([32])).tolist()))
    device = next(model.parameters()).device
    example = torch.zeros(1, 3, imgsz or 2 * stride, imgsz or 2 * stride, device=device)
    was_training = model.training
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    model.eval()
    plan = prepare_for_tracing(model)
    out: list[ChannelGroup] = []
    try:
        names = {m: n for n, m in model.named_modules()}
        width = {n: m.conv.out_channels for n, m in model.named_modules() if n.split(".")[-1] in TWIN_HALVES}
        for p in model.parameters():
            p.requires_grad_(True)
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                model, example, unwrapped_parameters=plan.unwrapped or None, verbose=False
            )
            groups = graph.get_all_groups(
                ignored_layers=list(plan.frozen_out), root_module_types=(nn.Conv2d, nn.ConvTranspose2d)
            )
            for group in groups:
                if any(
                    dep.target.module in plan.frozen_in and graph.is_in_channel_pruning_fn(dep.handler)
                    for dep, _ in group
                ):
                    continue
                slices = []
                for dep, idxs in group:
                    module = dep.target.module
                    out_fn = graph.is_out_channel_pruning_fn(dep.handler)
                    if not (out_fn or graph.is_in_channel_pruning_fn(dep.handler)):
                        continue
                    index = [int(i) for i in idxs]
                    for pname, param in module.named_parameters(recurse=False):
                        if isinstance(module, nn.modules.batchnorm._BatchNorm) or (out_fn and pname == "bias"):
                            dim = 0
                        elif pname == "weight" and isinstance(module, (nn.Conv2d, nn.Linear)):
                            dim = 0 if out_fn else 1
                            if not out_fn and isinstance(module, nn.Conv2d) and module.groups > 1:
                                continue  # a depthwise conv's input channels are its output channels: counted there
                        else:
                            continue
                        if max(index, default=-1) >= param.shape[dim]:
                            continue
                        name, real = _real_name(f"{names[module]}.{pname}", dim, index, width)
                        slices.append((name, dim, real))
                if slices:
                    out.append(ChannelGroup(slices))
    finally:
        plan.restore()
        for name, p in model.named_parameters():
            p.requires_grad_(flags.get(name, True))
        model.train(was_training)
    present = dict(model.named_parameters())
    for group in out:
        group.slices = [s for s in group.slices if s[0] in present]
        if group.slices:
            width = min(len(index) for _, _, index in group.slices)
            group.slices = [s for s in group.slices if len(s[2]) % width == 0]
    return [g for g in out if g.slices]


def _channel_norms(params: dict[str, torch.Tensor], group: ChannelGroup) -> torch.Tensor:
    """L2 norm of each channel's slice across every parameter of ``group``.

    A consumer that sees the same channels several times (a concat of residual-coupled branches, as in C2f's ``cv2``)
    lists them as consecutive blocks of the group's width; each block adds to the same channels.
    """
    width = min(len(index) for _, _, index in group.slices)
    total = None
    for name, dim, index in group.slices:
        part = params[name].detach().index_select(dim, torch.as_tensor(index, device=params[name].device))
        sq = part.float().pow(2).movedim(dim, 0).reshape(len(index), -1).sum(1).view(-1, width).sum(0)
        total = sq if total is None else total + sq
    return total.sqrt()


def group_norms(model: nn.Module, groups: list[ChannelGroup]) -> torch.Tensor:
    """All channels' group norms, concatenated (to compare how sparse two models are)."""
    params = dict(model.named_parameters())
    return torch.cat([_channel_norms(params, g) for g in groups])


def add_group_lasso_gradient(model: nn.Module, groups: list[ChannelGroup], strength: float, scale: float = 1.0) -> None:
    """Add the gradient of ``strength * sum(group channel norms)`` to the parameters' gradients.

    Args:
        model: The model being trained (parameter names as when ``groups`` were traced).
        groups: From `channel_groups`.
        strength: Penalty weight.
        scale: Multiplies the added gradient (the AMP loss scale while gradients are still scaled).
    """
    params = dict(model.named_parameters())
    with torch.no_grad():
        for group in groups:
            norms = _channel_norms(params, group).clamp_min(1e-8)
            for name, dim, index in group.slices:
                p = params[name]
                if p.grad is None:
                    continue
                idx = torch.as_tensor(index, device=p.device)
                shape = [1] * p.dim()
                shape[dim] = len(index)
                per_index = norms.repeat(len(index) // len(norms)).view(shape).to(p.dtype)
                step = p.detach().index_select(dim, idx) / per_index
                p.grad.index_add_(dim, idx, step * (strength * scale))
