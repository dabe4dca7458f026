"""Shared test setup: Ultralytics offline with a temporary config folder, generated datasets kept in pytest's
temporary folders, one seed for every test, and a small detector trained once (cached) for the accuracy tests.

``YOLO_OFFLINE`` and ``YOLO_CONFIG_DIR`` must be set before anything imports ultralytics, so they are set at the top
of this module: the suite never writes to the user's Ultralytics settings or fonts (subprocesses inherit both).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ["YOLO_OFFLINE"] = "1"
_CONFIG_DIR = tempfile.mkdtemp(prefix="yolo_prune_tests_config_")
atexit.register(shutil.rmtree, _CONFIG_DIR, True)
os.environ["YOLO_CONFIG_DIR"] = _CONFIG_DIR  # Ultralytics settings.json (and any font) go here, not to ~/.config

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch_pruning as tp  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402
from ultralytics.utils import YAML  # noqa: E402

from yolo_prune.data.shapes import CACHE_ENV, GENERATOR_VERSION, ensure_offline_font, make_shapes_dataset  # noqa: E402
from yolo_prune.integration.checkpoint import save_checkpoint  # noqa: E402

ensure_offline_font()  # otherwise every check_det_dataset() waits 3 s on a HEAD request to github.com
SEED = 0


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Seed Python, NumPy and torch before every test's setup, so models built in fixtures or tests are the same
    whatever the test order or selection."""
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)


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


# A detector that learns in under a minute on 2 shared CPU cores: yolov8n (6 classes) on an easy variant of the shapes
# data (1-2 large objects, no clutter) at 96 px. About 40 s of training; mAP50-95 about 0.09, mAP50 about 0.15, and
# half of its channels pruned away it keeps about a tenth of that.
TRAINED_DATA = {
    "n_train": 128,
    "n_val": 32,
    "imgsz": 96,
    "seed": SEED,
    "max_objects": 2,
    "min_size": 0.3,
    "max_size": 0.6,
    "clutter": False,
}
TRAINED_RECIPE = {
    "epochs": 20,
    "imgsz": 96,
    "batch": 16,
    "nbs": 16,  # no gradient accumulation: one optimizer step per batch
    "optimizer": "AdamW",
    "lr0": 0.005,
    "warmup_epochs": 1,
    "mosaic": 0.0,
    "scale": 0.0,
    "translate": 0.0,
    "hsv_h": 0.0,
    "hsv_s": 0.0,
    "hsv_v": 0.0,
    "cache": "ram",
    "workers": 0,
    "plots": False,
    "val": False,
    "amp": False,
    "device": "cpu",
    "seed": SEED,
    "deterministic": True,
    "verbose": False,
}


@dataclass(frozen=True)
class TrainedDetector:
    """A trained tiny detector and the data it was trained on.

    Attributes:
        model: Checkpoint (FP32, ``save_checkpoint``), 6 classes.
        data: Data yaml of the easy shapes variant it was trained on.
        imgsz: Training and validation image size.
        map50: Its mAP50 on the validation split, measured once after training.
        map50_95: Its mAP50-95 there.
    """

    model: Path
    data: str
    imgsz: int
    map50: float
    map50_95: float


def _trained_key() -> str:
    """Cache key: everything that changes the trained weights (recipe, data, generator code and library versions)."""
    import ultralytics

    from yolo_prune.data import shapes as data_module

    generator = hashlib.sha256(Path(data_module.__file__).read_bytes()).hexdigest()
    parts = [TRAINED_DATA, TRAINED_RECIPE, GENERATOR_VERSION, generator, ultralytics.__version__, torch.__version__]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _train_detector(folder: Path) -> TrainedDetector:
    """Generate the data, train the detector into ``folder`` and measure it; ``info.json`` is written last."""
    from ultralytics import YOLO

    data = str(make_shapes_dataset(folder / "data", **TRAINED_DATA))
    torch.manual_seed(SEED)
    yolo = YOLO("yolov8n.yaml")
    yolo.model = DetectionModel("yolov8n.yaml", nc=6, verbose=False)
    run = folder / "run"
    yolo.train(data=data, project=str(run), name="train", exist_ok=True, **TRAINED_RECIPE)
    trained = YOLO(str(run / "train" / "weights" / "last.pt"))
    model = save_checkpoint(trained, folder / "model.pt")
    shutil.rmtree(run, ignore_errors=True)
    metrics = YOLO(str(model)).val(data=data, imgsz=TRAINED_RECIPE["imgsz"], batch=16, plots=False, device="cpu")
    info = {"map50": float(metrics.box.map50), "map50_95": float(metrics.box.map)}
    (folder / "info.json").write_text(json.dumps(info))
    return TrainedDetector(model, data, TRAINED_RECIPE["imgsz"], **info)


@pytest.fixture(scope="session")
def trained_detector(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TrainedDetector:
    """A yolov8n trained once to a clearly non-zero mAP, cached across sessions in pytest's cache.

    The cache folder is keyed by the recipe, the data parameters, the generator's version and source, and the
    ultralytics and torch versions; a half-written folder (no ``info.json``) is trained again. With the cache
    disabled, it is trained into a temporary folder.
    """
    key = f"trained-yolov8n-{_trained_key()}"
    cache = getattr(request.config, "cache", None)
    folder = Path(cache.mkdir(key)) if cache is not None else tmp_path_factory.mktemp(key)
    info = folder / "info.json"
    if info.is_file() and (folder / "model.pt").is_file() and (folder / "data" / "data.yaml").is_file():
        return TrainedDetector(
            folder / "model.pt",
            str(folder / "data" / "data.yaml"),
            TRAINED_RECIPE["imgsz"],
            **json.loads(info.read_text()),
        )
    for child in folder.iterdir():  # an interrupted earlier attempt
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    return _train_detector(folder)


@pytest.fixture
def ddp_worker(tmp_path) -> Callable[..., dict]:
    """Return ``run(trainer, report, inspect=None) -> dict``: generate Ultralytics' real DDP worker script for
    ``trainer`` (after ``trainer.load_model()``, as ``train()`` does), run it as one worker (world size 1, no GPU here)
    with ``report`` (code printing ``RESULT <json>``) appended, clean up, and return the reported dict. ``inspect`` is
    called with the generated state file's path before the worker runs."""
    from ultralytics.utils.dist import ddp_cleanup, generate_ddp_file

    def run(trainer, report: str, inspect: Callable[[Path], None] | None = None) -> dict:
        trainer.load_model()  # what train() does before launching DDP workers
        file = generate_ddp_file(trainer)  # the real Ultralytics DDP script and its cloudpickled state
        try:
            if inspect is not None:
                inspect(Path(file).with_suffix(".pt"))
            script = tmp_path / "ddp_worker.py"
            script.write_text(Path(file).read_text() + textwrap.indent(textwrap.dedent(report), "    "))
            env = {k: v for k, v in os.environ.items() if k not in {"RANK", "LOCAL_RANK", "WORLD_SIZE"}}
            proc = subprocess.run(
                [sys.executable, str(script)],
                cwd=tmp_path,
                env=env | {"YOLO_OFFLINE": "1"},
                capture_output=True,
                text=True,
            )
        finally:
            ddp_cleanup(trainer, file)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert not Path(file).exists()
        return json.loads(proc.stdout.split("RESULT ", 1)[1])

    return run
