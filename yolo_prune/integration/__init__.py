"""Integration with Ultralytics: checkpoints, the pruned trainers, callbacks, the pipeline and the CLI."""
