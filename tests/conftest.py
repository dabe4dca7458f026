"""Shared test setup: Ultralytics offline, generated datasets kept in pytest's temporary folders.

``YOLO_OFFLINE`` must be set before anything imports ultralytics, so it is set at the top of this module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

os.environ["YOLO_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch_pruning as tp  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402
from ultralytics.utils import YAML  # noqa: E402

from yolo_prune.checkpoint import save_checkpoint  # noqa: E402
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


@pytest.fixture(scope="session")
def pruned_v5_ckpt(tiny_data, tmp_path_factory) -> tuple[Path, int, int]:
    """Return ``(path, pruned_params, unpruned_params)`` of a yolov5nu pruned 50% by stock torch-pruning.

    Stock torch-pruning handles YOLOv5u on its own, so trainer and checkpoint tests do not depend on yolo_prune's
    pruning rules.
    """
    nc = len(YAML.load(tiny_data)["names"])
    model = DetectionModel("yolov5nu.yaml", nc=nc, verbose=False).eval()
    unpruned = sum(p.numel() for p in model.parameters())
    pruner = tp.pruner.MetaPruner(
        model,
        torch.randn(1, 3, 64, 64),
        tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=[model.model[-1]],
    )
    pruner.step()
    path = save_checkpoint(model, tmp_path_factory.mktemp("pruned") / "pruned.pt", yolo_prune={"ratio": 0.5})
    return path, sum(p.numel() for p in model.parameters()), unpruned


STOCK_LOAD_CHILD = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockYoloPrune(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "yolo_prune":
                raise ImportError("yolo_prune must not be needed to load a pruned checkpoint")
            return None

    sys.meta_path.insert(0, BlockYoloPrune())
    from ultralytics import YOLO

    counts = [sum(p.numel() for p in YOLO(path).model.parameters()) for path in sys.argv[1:]]
    assert "yolo_prune" not in sys.modules
    print("RESULT " + json.dumps(counts))
    """
)


@pytest.fixture
def stock_param_counts(tmp_path) -> Callable[[list], list[int]]:
    """Return a function that loads checkpoints with stock Ultralytics in a fresh process that cannot import
    yolo_prune, and returns their parameter counts."""

    def load(paths: list) -> list[int]:
        script = tmp_path / "stock_load_child.py"
        script.write_text(STOCK_LOAD_CHILD)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"YOLO_OFFLINE": "1"}
        proc = subprocess.run(
            [sys.executable, str(script), *map(str, paths)], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return json.loads(proc.stdout.split("RESULT ", 1)[1])

    return load


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    """Paths of a yolov8n checkpoint and a narrower one (width 0.125, as pruning would leave it)."""
    from ultralytics import YOLO
    from ultralytics.nn.tasks import yaml_model_load

    folder = tmp_path_factory.mktemp("models")
    big, small = folder / "v8n.pt", folder / "v8n_narrow.pt"
    YOLO("yolov8n.yaml").save(big)
    cfg = yaml_model_load("yolov8n.yaml")
    cfg["scales"] = {"n": [0.33, 0.125, 1024]}
    yolo = YOLO("yolov8n.yaml")
    yolo.model = DetectionModel(cfg, verbose=False)
    yolo.save(small)
    return big, small
