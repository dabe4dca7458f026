"""Start distillation from a small loss: fit Ultralytics' feature projectors before the first step.

Ultralytics' ``DistillationModel`` maps each neck feature of the student to the teacher's width with a projector
(1x1 conv, ReLU, 1x1 conv) initialised at random, so the feature loss starts large and its first gradients pull the
student's features toward whatever the random projector makes of them. A pruned student's features are a subset of the
teacher's channels, slightly disturbed: a linear map from student to teacher features explains most of the teacher's.
`fit_projectors` sets each projector to that map, least squares on a few training batches:

* the first conv copies the student's channels and adds a shift that keeps them above zero (neck features end with
  SiLU, whose minimum is -0.28), so the ReLU passes them unchanged; its other output channels are zero;
* the second conv holds the least-squares map (lightly ridge-regularised) from the shifted student features to the
  teacher's, with its bias.

The distillation loss then starts at the fit's residual instead of a random projector's error; training goes on from
there as before (the projector is still trained).

Examples:
    >>> fitted = fit_projectors(distill_model, trainer.train_loader, trainer.preprocess_batch, batches=4)
    >>> fitted  # per level: (mean squared error of the fit, of the random projector)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..config.checks import PROJECTOR_INITS, check_projector_init  # re-exported: their old home

__all__ = [
    "PROJECTOR_INITS",
    "check_projector_init",
    "fit_projectors",
]

RIDGE = 1e-3  # ridge of the fit, relative to the mean diagonal of the features' Gram matrix


def _flat(feature: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N*H*W, C) in float64."""
    return feature.permute(0, 2, 3, 1).reshape(-1, feature.shape[1]).double()


@torch.no_grad()
def fit_projectors(
    model: nn.Module, batches: Iterable[dict], preprocess: Callable[[dict], dict], n_batches: int = 4
) -> list[tuple[float, float]] | None:
    """Fit every projector of an Ultralytics ``DistillationModel`` to map student features to teacher features.

    Args:
        model: The ``DistillationModel`` (unwrapped), in any mode; its modes are restored.
        batches: Training batches (the trainer's loader).
        preprocess: The trainer's ``preprocess_batch``.
        n_batches: How many batches to fit on.

    Returns:
        Per neck level, ``(mean squared error after the fit, before it)`` on the first batch; None when the
        model has no projectors or a student level is wider than the teacher's (the projector is then left as it was).
    """
    projectors = getattr(model, "projector", None)
    if not isinstance(projectors, nn.ModuleList) or not len(projectors):
        return None
    levels = len(projectors)
    student, teacher = model.student_model, model.teacher_model
    modes = student.training
    student.eval()
    feats: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(levels)]
    try:
        for batch, _ in zip(batches, range(max(1, n_batches)), strict=False):
            img = preprocess(batch)["img"]
            model._teacher_feats.clear()
            model._student_feats.clear()
            teacher(img)
            student(img)
            for i in range(levels):
                s = model.decouple_outputs(model._student_feats[i])
                t = model.decouple_outputs(model._teacher_feats[i])
                feats[i].append((s.detach(), t.detach()))
    finally:
        model._teacher_feats.clear()
        model._student_feats.clear()
        student.train(modes)
    widths = [(level[0][0].shape[1], level[0][1].shape[1]) for level in feats]  # (student, teacher) per level
    pairs = zip(projectors, widths, strict=True)
    if any(cs > ct or p[0].in_channels != cs or p[-1].out_channels != ct for p, (cs, ct) in pairs):
        return None  # checked for every level before any is changed: never a half-fitted set
    fitted = []
    for i, projector in enumerate(projectors):
        first, last = projector[0], projector[-1]
        s = torch.cat([_flat(a) for a, _ in feats[i]])
        t = torch.cat([_flat(b) for _, b in feats[i]])
        cs = s.shape[1]
        s0, t0 = feats[i][0]
        before = float(((projector(s0) - t0) ** 2).mean())
        shift = float(max(0.0, -s.min().item())) + 0.05  # keeps every shifted feature above zero: ReLU passes it
        x = torch.cat([s + shift, torch.ones(len(s), 1, dtype=s.dtype)], 1)  # shifted features and a bias column
        gram = x.T @ x
        ridge = RIDGE * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)  # few pixels at P5: no overfit
        solution = torch.linalg.solve(gram + ridge, x.T @ t)  # (cs + 1, ct)
        w1 = torch.zeros_like(first.weight)
        w1[:cs, :, 0, 0] = torch.eye(cs, dtype=w1.dtype)
        first.weight.copy_(w1)
        first.bias.zero_()
        first.bias[:cs] = shift
        w2 = torch.zeros_like(last.weight)
        w2[:, :cs, 0, 0] = solution[:cs].T.to(w2.dtype)
        last.weight.copy_(w2)
        last.bias.copy_(solution[cs].to(last.bias.dtype))
        fitted.append((float(((projector(s0) - t0) ** 2).mean()), before))  # through the ReLU, as training sees it
    return fitted
