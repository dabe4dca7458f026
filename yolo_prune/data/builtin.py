"""The built-in datasets by name (``data=shapes.yaml``, ``shapes-v3.yaml``, ``shapes-seg.yaml``, ...): generated on
first use into the dataset cache and reused afterwards (`resolve_data`).

Examples:
    >>> resolve_data("shapes-tiny.yaml")  # path of the generated data.yaml
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import shapes  # read through the module at call time: its generator version and maker can be swapped
from .task_shapes import TASK_DATASETS, TASK_GENERATOR_VERSION, make_task_dataset

__all__ = ["resolve_data"]


def resolve_data(data: str) -> str:
    """Map a built-in dataset name to a generated data yaml; return any other value unchanged.

    Built-in names are the keys of `yolo_prune.data.shapes.BUILTIN_DATASETS` (``"shapes.yaml"``,
    ``"shapes-tiny.yaml"``, ``"shapes-v3.yaml"``,
    ``"shapes-v3-small.yaml"``, ``"shapes-v3-tiny.yaml"``) and of ``yolo_prune.data.task_shapes.TASK_DATASETS``
    (``"shapes-seg.yaml"``, ``"shapes-pose.yaml"``, ``"shapes-obb.yaml"``), matched exactly.
    The dataset is generated on first use into ``shapes.dataset_cache_dir() / "<name>-g<version>-<hash of parameters>"``
    (the version is the entry's ``"version"``, `yolo_prune.data.shapes.GENERATOR_VERSION` when absent) and reused
    afterwards; a new generator
    version or new parameters give a new folder.

    Args:
        data (str): A built-in name, or anything Ultralytics accepts as ``data=`` (path to a yaml, ``"coco8.yaml"``).

    Returns:
        (str): Path of the generated data yaml for a built-in name, else ``data`` itself.

    Examples:
        >>> resolve_data("shapes.yaml")  # first call generates (a few seconds), later calls reuse
        >>> resolve_data("VOC.yaml")
        'VOC.yaml'
    """
    if not isinstance(data, str) or data not in {**shapes.BUILTIN_DATASETS, **TASK_DATASETS}:
        return data
    params = shapes.BUILTIN_DATASETS.get(data) or TASK_DATASETS[data]
    builtin = data in shapes.BUILTIN_DATASETS
    make = shapes.make_shapes_dataset if builtin else make_task_dataset
    version = params.get("version", shapes.GENERATOR_VERSION) if builtin else TASK_GENERATOR_VERSION
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    root = shapes.dataset_cache_dir() / f"{Path(data).stem}-g{version}-{digest}"
    yaml_path = root / shapes.DATA_YAML
    if not yaml_path.is_file():
        from ultralytics.utils import LOGGER, colorstr

        LOGGER.info(f"{colorstr('yolo-prune: ')}generating built-in dataset {data} into {root}")
        try:
            make(root, **params)
        except FileExistsError:
            if not yaml_path.is_file():  # someone else's folder, not a finished dataset
                raise
    return str(yaml_path)
