"""Shared test setup: Ultralytics offline, generated datasets kept in pytest's temporary folders.

``YOLO_OFFLINE`` must be set before anything imports ultralytics, so it is set at the top of this module.
"""

from __future__ import annotations

import os

os.environ["YOLO_OFFLINE"] = "1"

import pytest  # noqa: E402

from yolo_prune.data import CACHE_ENV, ensure_offline_font, make_shapes_dataset  # noqa: E402

ensure_offline_font()  # otherwise every check_det_dataset() waits 3 s on a HEAD request to github.com

TINY_DATA = {"n_train": 16, "n_val": 8, "imgsz": 128, "seed": 0}  # 6 classes, about 4 objects per image


@pytest.fixture(scope="session", autouse=True)
def builtin_dataset_cache(tmp_path_factory: pytest.TempPathFactory):
    """Generate built-in datasets (``data=shapes-tiny.yaml``) into a temporary cache, not the user's datasets_dir."""
    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("yolo-prune-datasets"))
    yield os.environ[CACHE_ENV]
    if old is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = old


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path (str) of the data yaml of a tiny shapes dataset: 16 train and 8 val images of 128 px, 6 classes."""
    return str(make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes-tiny", **TINY_DATA))
