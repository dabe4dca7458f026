"""Whole-head surgery on Ultralytics attention: ``Attention`` (PSA, C2PSA, C3k2 with ``attn``) and ``AAttn`` (A2C2f).

Both modules compute ``qkv`` with one 1x1 conv whose output rows are laid out head by head, then run a depthwise
positional conv ``pe`` on the values and a 1x1 ``proj`` back to the stream width:

* ``Attention`` views ``qkv`` as ``(B, num_heads, 2 * key_dim + head_dim, N)``: head ``h`` owns rows
  ``h * s : (h + 1) * s`` with ``s = 2 * key_dim + head_dim`` (its query, then key, then value rows). Its values come
  back as ``(B, num_heads * head_dim, H, W)``: head ``h`` owns channels ``h * head_dim : (h + 1) * head_dim`` of
  ``pe`` and of ``proj``'s input. ``.view(B, C, H, W)`` takes ``C`` from the input, so the stream width must equal
  ``num_heads * head_dim``: removing heads means pruning the stream to that width too (done by the dependency graph,
  see ``yolo_prune.rules.blocks``).
* ``AAttn`` views ``qkv`` as ``(B, N, num_heads, 3 * head_dim)``: head ``h`` owns rows ``h * s : (h + 1) * s`` with
  ``s = 3 * head_dim`` (query, key, value); the values are reshaped to ``all_head_dim`` channels, head ``h`` owning
  ``h * head_dim : (h + 1) * head_dim`` of ``pe`` and of ``proj``'s input. ``all_head_dim`` is stored, so the heads
  are independent of the stream width.

Removing a head removes its ``qkv`` rows (conv and BatchNorm), its ``pe`` channels and its ``proj`` input columns,
then sets ``num_heads`` (and ``all_head_dim``). ``head_dim``, ``key_dim`` and ``scale`` do not change when whole heads
go. The modules stay the stock classes.

Examples:
    >>> from ultralytics.nn.modules import Attention
    >>> attn = Attention(128, num_heads=2)
    >>> remove_heads(attn, [1])
    >>> attn.num_heads, attn.qkv.conv.out_channels
    (1, 128)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from ultralytics.nn.modules import Attention
from ultralytics.nn.modules.block import AAttn

from ..config.checks import ATTENTION_MODES, check_attention  # re-exported: their old home

__all__ = [
    "ATTENTION_MODES",
    "ATTENTION_TYPES",
    "check_attention",
    "check_heads",
    "head_scores",
    "heads_to_keep",
    "remove_heads",
    "stream_tied",
]

ATTENTION_TYPES = (Attention, AAttn)


def stream_tied(module: nn.Module) -> bool:
    """True if the module's value width must equal its input (stream) width (``Attention``, not ``AAttn``)."""
    return isinstance(module, Attention)


def _rows_per_head(module: nn.Module) -> int:
    """Output rows of ``qkv`` that one head owns."""
    return module.qkv.conv.out_channels // module.num_heads


def _head_index(count: int, width: int, heads: Sequence[int]) -> torch.Tensor:
    """Indices of blocks ``heads`` of ``width`` channels each, in order (``count`` is only checked)."""
    if any(not 0 <= h < count for h in heads):
        raise ValueError(f"head indices must be in [0, {count}), got {list(heads)}")
    return torch.tensor([h * width + j for h in heads for j in range(width)], dtype=torch.long)


def head_scores(module: nn.Module) -> torch.Tensor:
    """L2 norm of the weights each head owns: its ``qkv`` rows and its ``proj`` input columns.

    Args:
        module: An ``Attention`` or ``AAttn``.

    Returns:
        One score per head (higher means more important).
    """
    rows, cols = _rows_per_head(module), module.head_dim
    with torch.no_grad():
        qkv = module.qkv.conv.weight.detach().float().flatten(1)
        proj = module.proj.conv.weight.detach().float().flatten(2).transpose(0, 1).flatten(1)  # (in, out * k * k)
        return torch.stack(
            [
                torch.sqrt(qkv[h * rows : (h + 1) * rows].pow(2).sum() + proj[h * cols : (h + 1) * cols].pow(2).sum())
                for h in range(module.num_heads)
            ]
        ).cpu()


def heads_to_keep(num_heads: int, ratio: float) -> int:
    """Heads left after removing ``ratio`` of ``num_heads``: rounded up, at least one.

    Args:
        num_heads: Heads now.
        ratio: Fraction to remove, in [0, 1).
    """
    if ratio <= 0.0:
        return num_heads
    return min(num_heads, max(1, math.ceil(num_heads * (1.0 - ratio) - 1e-9)))


