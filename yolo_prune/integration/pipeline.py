"""`yolo-prune prune`: validate, prune (in one or more steps), fine-tune, measure and report in one run folder.

Everything a run writes goes into ``project/name`` (incremented: ``exp``, ``exp-2``, ...); the input model is only
read. Layout of a run folder::

    exp/
        weights/pruned.pt           pruned, not fine-tuned, FP32 (written before any training)
        weights/step<k>-pruned.pt   per-step pruned models when steps > 1
        weights/best.pt, last.pt    the final fine-tuned model (copies of the chosen step's trainer output)
        weights/input.pt            the input model, FP32, when a sparse-training stage runs first
        sensitivity/                the per-layer sensitivity scan (allocation=sensitivity): reusable with
                                    sensitivity=<run>/sensitivity for the same model
        sparse/                     the sparse-training run (sparse_epochs > 0)
        step<k>/                    the Ultralytics trainer's own run for step k (weights/last.pt saved every epoch)
        measure/                    validation and ONNX/OpenVINO exports of the measured models
        measure/int8/               with int8=<format>: the INT8 exports of the baseline and the final model
        qat/                        with qat=True: the quantization-aware training run (its checkpoints need ModelOpt)
        report.json, report.md, results.csv, pareto.png
        state.json                  the finished stages and what they left (`PruneRun.resume`, yolo-prune resume)

Resuming: ``yolo-prune resume run=runs/prune/exp`` (``PruneRun.resume(run_dir).run()``) continues an interrupted run by
stage. Underneath, an interrupted fine-tune leaves ``exp/step<k>/weights/last.pt`` (and always ``weights/pruned.pt``);
the fine-tune alone resumes with the pruned trainer (the stock one would rebuild the unpruned network)::

    from ultralytics import YOLO
    from yolo_prune.integration.trainer import PrunedDetectionTrainer

    YOLO("runs/prune/exp/step1/weights/last.pt").train(resume=True, trainer=PrunedDetectionTrainer)

Examples:
    >>> from yolo_prune.integration.pipeline import run_prune
    >>> run_dir = run_prune(model="best.pt", data="data.yaml", target_macs=0.5, epochs=10, imgsz=320, distill=True)
    >>> (run_dir / "weights" / "best.pt").is_file()
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config.checks import ALLOCATIONS, check_output_folder
from ..config.options import PRUNE_DEFAULTS, RESERVED_TRAIN_KEYS
from .engine import PruneRun, parse_prune_args
from .stages import (
    SCAN_RECONSTRUCT_IMAGES,
    PruneInterrupted,
    budget_exceeded,
    check_dataset_matches,
    latency_note,
    resolve_teacher,
    step_ratio,
)

__all__ = [
    "ALLOCATIONS",
    "FINETUNE_DEFAULTS",
    "PRUNE_DEFAULTS",
    "RESERVED_TRAIN_KEYS",
    "SCAN_RECONSTRUCT_IMAGES",
    "PruneInterrupted",
    "PruneRun",
    "budget_exceeded",
    "check_dataset_matches",
    "check_output_folder",
    "latency_note",
    "parse_prune_args",
    "resolve_teacher",
    "run_prune",
    "step_ratio",
]

# The 0.4 fine-tuning recipe (one lr0 for every model), kept for the benchmarks that reproduce results measured with
# it; runs now derive theirs from the input checkpoint (`yolo_prune.integration.recipe.finetune_defaults`).
FINETUNE_DEFAULTS: dict[str, Any] = {
    "optimizer": "AdamW",
    "lr0": 0.002,
    "warmup_epochs": 0.5,
    "warmup_bias_lr": 0.0,
    "dis": 1.0,
}


def run_prune(command: str | None = None, **kwargs: Any) -> Path:
    """Prune a YOLO detector toward ``ratio`` in ``steps`` rounds, fine-tune after each, measure and report.

    Arguments are those of `PRUNE_DEFAULTS` plus any Ultralytics training argument (see `parse_prune_args`). The
    steps: (1) measure the baseline (mAP50-95, mAP50, params, GFLOPs, size, latency); (2) for each step, prune the
    current model by `step_ratio` with ``yolo_prune.policy.prune.prune``, save ``weights/pruned.pt`` at once (FP32),
    then fine-tune it for ``epochs`` with the pruned trainer of its task (`PrunedDetectionTrainer`,
    `PrunedSegmentationTrainer`, `PrunedPoseTrainer`, `PrunedOBBTrainer`) and measure it; with ``max_map_drop`` the
    schedule stops at the first step whose mAP50-95 falls more than that below the baseline, and the last step within
    the budget becomes the final model; (3) copy the final model to ``weights/best.pt`` and ``weights/last.pt``; with
    ``int8=<format>`` (``onnx``, ``openvino`` = True, or another INT8 format of the exporter) quantize the baseline
    and the final model (`yolo_prune.measurement.quantize.measure_int8`) and add the rows ``baseline+int8`` and
    ``final+int8``; with ``qat=True`` train the final model ``qat_epochs`` more with fake quantization and add its INT8
    ONNX as ``final+qat``; (4) write
    ``report.json``/``report.md``/``results.csv``/``pareto.png`` and log the table.

    Args:
        command (str, optional): The command line, recorded in the report.
        **kwargs (Any): ``model``, ``data`` (required) and any other `PRUNE_DEFAULTS` or Ultralytics training key.

    Returns:
        (Path): The run folder.

    Raises:
        ValueError: On bad arguments, an unreadable model, or a dataset whose classes differ from the model's.
        FileNotFoundError: If the dataset is missing.
        PruneInterrupted: On Ctrl-C, with the last good checkpoint written so far.

    Examples:
        >>> run_prune(model="best.pt", data="shapes.yaml", ratio=0.5, epochs=3, imgsz=160, lr0=0.002)
        PosixPath('runs/prune/exp')
    """
    return PruneRun(command=command, **kwargs).run()
