"""The options of yolo-prune, declared and checked in one place (no imports from the rest of the package).

* `yolo_prune.config.checks`: every value check (one-line ``ValueError`` naming the option).
* `yolo_prune.config.int8`: whether an INT8 format and QAT can run here (exporter formats, toolchains).
* `yolo_prune.config.options`: the option table of a pruning run (`PRUNE_OPTIONS`) and `check_prune_args`.
"""

from .checks import did_you_mean, is_none, resolve_device
from .options import PRUNE_DEFAULTS, PRUNE_OPTIONS, Option, check_prune_args, options_help, options_table

__all__ = [
    "PRUNE_DEFAULTS",
    "PRUNE_OPTIONS",
    "Option",
    "check_prune_args",
    "did_you_mean",
    "is_none",
    "options_help",
    "options_table",
    "resolve_device",
]