def _keep_rows(tensor: torch.Tensor, index: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return tensor.detach().index_select(dim, index.to(tensor.device)).clone()


def _set_parameter(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value, requires_grad=old.requires_grad))


def _keep_outputs(conv: nn.Module, index: torch.Tensor, depthwise: bool = False) -> None:
    """Keep output channels ``index`` of a stock ``Conv`` (its ``nn.Conv2d`` and BatchNorm)."""
    layer = conv.conv
    _set_parameter(layer, "weight", _keep_rows(layer.weight, index))
    if layer.bias is not None:
        _set_parameter(layer, "bias", _keep_rows(layer.bias, index))
    layer.out_channels = len(index)
    if depthwise:
        layer.in_channels = layer.groups = len(index)
    bn = getattr(conv, "bn", None)
    if isinstance(bn, nn.BatchNorm2d):
        if bn.affine:
            _set_parameter(bn, "weight", _keep_rows(bn.weight, index))
            _set_parameter(bn, "bias", _keep_rows(bn.bias, index))
        if bn.track_running_stats:
            bn.running_mean = _keep_rows(bn.running_mean, index)
            bn.running_var = _keep_rows(bn.running_var, index)
        bn.num_features = len(index)


def remove_heads(module: nn.Module, keep: Sequence[int]) -> None:
    """Keep only heads ``keep`` of an ``Attention`` or ``AAttn``, in place; attributes are repaired.

    For ``Attention`` the stream (input and ``proj`` output) must be pruned to ``len(keep) * head_dim`` channels
    separately (`check_heads` tells whether it was).

    Args:
        module: An ``Attention`` or ``AAttn``.
        keep: Indices of the heads to keep (at least one).

    Raises:
        ValueError: On an empty or out-of-range ``keep``.
    """
    keep = sorted({int(h) for h in keep})
    if not keep:
        raise ValueError("at least one attention head must be kept")
    count = module.num_heads
    if len(keep) == count:
        return
    rows = _head_index(count, _rows_per_head(module), keep)
    values = _head_index(count, module.head_dim, keep)
    _keep_outputs(module.qkv, rows)
    _keep_outputs(module.pe, values, depthwise=True)
    proj = module.proj.conv
    _set_parameter(proj, "weight", _keep_rows(proj.weight, values, dim=1))
    proj.in_channels = len(values)
    module.num_heads = len(keep)
    if isinstance(module, AAttn):
        module.all_head_dim = module.num_heads * module.head_dim


def check_heads(module: nn.Module) -> None:
    """Raise ``ValueError`` unless the widths and head attributes of an attention module agree with each other.

    ``Attention``: ``qkv`` has ``num_heads * (2 * key_dim + head_dim)`` outputs; ``pe`` and ``proj``'s input and
    output have ``num_heads * head_dim`` channels, as has ``qkv``'s input; ``scale == key_dim ** -0.5``.
    ``AAttn``: ``all_head_dim == num_heads * head_dim``; ``qkv`` has ``3 * all_head_dim`` outputs; ``pe`` and
    ``proj``'s input have ``all_head_dim``.

    Args:
        module: An ``Attention`` or ``AAttn``.
    """
    heads, head_dim = module.num_heads, module.head_dim
    values = heads * head_dim
    if isinstance(module, Attention):
        per_head = 2 * module.key_dim + head_dim
        if not math.isclose(module.scale, module.key_dim**-0.5):
            raise ValueError(f"Attention scale {module.scale} is not key_dim ** -0.5 (key_dim {module.key_dim})")
        expected = {
            "qkv in": (module.qkv.conv.in_channels, values),
            "proj out": (module.proj.conv.out_channels, values),
        }
    else:
        per_head = 3 * head_dim
        expected = {"all_head_dim": (module.all_head_dim, values)}
    expected.update(
        {
            "heads": (heads, max(heads, 1)),
            "qkv out": (module.qkv.conv.out_channels, heads * per_head),
            "pe": (module.pe.conv.out_channels, values),
            "pe in": (module.pe.conv.in_channels, values),
            "pe groups": (module.pe.conv.groups, values),
            "proj in": (module.proj.conv.in_channels, values),
        }
    )
    bad = [f"{name} {got} != {want}" for name, (got, want) in expected.items() if got != want]
    if heads < 1 or bad:
        raise ValueError(f"{type(module).__name__} widths disagree: {'; '.join(bad) or 'no head left'}")
