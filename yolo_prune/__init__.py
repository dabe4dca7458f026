"""yolo-prune: structured channel pruning for Ultralytics YOLO detect, segment, pose and obb models.

Examples:
    >>> from yolo_prune import prune, save_checkpoint
    >>> pruned = prune("yolo11n.yaml", ratio=0.5)
    >>> save_checkpoint(pruned, "yolo11n-pruned.pt")  # a plain Ultralytics checkpoint
    >>> scan = run_sensitivity("best.pt", "data.yaml", images=200)  # what each layer can give
    >>> pruned = prune("best.pt", target_macs=0.5, sensitivity=scan)  # 2x fewer MACs, least predicted mAP loss
    >>> export_int8("pruned.pt", "data.yaml", imgsz=640, out_dir="int8")  # INT8 OpenVINO model as the last step
"""

from .allocate import allocate, curves_from_sensitivity
from .callbacks import PruneCallback
from .checkpoint import load_yolo, save_checkpoint
from .importance import IMPORTANCE_METHODS, get_importance
from .prune import PruneStats, prune, prune_detection_model
from .quantize import export_int8, measure_int8
from .sensitivity import run_sensitivity
from .tasks import TASKS, task_of, trainer_for
from .trainer import PrunedDetectionTrainer, PrunedOBBTrainer, PrunedPoseTrainer, PrunedSegmentationTrainer

__version__ = "0.3.0"

__all__ = [
    "IMPORTANCE_METHODS",
    "PruneCallback",
    "PruneStats",
    "PrunedDetectionTrainer",
    "PrunedOBBTrainer",
    "PrunedPoseTrainer",
    "PrunedSegmentationTrainer",
    "TASKS",
    "allocate",
    "curves_from_sensitivity",
    "export_int8",
    "get_importance",
    "load_yolo",
    "measure_int8",
    "prune",
    "prune_detection_model",
    "run_sensitivity",
    "save_checkpoint",
    "task_of",
    "trainer_for",
]
