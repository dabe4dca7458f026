"""yolo-prune: structured channel pruning for Ultralytics YOLO detect, segment, pose and obb models.

Examples:
    >>> from yolo_prune import prune, save_checkpoint
    >>> pruned = prune("yolo11n.yaml", ratio=0.5)
    >>> save_checkpoint(pruned, "yolo11n-pruned.pt")  # a plain Ultralytics checkpoint
    >>> scan = run_sensitivity("best.pt", "data.yaml", images=200)  # what each layer can give
    >>> pruned = prune("best.pt", target_macs=0.5, sensitivity=scan)  # 2x fewer MACs, least predicted mAP loss
    >>> pruned = prune("best.pt", ratio=0.2, reconstruct="ls", data="data.yaml")  # re-fitted before any training
    >>> export_int8("pruned.pt", "data.yaml", imgsz=640, out_dir="int8", format="onnx")  # INT8 Q/DQ ONNX, last step
    >>> PruneRun(model="best.pt", data="data.yaml", target_macs=0.5).run()  # yolo-prune prune, stage by stage
    >>> PruneRun.resume("runs/prune/exp").run()  # continue an interrupted run
"""

from .integration.callbacks import PruneCallback
from .integration.checkpoint import load_yolo, save_checkpoint
from .integration.engine import PruneRun
from .integration.trainer import PrunedDetectionTrainer, PrunedOBBTrainer, PrunedPoseTrainer, PrunedSegmentationTrainer
from .measurement.hardware import LatencyTable, auto_round_to, padded_macs
from .measurement.quantize import export_int8, measure_int8
from .measurement.side_by_side import time_rows
from .policy.allocate import allocate, curves_from_sensitivity
from .policy.importance import IMPORTANCE_METHODS, get_importance
from .policy.prune import PruneStats, prune, prune_detection_model
from .policy.reconstruct import ReconstructStats, calibration_images, reconstruct
from .policy.sensitivity import run_sensitivity
from .rules.tasks import TASKS, task_of, trainer_for

__version__ = "0.5.0"

__all__ = [
    "IMPORTANCE_METHODS",
    "LatencyTable",
    "PruneCallback",
    "PruneRun",
    "PruneStats",
    "ReconstructStats",
    "PrunedDetectionTrainer",
    "PrunedOBBTrainer",
    "PrunedPoseTrainer",
    "PrunedSegmentationTrainer",
    "TASKS",
    "allocate",
    "auto_round_to",
    "calibration_images",
    "curves_from_sensitivity",
    "export_int8",
    "get_importance",
    "load_yolo",
    "measure_int8",
    "padded_macs",
    "prune",
    "prune_detection_model",
    "reconstruct",
    "run_sensitivity",
    "save_checkpoint",
    "task_of",
    "time_rows",
    "trainer_for",
]
