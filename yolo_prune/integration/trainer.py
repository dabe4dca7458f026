"""Trainers that fine-tune a pruned model as it is, instead of rebuilding it from its yaml (detect, segment, pose, obb).

The stock ``DetectionTrainer.get_model`` builds a fresh ``DetectionModel`` from ``model.yaml`` (which always describes
the unpruned network) and copies over only the tensors whose shapes match, so a pruned checkpoint silently turns back
into a full-size model. ``PrunedDetectionTrainer`` returns the module it is given, so the model, its EMA, the
optimizer and the saved ``best.pt``/``last.pt`` all keep the pruned shapes. ``PrunedSegmentationTrainer``,
``PrunedPoseTrainer`` and ``PrunedOBBTrainer`` do the same on top of Ultralytics' ``SegmentationTrainer``,
``PoseTrainer`` and ``OBBTrainer`` (``yolo_prune.rules.tasks.trainer_for`` picks the one for a model).

Notes:
    ``best.pt`` and ``last.pt`` are finalised by Ultralytics' ``strip_optimizer``, which stores the EMA in FP16. That
    stock behaviour is kept: the files stay pruned and load in stock Ultralytics (as FP32). Use
    ``yolo_prune.integration.checkpoint.save_checkpoint`` when an FP32 file is wanted.

Examples:
    >>> from ultralytics import YOLO
    >>> from yolo_prune.integration.trainer import PrunedDetectionTrainer
    >>> YOLO("pruned.pt").train(trainer=PrunedDetectionTrainer, data="data.yaml", epochs=10)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.models.yolo.obb import OBBTrainer
from ultralytics.models.yolo.pose import PoseTrainer
from ultralytics.models.yolo.segment import SegmentationTrainer
from ultralytics.nn.tasks import DetectionModel, guess_model_task, load_checkpoint
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK, colorstr
from ultralytics.utils.torch_utils import strip_qat

__all__ = [
    "AtomicWritePath",
    "PrunedDetectionTrainer",
    "PrunedOBBTrainer",
    "PrunedPoseTrainer",
    "PrunedSegmentationTrainer",
]

PREFIX = colorstr("yolo-prune: ")
NO_MODEL = (
    "PrunedDetectionTrainer trains an existing (pruned) model but got none: load it from a .pt checkpoint "
    "(YOLO('pruned.pt').train(trainer=PrunedDetectionTrainer, ...)) or set trainer.model to the module; "
    "a yaml model or pretrained=False would rebuild the unpruned network"
)


class AtomicWritePath(type(Path())):
    """A path whose ``write_bytes`` goes through a temporary file and ``os.replace``: a process killed while the
    Ultralytics trainer saves ``last.pt``/``best.pt`` leaves the previous complete file, never a truncated one."""

    def write_bytes(self, data: bytes) -> int:
        """Write ``data`` atomically and return its length."""
        from .checkpoint import _write_atomic

        _write_atomic(Path(self), bytes(data))
        return len(data)


class PrunedDetectionTrainer(DetectionTrainer):
    """Detection trainer that trains the given (pruned) ``DetectionModel`` as is: no rebuild from yaml.

    The model can come from ``YOLO("pruned.pt").train(trainer=PrunedDetectionTrainer, ...)``, from
    ``model="pruned.pt"`` in the trainer overrides (also on ``resume=True``), or from setting ``trainer.model`` to a
    module before ``trainer.train()``. A model built from a yaml, ``pretrained=False`` and ``pretrained=<other file>``
    are refused with a ``ValueError`` rather than silently replacing the pruned model. Under DDP the module is loaded
    once in the launching process and sent to the workers by value.

    Examples:
        >>> trainer = PrunedDetectionTrainer(overrides={"model": "pruned.pt", "data": "data.yaml", "epochs": 1})
        >>> trainer.train()
    """

    accepted_task = "detect"  # the task of the models this trainer accepts
    keep_start = True  # validate the model before the first epoch; best.pt stays it unless an epoch beats it
    teacher: torch.nn.Module | None = None  # the distillation teacher in memory (else read from args.distill_model)

    def __init__(self, cfg: Any = DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None):
        """Create the trainer as `DetectionTrainer` does; its ``last.pt``/``best.pt`` are then written atomically.

        One key of its own is taken out of ``overrides`` before Ultralytics checks them: ``distill_projector``
        (``random``, Ultralytics' initialisation, the default; ``fit``: `yolo_prune.integration.distill.fit_projectors`
        before the first step of a distilled run; not carried into DDP workers, which keep ``random``).
        """
        from ..config.checks import check_projector_init

        overrides = dict(overrides or {})
        self.distill_projector = check_projector_init(overrides.pop("distill_projector", "random"))
        super().__init__(cfg, overrides, _callbacks)
        self.last, self.best = AtomicWritePath(self.last), AtomicWritePath(self.best)
        self.start_metrics: dict | None = None  # validation of the model as given, before any step (keep_start)

    def _setup_train(self) -> None:
        """Set up as Ultralytics does (with ``teacher`` set, the distillation teacher is that module instead of a new
        read of ``distill_model``), then (a new distilled run with ``distill_projector=fit``) fit the projectors, and
        (``keep_start``, a new run with validation) validate the starting model."""
        path = self.args.distill_model
        if self.teacher is not None and path is not None and not self.resume:
            self.args.distill_model = self.teacher  # Ultralytics builds its DistillationModel from a path or a module
        try:
            super()._setup_train()
        finally:
            self.args.distill_model = path  # what the checkpoints record, and what a resume rebuilds the teacher from
        if self.distill_projector == "fit" and self.start_epoch == 0:
            self._fit_projectors()
        if self.keep_start and self.start_epoch == 0 and self.args.val and RANK in {-1, 0}:
            self._keep_start()

    def _fit_projectors(self) -> None:
        """Fit the distillation projectors (student -> teacher features) by least squares on four training batches."""
        from ultralytics.nn.distill_model import DistillationModel
        from ultralytics.utils.torch_utils import unwrap_model

        from .distill import fit_projectors

        model = unwrap_model(self.model)
        if not isinstance(model, DistillationModel):
            return
        fitted = fit_projectors(model, self.train_loader, self.preprocess_batch, n_batches=4)
        if fitted is None:
            LOGGER.warning(f"{PREFIX}distill_projector=fit: the projectors do not fit this teacher; left at random")
            return
        self.ema.ema.projector.load_state_dict(model.projector.state_dict())  # the EMA starts from the same weights
        errors = ", ".join(f"{before:.3g} -> {after:.3g}" for after, before in fitted)
        LOGGER.info(f"{PREFIX}distillation projectors fitted by least squares (feature MSE per level: {errors})")

    def _keep_start(self) -> None:
        """Validate the model before any step and write it as ``best.pt``: fine-tuning can then only improve on it.

        On a few hundred images a fine-tune can leave a converged model worse than it started; Ultralytics keeps the
        best epoch but never compares it with the model it was given. Here the start competes too (same validator,
        same fitness). ``last.pt`` is not written, not even for a moment: a run interrupted before its first epoch ends
        leaves no ``last.pt`` to resume from the start model.
        """
        self.epoch = -1  # before the first epoch (the loop sets it next); saved so that best.pt reads as stripped
        if not isinstance(getattr(self, "loss_items", None), dict):
            self.loss_items = self._zero_loss_items()  # the validator keys its loss sums by the last step's items
        if self.loss is None:
            self.loss = torch.zeros((), device=self.device)  # read (as a fallback fitness) by validate()
        metrics, fitness = self.validate()  # also sets best_fitness
        if metrics is None:
            return
        self.start_metrics = {**metrics, "fitness": fitness}
        self.metrics, self.fitness = metrics, fitness
        last, self.last = self.last, self.best  # written as best.pt only: no last.pt from before the first epoch, not
        try:  # even for a moment (an interruption then would leave a run that cannot resume)
            self.save_model()
        finally:
            self.last = last
        LOGGER.info(
            f"{PREFIX}model before fine-tuning: fitness {fitness:.4f} "
            f"(mAP50-95 {metrics.get('metrics/mAP50-95(B)', float('nan')):.4f}); best.pt keeps it unless an epoch "
            "beats it"
        )

    def _zero_loss_items(self) -> dict[str, torch.Tensor]:
        """Zeros keyed like the loss items the validator will add up (one validation batch through the EMA model)."""
        model = self.ema.ema
        batch = self.preprocess_batch(next(iter(self.test_loader)))
        with torch.no_grad():
            _, items = model.loss(batch, model(batch["img"]))
        return {k: torch.zeros_like(v) for k, v in items.items()}

    def get_model(
        self, cfg: str | dict | None = None, weights: torch.nn.Module | None = None, verbose: bool = True
    ) -> DetectionModel:
        """Return ``weights``, the loaded (pruned) module, prepared for training instead of a model built from ``cfg``.

        Args:
            cfg (str | dict, optional): Model yaml; ignored, it describes the unpruned network.
            weights (torch.nn.Module, optional): The loaded model to train.
            verbose (bool): Whether to log the model size.

        Returns:
            (DetectionModel): ``weights`` itself, with gradients enabled and class names set.

        Raises:
            ValueError: If no module is given (model built from a yaml, ``pretrained=False``), ``pretrained`` points
                to another file, the model is not a detector, or its class count differs from the dataset's.
        """
        if not isinstance(weights, torch.nn.Module):
            raise ValueError(NO_MODEL)
        return self.prepare_model(weights, verbose=verbose)

    def setup_model(self) -> dict | None:
        """Prepare a module set on ``trainer.model``, or load the ``.pt`` named by ``args.model`` through ``get_model``.

        Returns:
            (dict | None): The checkpoint to resume from, or None.
        """
        if isinstance(self.model, torch.nn.Module):
            self.model = self.prepare_model(self.model, verbose=False)
            return None
        return super().setup_model()

    def train(self) -> None:
        """Train; under DDP, first load the pruned module here so that it travels to the workers by value."""
        if self.ddp and not self.resume:  # a resumed run reloads last.pt in each worker, with its optimizer state
            self.load_model()
        return super().train()

    def load_model(self) -> DetectionModel:
        """Load the model named by ``args.model`` (unless already loaded), prepare it and store it on ``self.model``.

        Returns:
            (DetectionModel): The prepared pruned model, also stored as ``self.model``.
        """
        if not isinstance(self.model, torch.nn.Module):
            if not str(self.model).lower().endswith(".pt"):
                raise ValueError(NO_MODEL)  # a yaml would rebuild the unpruned network
            self.model, _ = load_checkpoint(self.model)
        self.model = self.prepare_model(self.model, verbose=False)
        return self.model

    def prepare_model(self, model: torch.nn.Module, verbose: bool = False) -> DetectionModel:
        """Check that ``model`` fits this run and make it trainable without changing its architecture.

        Args:
            model (torch.nn.Module): The (pruned) detection model.
            verbose (bool): Whether to log the model size.

        Returns:
            (DetectionModel): ``model`` itself, in FP32, with gradients enabled, no cached loss and dataset names.

        Raises:
            ValueError: If ``pretrained`` points to another file, the model is not a detector, or its class count
                differs from the dataset's.
        """
        self._check_pretrained()
        task = getattr(model, "task", None) or guess_model_task(model)
        if not isinstance(model, DetectionModel) or task != self.accepted_task:
            raise ValueError(f"{type(self).__name__} trains '{self.accepted_task}' models only, got a '{task}' model")
        nc = getattr(model.model[-1], "nc", None)
        if nc != self.data["nc"]:
            raise ValueError(
                f"dataset '{self.args.data}' has nc={self.data['nc']} classes but the model has nc={nc}: "
                "a pruned model keeps its head, so train it on data with the same classes"
            )
        self._check_head(model)
        # A QAT checkpoint (Ultralytics quantize=8) comes back from the loader with its fake quantization re-applied;
        # the trainer applies it itself (restored from the checkpoint on resume, calibrated anew otherwise), and twice
        # fails in ModelOpt, so the module is handed over plain, as the stock trainer's rebuilt model is.
        strip_qat(model)
        model.float()  # a checkpoint may hold FP16 weights; AMP keeps FP32 master weights
        for p in model.parameters():
            if p.dtype.is_floating_point:
                p.requires_grad_(True)  # strip_optimizer saves requires_grad=False; freezing is re-applied later
        model.criterion = None  # rebuilt from the current hyperparameters on first use
        if verbose and RANK in {-1, 0}:
            n = sum(p.numel() for p in model.parameters())
            LOGGER.info(f"{PREFIX}training the given model as is ({n:,} parameters), not rebuilding it from yaml")
        return self.set_model_names_for_load(model)

    def _check_head(self, model: torch.nn.Module) -> None:
        """Raise a ``ValueError`` if the head does not fit the dataset beyond its classes (see the pose trainer)."""

    def _check_pretrained(self) -> None:
        """Refuse ``pretrained=<path>`` naming a file other than the model: it would replace the pruned model."""
        pretrained, model = self.args.pretrained, self.args.model
        if self.resume or not isinstance(pretrained, (str, Path)) or str(pretrained) in {"True", "False"}:
            return
        if isinstance(model, (str, Path)) and Path(model).is_file() and Path(pretrained).is_file():
            if Path(model).resolve() == Path(pretrained).resolve():
                return
        raise ValueError(
            f"pretrained='{pretrained}' would replace the pruned model '{model}'; PrunedDetectionTrainer trains the "
            "model it is given: load the checkpoint you want as the model instead"
        )


class PrunedSegmentationTrainer(PrunedDetectionTrainer, SegmentationTrainer):
    """Segmentation trainer that trains the given (pruned) ``SegmentationModel`` as is (see `PrunedDetectionTrainer`).

    Examples:
        >>> YOLO("pruned-seg.pt").train(trainer=PrunedSegmentationTrainer, data="shapes-seg.yaml", epochs=10)
    """

    accepted_task = "segment"


class PrunedPoseTrainer(PrunedDetectionTrainer, PoseTrainer):
    """Pose trainer that trains the given (pruned) ``PoseModel`` as is (see `PrunedDetectionTrainer`).

    The dataset's ``kpt_shape`` must be the head's: a pruned model keeps its keypoint outputs.

    Examples:
        >>> YOLO("pruned-pose.pt").train(trainer=PrunedPoseTrainer, data="shapes-pose.yaml", epochs=10)
    """

    accepted_task = "pose"

    def _check_head(self, model: torch.nn.Module) -> None:
        """Raise a ``ValueError`` if the dataset's ``kpt_shape`` differs from the head's."""
        head, wanted = model.model[-1], self.data.get("kpt_shape")
        if wanted is not None and list(head.kpt_shape) != list(wanted):
            raise ValueError(
                f"dataset '{self.args.data}' has kpt_shape={list(wanted)} but the model has "
                f"kpt_shape={list(head.kpt_shape)}: a pruned model keeps its head, so train it on data with the same "
                "keypoints"
            )


class PrunedOBBTrainer(PrunedDetectionTrainer, OBBTrainer):
    """Oriented-box trainer that trains the given (pruned) ``OBBModel`` as is (see `PrunedDetectionTrainer`).

    Examples:
        >>> YOLO("pruned-obb.pt").train(trainer=PrunedOBBTrainer, data="shapes-obb.yaml", epochs=10)
    """

    accepted_task = "obb"
