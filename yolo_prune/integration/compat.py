"""Layout changes between Ultralytics releases: bring modules unpickled from older checkpoints to the current layout.

A checkpoint holds whole pickled modules. When a later Ultralytics release changes a block's attributes, the old
module unpickles fine but its forward (the new code) fails. Each known change gets one migration here that rewrites
the module's weights into the current layout with the same math, so the model runs (and prunes) as it did.

Known changes:

* ``AAttn`` (YOLO12 area attention): 8.3.x has two 1x1 convs, ``qk`` (``2 * C`` outputs: all queries, then all keys,
  head by head) and ``v`` (``C`` outputs); 8.4 has one ``qkv`` conv whose outputs are grouped per head as
  ``[q_h, k_h, v_h]`` (``3 * head_dim`` each). The rows of the two old convs (weights and BatchNorm) are reordered
  into one conv; ``pe``, ``proj`` and the attention math are unchanged.

Examples:
    >>> from yolo_prune.integration.compat import migrate_layouts
    >>> changed = migrate_layouts(yolo.model)  # e.g. ["model.6.m.0.0.attn (AAttn qk+v -> qkv)"]
"""

from __future__ import annotations

import torch
from torch import nn
from ultralytics.nn.modules import Conv
from ultralytics.nn.modules.block import AAttn

__all__ = ["aattn_qkv_order", "migrate_layouts"]


def aattn_qkv_order(num_heads: int, head_dim: int) -> torch.Tensor:
    """Return, for each output row of the 8.4 ``qkv`` conv, the row of ``cat([qk, v])`` (8.3 layout) it comes from.

    Args:
        num_heads: Attention heads.
        head_dim: Channels per head.

    Returns:
        (torch.Tensor): Long tensor of ``3 * num_heads * head_dim`` source row indices.
    """
    width = num_heads * head_dim
    rows = [
        part * width + head * head_dim + d for head in range(num_heads) for part in range(3) for d in range(head_dim)
    ]
    return torch.tensor(rows, dtype=torch.long)


def _stacked_conv(convs: list[Conv], order: torch.Tensor) -> Conv:
    """Return one stock ``Conv`` whose output rows are the rows of ``convs`` (stacked) picked in ``order``."""
    first = convs[0]
    c1 = first.conv.in_channels
    merged = Conv(c1, len(order), first.conv.kernel_size[0], first.conv.stride[0], act=False)
    merged.conv.padding, merged.conv.dilation, merged.conv.groups = first.conv.padding, first.conv.dilation, 1
    merged.act = first.act
    merged = merged.to(first.conv.weight)
    with torch.no_grad():
        merged.conv.weight.copy_(torch.cat([c.conv.weight for c in convs])[order])
        if first.conv.bias is not None:
            merged.conv.bias = nn.Parameter(torch.cat([c.conv.bias for c in convs])[order])
        bn = getattr(first, "bn", None)
        if isinstance(bn, nn.BatchNorm2d):
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(merged.bn, name).copy_(torch.cat([getattr(c.bn, name) for c in convs])[order])
            merged.bn.eps, merged.bn.momentum = bn.eps, bn.momentum
            merged.bn.num_batches_tracked.copy_(bn.num_batches_tracked)
        else:
            merged.bn = bn if bn is not None else nn.Identity()
    merged.train(first.training)
    return merged


def _migrate_aattn(module: AAttn) -> bool:
    """Merge the 8.3.x ``qk``/``v`` convs of an ``AAttn`` into the 8.4 ``qkv`` conv; False if nothing to do."""
    if hasattr(module, "qkv") or not (isinstance(getattr(module, "qk", None), Conv) and hasattr(module, "v")):
        return False
    if not hasattr(module, "all_head_dim"):
        module.all_head_dim = module.head_dim * module.num_heads
    order = aattn_qkv_order(module.num_heads, module.head_dim)
    module.qkv = _stacked_conv([module.qk, module.v], order)
    del module.qk, module.v
    return True


MIGRATIONS = {AAttn: (_migrate_aattn, "AAttn qk+v -> qkv")}


def migrate_layouts(model: nn.Module) -> list[str]:
    """Rewrite modules of older Ultralytics layouts into the installed one, in place.

    Args:
        model: A model unpickled from a checkpoint (e.g. ``YOLO(path).model``).

    Returns:
        (list[str]): One ``"name (change)"`` entry per migrated module; empty when the model already fits.
    """
    changed = []
    for name, module in list(model.named_modules()):
        migration = MIGRATIONS.get(type(module))
        if migration is not None and migration[0](module):
            changed.append(f"{name} ({migration[1]})")
    return changed
