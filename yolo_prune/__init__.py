"""yolo-prune: structured channel pruning for Ultralytics YOLO detectors.

Examples:
    >>> from yolo_prune import prune, save_checkpoint
    >>> pruned = prune("yolo11n.yaml", ratio=0.5)
    >>> save_checkpoint(pruned, "yolo11n-pruned.pt")  # a plain Ultralytics checkpoint
"""

from .callbacks import PruneCallback
from .checkpoint import load_yolo, save_checkpoint
from .importance import IMPORTANCE_METHODS, get_importance
from .prune import PruneStats, prune, prune_detection_model
from .trainer import PrunedDetectionTrainer

__version__ = "0.1.0"

__all__ = [
    "IMPORTANCE_METHODS",
    "PruneCallback",
    "PruneStats",
    "PrunedDetectionTrainer",
    "get_importance",
    "load_yolo",
    "prune",
    "prune_detection_model",
    "save_checkpoint",
]
