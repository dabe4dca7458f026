"""yolo-prune: structured channel pruning for Ultralytics YOLO detect, segment, pose and obb models.

Examples:
    >>> from yolo_prune import prune, save_checkpoint
    >>> pruned = prune("yolo11n.yaml", ratio=0.5)
    >>> save_checkpoint(pruned, "yolo11n-pruned.pt")  # a plain Ultralytics checkpoint
    >>> scan = run_sensitivity("best.pt", "data.yaml", images=200)  # what each layer can give
    >>> pruned = prune("best.pt", target_macs=0.5, sensitivity=scan)  # 2x fewer MACs, least predicted mAP loss
"""

from .allocate import allocate, curves_from_sensitivity
from .callbacks import PruneCallback
from .checkpoint import load_yolo, save_checkpoint
from .importance import IMPORTANCE_METHODS, get_importance
from .prune import PruneStats, prune, prune_detection_model
from .sensitivity import run_sensitivity
from .tasks import TASKS, task_of, trainer_for
from .trainer import PrunedDetectionTrainer, PrunedOBBTrainer, PrunedPoseTrainer, PrunedSegmentationTrainer

__version__ = "0.2.0"

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
    "get_importance",
    "load_yolo",
    "prune",
    "prune_detection_model",
    "run_sensitivity",
    "save_checkpoint",
    "task_of",
    "trainer_for",
]
