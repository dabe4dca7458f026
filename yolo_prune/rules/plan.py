"""`TracingPlan`: what the block and head rules decided for one model, and how to undo their temporary changes.

Filled by `yolo_prune.rules.blocks.prepare_for_tracing` (block rules) and the head rules of `yolo_prune.rules.tasks`;
read by the graph pass that applies the pruning plan.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

__all__ = ["TracingPlan"]


@dataclass
class TracingPlan:
    """What the rules decided for one model, and how to undo their temporary changes.

    Attributes:
        frozen_out: Modules whose output channels must keep their number; any group that contains them is skipped.
        frozen_in: Modules whose input channels must keep their number.
        twins: Pairs of temporary convs whose output widths must stay equal (the halves of one ``chunk``).
        unwrapped: Free ``nn.Parameter`` objects with the dimension that follows the channels.
        shared: Modules whose output channels are one channel space, mapped to a common key (GhostConv's primary conv,
            its depthwise conv and their BatchNorms): root channels that reach the same channel there are tied.
        attention_mode: ``heads`` (attention loses whole heads, its stream is pruned) or ``keep``.
        attention: The ``Attention``/``AAttn`` modules whose heads may be removed (empty with ``keep``).
    """

    frozen_out: set[nn.Module] = field(default_factory=set)
    frozen_in: set[nn.Module] = field(default_factory=set)
    twins: list[tuple[nn.Module, nn.Module]] = field(default_factory=list)
    unwrapped: list[tuple[nn.Parameter, int]] = field(default_factory=list)
    shared: dict[nn.Module, int] = field(default_factory=dict)
    attention_mode: str = "heads"
    attention: list[nn.Module] = field(default_factory=list)
    _restore: list[Callable[[], None]] = field(default_factory=list)

    def patch_forward(self, module: nn.Module, forward: Callable) -> None:
        """Give ``module`` a tracing forward until :meth:`restore` runs."""
        module.forward = types.MethodType(forward, module)
        self._restore.append(lambda: module.__dict__.pop("forward", None))

    def on_restore(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` when the model is put back after pruning."""
        self._restore.append(fn)

    def restore(self) -> None:
        """Undo every temporary change, last first, and repair width attributes."""
        while self._restore:
            self._restore.pop()()
