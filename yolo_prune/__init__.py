"""yolo-prune: structured channel pruning for Ultralytics YOLO detectors."""

__version__ = "0.1.0"
