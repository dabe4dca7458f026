"""Self-check of a pruned model: its outputs must keep the unpruned model's shapes in eval and train mode."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["check_pruned", "reference_shapes", "stage_of"]


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
    stage = stage_of(model)
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


def stage_of(model: nn.Module) -> dict[nn.Module, int]:
    """Map every module (temporary tracing convs included) to the index of its top-level layer in ``model.model``."""
    return {module: i for i, layer in enumerate(model.model) for module in layer.modules()}
