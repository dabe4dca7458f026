"""Sparse training and progressive pruning as Ultralytics training callbacks.

``PruneCallback`` plugs into a plain ``model.train()``, the way Ultralytics integrations do: it is a set of functions
keyed by trainer event (``.callbacks``), added to a ``YOLO`` object with ``attach(model)`` before ``train()``.

* **Sparse training** (network slimming): after the backward pass and before ``optimizer.step()``, every batch that
  steps the optimizer adds ``strength * sign(gamma)`` to the gradient of every BatchNorm scale ``gamma`` (the L1
  sub-gradient; the same update as torch-pruning's ``BNScalePruner.regularize`` without group lasso). The trainer
  never fires ``optimizer_step`` callbacks, so ``on_train_start`` wraps this trainer instance's ``optimizer_step``
  method. At that point the gradients are still multiplied by the AMP ``GradScaler``, so the added term is multiplied
  by ``scaler.get_scale()`` when the scaler is enabled; the scaler then divides both alike. Gradient clipping
  (``max_norm=10``) sees the sum.
* **Progressive pruning**: before the scheduled epochs, ``prune_detection_model`` removes channels from the live
  model so that after step ``k`` of ``n`` about ``1 - (1 - ratio) ** (k / n)`` of the original prunable channels are
  gone. Everything that pointed at the old tensors is rebuilt: optimizer (same resolved settings; its moments restart),
  LR scheduler position, EMA, frozen layers, loss, best fitness, early stopper, ``last.pt`` (so NaN recovery loads the
  new shapes) and the stale unpruned ``best.pt`` is removed. The model only ever holds stock Ultralytics classes, so
  ``best.pt`` loads without yolo_prune; its progress is recorded as a plain dict in ``model.pruning_progress``.

The callback object holds only its settings (no trainer, graph or pruner), so it is cloudpickle-able for DDP.
Pruning is refused under DDP, ``compile``, QAT and distillation; sparse training alone works there.

Examples:
    >>> from ultralytics import YOLO
    >>> from yolo_prune import PruneCallback
    >>> model = YOLO("yolo11n.yaml")
    >>> PruneCallback(ratio=0.5, start_epoch=5, end_epoch=30, method="l2", sparsity=1e-4).attach(model)
    >>> model.train(data="my.yaml", epochs=40)

Over 400 lines: one class whose trainer-event methods share the pruning schedule's state, plus the rebuild of the
training state after a cut.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from ultralytics.engine.model import Model
from ultralytics.engine.trainer import BaseTrainer
from ultralytics.nn.tasks import load_checkpoint
from ultralytics.utils import LOGGER, RANK, colorstr
from ultralytics.utils.torch_utils import EarlyStopping, ModelEMA, unwrap_model

from ..config.checks import SPARSE_MODES, SPARSE_SCHEDULES, check_callback_settings
from ..measurement.measure import count_params
from ..policy.importance import collect_gradients, get_importance, needs_gradients
from ..policy.prune import prune_detection_model
from .trainer import PrunedDetectionTrainer

__all__ = [
    "PROGRESS_ATTR",
    "SPARSE_MODES",
    "SPARSE_SCHEDULES",
    "PruneCallback",
]

PREFIX = colorstr("yolo-prune: ")
PROGRESS_ATTR = "pruning_progress"  # plain dict on the model: survives checkpoints, needs no yolo_prune to unpickle
MAX_PASSES = 4  # pruning passes per step, to reach the cumulative target despite rounding


class PruneCallback:
    """Sparse training and progressive structured pruning inside ``model.train()``.

    Epochs are 0-based and a pruning step "at epoch e" runs before epoch ``e`` trains, i.e. after ``e`` epochs of
    training: ``start_epoch=5`` prunes after 5 epochs.

    Args:
        ratio: Target fraction of the ORIGINAL prunable channels to remove, in [0, 1); ``0`` disables pruning.
        start_epoch: Epoch before which the first pruning step runs.
        end_epoch: Epoch before which the last pruning step runs (default: ``start_epoch``); must be < ``epochs``.
        steps: Number of pruning steps, spread evenly from ``start_epoch`` to ``end_epoch`` (steps that fall on the
            same epoch run as one; with ``end_epoch == start_epoch`` pruning is one-shot). The default is 3, not the 1
            (one-shot) of ``yolo-prune prune``, on purpose: a callback prunes during one training run, and several
            smaller cuts with training in between let the network recover from each (progressive pruning), whereas
            ``yolo-prune prune`` cuts once and then fine-tunes (its ``steps=k`` repeats prune + fine-tune k times).
        method: Channel importance, a name of ``yolo_prune.policy.importance.IMPORTANCE_METHODS`` (``l1``, ``l2``,
            ``bn`` = BatchNorm scale, ...); gradient criteria (``taylor``, ``hessian``) run a few training batches per
            pass.
        sparsity: Strength of the L1 penalty on BN scales, added to their gradients per optimizer step; ``0``
            disables sparse training.
        sparse: What the penalty acts on: ``"bn"`` (L1 on BatchNorm scales, network slimming) or ``"group"`` (L2,1 over
            the channels of each DepGraph group: a channel's conv filters, BN entries and every consumer's input
            slices together, ``yolo_prune.policy.sparsity``; about 0.1-0.4 s more per optimizer step on a CPU for an n
            model).
        sparse_schedule: ``constant``; ``linear`` (decays from ``sparsity`` towards 0); ``ramp`` (rises to
            ``sparsity``) over the sparse epochs.
        sparse_epochs: Number of epochs with the penalty, from epoch 0. Default: until the last pruning step, or the
            whole run when ``ratio=0``.
        round_to: Kept widths are rounded up to a multiple of this; ``"auto"`` (default) picks this CPU's channel
            block (`yolo_prune.measurement.hardware.auto_round_to`: 16 with AVX-512, else 8).

    Raises:
        ValueError: On a bad argument.

    Examples:
        >>> from ultralytics import YOLO
        >>> model = YOLO("yolov8n.yaml")
        >>> PruneCallback(ratio=0.5, start_epoch=2, end_epoch=8, steps=3, sparsity=1e-3).attach(model)
        >>> model.train(data="data.yaml", epochs=12)
    """

    def __init__(
        self,
        ratio: float = 0.5,
        start_epoch: int = 0,
        end_epoch: int | None = None,
        steps: int = 3,
        method: str = "l2",
        sparsity: float = 0.0,
        sparse: str = "bn",
        sparse_schedule: str = "constant",
        sparse_epochs: int | None = None,
        round_to: int | str = "auto",
    ):
        """Check and store the settings; see the class docstring."""
        settings = check_callback_settings(
            ratio=ratio,
            start_epoch=start_epoch,
            end_epoch=end_epoch,
            steps=steps,
            method=method,
            sparsity=sparsity,
            sparse=sparse,
            sparse_schedule=sparse_schedule,
            sparse_epochs=sparse_epochs,
            round_to=round_to,
        )
        for key, value in settings.items():
            setattr(self, key, value)
        from ..measurement.hardware import resolve_round_to

        self.round_to = resolve_round_to(self.round_to, "onnx", "cpu").value

    # ------------------------------------------------------------------------------------------------------------
    # Public API

    @property
    def callbacks(self) -> dict[str, list[Callable[[BaseTrainer], None]]]:
        """Trainer event -> functions, in the format of Ultralytics' integration ``callbacks`` dicts."""
        return {
            "on_pretrain_routine_start": [self.on_pretrain_routine_start],
            "on_pretrain_routine_end": [self.on_pretrain_routine_end],
            "on_train_start": [self.on_train_start],
            "on_train_epoch_start": [self.on_train_epoch_start],
            "teardown": [self.teardown],
        }

    def attach(self, model: Model) -> Model:
        """Add the callbacks to a ``YOLO`` object; call it before ``model.train()``. Attaching twice is a no-op.

        Args:
            model: The Ultralytics ``YOLO`` (or other ``Model``) to train.

        Returns:
            ``model``, for chaining.

        Raises:
            TypeError: If ``model`` is not an Ultralytics ``Model`` (e.g. a bare ``nn.Module``).
        """
        if not isinstance(model, Model):
            raise TypeError(f"attach() expects an ultralytics YOLO object, got {type(model).__name__}")
        for event, functions in self.callbacks.items():
            for function in functions:
                if function not in model.callbacks.get(event, []):
                    model.add_callback(event, function)
        return model

    @property
    def prune_epochs(self) -> list[int]:
        """Epochs before which the pruning steps run (empty when ``ratio=0``); repeated epochs merge their steps."""
        if self.ratio == 0:
            return []
        if self.steps == 1:
            return [self.start_epoch]
        span = self.end_epoch - self.start_epoch
        return [self.start_epoch + round(i * span / (self.steps - 1)) for i in range(self.steps)]

    def sparsity_at(self, epoch: int, epochs: int) -> float:
        """Penalty strength during ``epoch`` of a run of ``epochs`` epochs (0 outside the sparse epochs)."""
        if self.sparsity == 0:
            return 0.0
        window = self.sparse_epochs
        if window is None:
            window = self.prune_epochs[-1] if self.ratio > 0 else epochs
        if epoch >= window:
            return 0.0
        if self.sparse_schedule == "linear":
            return self.sparsity * (1.0 - epoch / window)
        if self.sparse_schedule == "ramp":
            return self.sparsity * (epoch + 1) / window
        return self.sparsity

    def check_trainer(self, trainer: BaseTrainer) -> None:
        """Refuse, before anything changes, a run this callback cannot prune correctly.

        Args:
            trainer: The Ultralytics trainer about to train.

        Raises:
            RuntimeError: Pruning under DDP (``world_size > 1`` or a DDP worker), ``compile``, QAT or distillation, or
                resuming a pruned run without the pruned trainer of its task (``PrunedDetectionTrainer``,
                ``PrunedSegmentationTrainer``, ...).
            ValueError: A pruning step scheduled at or after the run's last epoch.
        """
        if self.ratio == 0:
            return
        args = trainer.args
        if trainer.world_size > 1 or RANK != -1:
            raise RuntimeError(
                f"PruneCallback cannot prune during multi-GPU (DDP) training (device={args.device}): every rank "
                "would have to rebuild the DDP wrapper, optimizer and EMA in lockstep. Prune on one device, or "
                "prune first (yolo_prune.prune) and fine-tune the pruned .pt under DDP with PrunedDetectionTrainer; "
                "sparse training alone (ratio=0) is supported under DDP"
            )
        if getattr(args, "distill_model", None) is not None:
            raise RuntimeError(
                "PruneCallback cannot prune a run that distils (distill_model=...): Ultralytics' DistillationModel "
                "sizes its student-to-teacher projectors from the student's widths once, when training starts, and "
                "pruning mid-run would leave them stale. Prune first and distil the fine-tune instead: "
                "'yolo-prune prune ... distill=True' (or ratio=0 here for sparse training alone)"
            )
        for name, active in (
            ("compile", bool(args.compile)),
            ("quantize=8 (QAT)", getattr(args, "quantize", None) == 8),
        ):
            if active:
                raise RuntimeError(f"PruneCallback cannot prune a model trained with {name}; use ratio=0 or drop it")
        last = self.prune_epochs[-1]
        if last >= trainer.epochs:
            raise ValueError(
                f"the last pruning step is scheduled before epoch {last} (0-based) but the run has only "
                f"{trainer.epochs} epochs: lower end_epoch or raise epochs (leave epochs to fine-tune after it)"
            )
        if trainer.resume and not isinstance(trainer, PrunedDetectionTrainer):
            model, _ = load_checkpoint(trainer.args.model)
            if getattr(model, PROGRESS_ATTR, {}).get("steps", 0):
                from ..rules.tasks import trainer_for

                raise RuntimeError(
                    f"'{trainer.args.model}' was pruned by PruneCallback; the stock trainer would rebuild it from "
                    f"yaml. Resume with model.train(resume=True, trainer={trainer_for(model).__name__})"
                )

    # ------------------------------------------------------------------------------------------------------------
    # Events

    def on_pretrain_routine_start(self, trainer: BaseTrainer) -> None:
        """Refuse unsupported runs early (runs in the process on RANK -1/0, before the model is built)."""
        self.check_trainer(trainer)

    def on_pretrain_routine_end(self, trainer: BaseTrainer) -> None:
        """Check again on every rank, then start a fresh pruning record unless resuming a pruned run."""
        self.check_trainer(trainer)
        if self.ratio == 0:
            return
        model = unwrap_model(trainer.model)
        progress = getattr(model, PROGRESS_ATTR, None)
        if not (trainer.resume and isinstance(progress, dict)):  # a new run: the given model is the "original"
            setattr(model, PROGRESS_ATTR, {"steps": 0, "params_original": count_params(model)})

    def on_train_start(self, trainer: BaseTrainer) -> None:
        """Log the plan and install the sparsity penalty in this trainer's ``optimizer_step``."""
        if RANK in {-1, 0}:
            parts = []
            if self.sparsity > 0:
                what = "L1 on BN scales" if self.sparse == "bn" else "group lasso over channel groups"
                parts.append(f"sparse training ({what}, {self.sparsity:g}, {self.sparse_schedule})")
            if self.ratio > 0:
                parts.append(
                    f"pruning {self.ratio:.0%} of prunable channels ({self.method}) in {self.steps} step(s) "
                    f"before epoch(s) {', '.join(str(e + 1) for e in sorted(set(self.prune_epochs)))} (1-based)"
                )
            LOGGER.info(f"{PREFIX}{'; '.join(parts) or 'nothing to do (ratio=0, sparsity=0)'}")
        if self.sparsity > 0:
            _wrap_optimizer_step(trainer, self.add_sparsity_gradient)

    def on_train_epoch_start(self, trainer: BaseTrainer) -> None:
        """Run the pruning steps due before this epoch, then rebuild what pointed at the old tensors."""
        due = sum(e <= trainer.epoch for e in self.prune_epochs)
        model = unwrap_model(trainer.model)
        progress = getattr(model, PROGRESS_ATTR, None)
        if not isinstance(progress, dict) or due <= progress["steps"]:
            return
        trainer.optimizer.zero_grad()  # no half-accumulated gradient carries over to the new tensors
        before = count_params(model)
        removed = self._prune_to_step(trainer, model, progress, due)
        self._rebuild_training_state(trainer, model)
        LOGGER.info(
            f"{PREFIX}pruning step {due}/{self.steps} before epoch {trainer.epoch + 1}: removed {removed} channels, "
            f"{before:,} -> {progress['params']:,} parameters; "
            f"{1 - progress['channels'] / progress['channels_original']:.1%} of the original prunable channels removed "
            f"(target {self.ratio:.0%} after {self.steps} step(s))"
        )

    def teardown(self, trainer: BaseTrainer) -> None:
        """Remove the ``optimizer_step`` wrapper from the trainer."""
        _unwrap_optimizer_step(trainer)

    # ------------------------------------------------------------------------------------------------------------
    # Internals

    def add_sparsity_gradient(self, trainer: BaseTrainer) -> None:
        """Add the penalty's gradient to the (still AMP-scaled) gradients: ``strength * sign(gamma)`` on every
        BatchNorm scale (``sparse="bn"``), or the group-lasso gradient over the model's channel groups (``"group"``)."""
        strength = self.sparsity_at(trainer.epoch, trainer.epochs)
        if strength == 0:
            return
        scaler = trainer.scaler
        if scaler is not None and scaler.is_enabled():
            strength *= scaler.get_scale()  # the gradients are still scaled; scaler.unscale_ divides this back
        if self.sparse == "group":
            from ..policy.sparsity import add_group_lasso_gradient, channel_groups

            model = unwrap_model(trainer.model)
            model = getattr(model, "student_model", model)  # a distillation wrapper: penalise the student
            key = sum(p.numel() for p in model.parameters())  # the groups change when the model is pruned
            if getattr(self, "_groups_key", None) != key:
                self._groups, self._groups_key = channel_groups(model), key
            add_group_lasso_gradient(model, self._groups, strength)
            return
        with torch.no_grad():
            for m in unwrap_model(trainer.model).modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and m.weight.grad is not None:
                    m.weight.grad.add_(torch.sign(m.weight), alpha=strength)

    def _prune_to_step(self, trainer: BaseTrainer, model: nn.Module, progress: dict[str, Any], due: int) -> int:
        """Prune until ``1 - (1 - ratio) ** (due / steps)`` of the original channels are gone; return channels removed.

        Widths are rounded up to ``round_to`` in every group, so one uniform pass on an already pruned model falls
        short of a cumulative target; a few more passes on the remainder close most of the gap.
        """
        keep = (1.0 - self.ratio) ** (due / self.steps)  # fraction of the original channels to keep
        importance = get_importance(self.method)  # built per step: the callback holds no torch-pruning object
        removed = 0
        for _ in range(MAX_PASSES):
            if "channels" in progress:
                ratio = 1.0 - keep * progress["channels_original"] / max(progress["channels"], 1)
            else:  # nothing pruned yet: the current model is the original
                ratio = 1.0 - keep
            if ratio <= 0.0:
                break
            gradients = None
            if needs_gradients(self.method):  # taylor/hessian: a few training batches through the real loss
                gradients = collect_gradients(
                    model, trainer.args.data, self.method, batch=trainer.batch_size, imgsz=trainer.args.imgsz
                )
            stats = prune_detection_model(
                model, min(ratio, 0.99), importance, round_to=self.round_to, gradients=gradients
            )
            progress.setdefault("channels_original", stats.channels_before)
            progress.update(channels=stats.channels_before - stats.channels_removed, params=stats.params_after)
            removed += stats.channels_removed
            if stats.channels_removed == 0 or progress["channels"] <= keep * progress["channels_original"] * 1.01:
                break
        progress.setdefault("channels_original", progress.get("channels", 0))
        progress.setdefault("channels", progress["channels_original"])
        progress.setdefault("params", count_params(model))
        progress["steps"] = due
        return removed

    @staticmethod
    def _rebuild_training_state(trainer: BaseTrainer, model: nn.Module) -> None:
        """Point optimizer, scheduler, EMA, freezing, loss, fitness and checkpoints at the pruned model."""
        args = trainer.args
        for name, p in model.named_parameters():  # pruning re-enabled grads; re-apply the trainer's freezing
            p.requires_grad_(p.dtype.is_floating_point and not any(f in name for f in trainer.freeze_layer_names))
        old = trainer.optimizer
        decay = next(
            (g["weight_decay"] for g in old.param_groups if g.get("param_group") in {"weight", "muon"}),
            args.weight_decay,
        )
        group = old.param_groups[0]
        momentum = group["betas"][0] if "betas" in group else group.get("momentum", args.momentum)
        iterations = math.ceil(len(trainer.train_loader.dataset) / max(trainer.batch_size, args.nbs)) * trainer.epochs
        trainer.optimizer = trainer.build_optimizer(
            model, name=args.optimizer, lr=args.lr0, momentum=momentum, decay=decay, iterations=iterations
        )  # args hold the resolved choice of optimizer=auto; momentum as in effect (auto picks its own)
        trainer._setup_scheduler()
        trainer.scheduler.last_epoch = trainer.epoch - 1  # the trainer steps it right after this event

        criterion = getattr(model, "criterion", None)
        model.criterion = None  # rebuilt on first use; keep the end-to-end loss schedule (as Ultralytics' resume does)
        if criterion is not None and hasattr(criterion, "updates") and hasattr(criterion, "update"):
            model.criterion = model.init_criterion()
            model.criterion.updates = criterion.updates - 1
            model.criterion.update()

        ema = trainer.ema
        trainer.ema = ModelEMA(model, updates=ema.updates if ema else 0)
        if ema is not None:
            trainer.ema.enabled = ema.enabled
        trainer.best_fitness = None  # the unpruned model's fitness must not win best.pt
        trainer.stopper = EarlyStopping(patience=args.patience)
        if RANK in {-1, 0}:
            trainer.best.unlink(missing_ok=True)
            if trainer.epoch > trainer.start_epoch:  # write last.pt in the new shapes for NaN recovery and resume
                epoch, trainer.epoch = trainer.epoch, trainer.epoch - 1  # it holds epochs 0..epoch-1, then pruning
                try:
                    trainer.save_model()
                finally:
                    trainer.epoch = epoch


def _wrap_optimizer_step(trainer: BaseTrainer, before_step: Callable[[BaseTrainer], None]) -> None:
    """Make ``trainer.optimizer_step()`` call ``before_step(trainer)`` first (this instance only)."""
    original = trainer.optimizer_step

    def optimizer_step() -> None:
        before_step(trainer)
        original()

    optimizer_step.yolo_prune_original = original
    trainer.optimizer_step = optimizer_step


def _unwrap_optimizer_step(trainer: BaseTrainer) -> None:
    """Undo ``_wrap_optimizer_step`` (a no-op when the trainer was not wrapped)."""
    step = trainer.__dict__.get("optimizer_step")
    if step is not None and hasattr(step, "yolo_prune_original"):
        original = step.yolo_prune_original
        if getattr(original, "__self__", None) is trainer and original.__func__ is type(trainer).optimizer_step:
            del trainer.optimizer_step
        else:
            trainer.optimizer_step = original
