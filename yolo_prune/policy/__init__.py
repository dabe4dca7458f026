"""Policy: what to remove (importance criteria, targets, per-layer allocation, sensitivity, sparse training)."""
