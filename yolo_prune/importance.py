"""Pruning policy: which channels matter. Thin names over torch-pruning's own importance classes."""

from __future__ import annotations

from collections.abc import Callable

import torch_pruning as tp

__all__ = ["IMPORTANCE_METHODS", "get_importance"]

# name -> factory of a torch-pruning importance; each maps a dependency group to one score per channel.
IMPORTANCE_METHODS: dict[str, Callable[[], tp.importance.Importance]] = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "random": tp.importance.RandomImportance,
}


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
    key = str(method).lower()
    if key not in IMPORTANCE_METHODS:
        raise ValueError(f"unknown importance method '{method}': choose one of {', '.join(IMPORTANCE_METHODS)}")
    return IMPORTANCE_METHODS[key]()
