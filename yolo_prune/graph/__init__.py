"""Applying a pruning plan to a model through DepGraph (apart from deciding the plan, in `yolo_prune.policy`)."""
