"""Tests for the built-in shapes dataset: determinism, label validity, caching and interrupted generation."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from yolo_prune.data import shapes as data_module
from yolo_prune.data.shapes import BUILTIN_DATASETS, CLASS_NAMES, ensure_offline_font, make_shapes_dataset, resolve_data

REPO = Path(__file__).resolve().parents[1]
SMALL = {"n_train": 6, "n_val": 3, "imgsz": 96}


def file_hashes(root: Path) -> dict[str, str]:
    """Map every file below ``root`` (relative path) to the sha256 of its bytes."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def read_labels(root: Path) -> list[list[float]]:
    """All label rows of a generated dataset."""
    lines = [line for f in sorted(root.glob("labels/*/*.txt")) for line in f.read_text().splitlines()]
    return [[float(v) for v in line.split()] for line in lines]


def test_same_seed_gives_identical_files(tmp_path):
    root = tmp_path / "shapes"
    first = file_hashes(make_shapes_dataset(root, seed=3, **SMALL).parent)
    assert len(first) == 2 * (SMALL["n_train"] + SMALL["n_val"]) + 2  # images, labels, data.yaml, generator.json
    shutil.rmtree(root)
    assert file_hashes(make_shapes_dataset(root, seed=3, **SMALL).parent) == first
    shutil.rmtree(root)
    other = file_hashes(make_shapes_dataset(root, seed=4, **SMALL).parent)
    changed = [k for k in first if k.startswith(("images", "labels")) and first[k] != other[k]]
    assert len(changed) == 2 * (SMALL["n_train"] + SMALL["n_val"])


def test_labels_are_valid_for_ultralytics(tiny_data, monkeypatch):
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    lookups = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: lookups.append(a) or pytest.fail("network lookup"))
    info = check_det_dataset(tiny_data)
    assert lookups == []  # fonts are local (ensure_offline_font), so no request to github.com
    assert info["nc"] == len(CLASS_NAMES) and list(info["names"].values()) == list(CLASS_NAMES)

    root = Path(tiny_data).parent
    rows = read_labels(root)
    assert rows and all(len(r) == 5 and 0 <= int(r[0]) < len(CLASS_NAMES) for r in rows)
    assert all(0 < r[3] <= 1 and 0 < r[4] <= 1 for r in rows)
    assert all(0 <= r[1] - r[3] / 2 + 1e-6 and r[1] + r[3] / 2 <= 1 + 1e-6 for r in rows)
    assert all(0 <= r[2] - r[4] / 2 + 1e-6 and r[2] + r[4] / 2 <= 1 + 1e-6 for r in rows)

    cfg = get_cfg(overrides={"imgsz": 128, "mode": "train"})
    n_loaded = 0
    for split in ("train", "val"):
        n_images = len(list((root / "images" / split).iterdir()))
        dataset = build_yolo_dataset(cfg, info[split], batch=4, data=info, mode=split, stride=32)
        assert len(dataset.labels) == n_images  # no image dropped as corrupt
        n_loaded += sum(len(label["cls"]) for label in dataset.labels)
        item = dataset[0]  # goes through the training augmentations (mosaic) for the train split
        assert item["img"].shape[0] == 3 and len(item["cls"]) == len(item["bboxes"])
    assert n_loaded == len(rows)  # no label row dropped either


def test_resolve_data_generates_once_then_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv(data_module.CACHE_ENV, str(tmp_path))
    path = Path(resolve_data("shapes-tiny.yaml"))
    assert path.is_file() and tmp_path in path.parents
    assert yaml.safe_load(path.read_text())["path"] == str(path.parent)
    n = BUILTIN_DATASETS["shapes-tiny.yaml"]
    assert len(list(path.parent.glob("images/train/*"))) == n["n_train"]
    assert len(list(path.parent.glob("images/val/*"))) == n["n_val"]
    old = 1_000_000_000  # 2001: a rewritten file would get a current mtime, whatever the clock's resolution
    for f in path.parent.rglob("*"):
        os.utime(f, ns=(old, old))
    with monkeypatch.context() as patch:
        patch.setattr(data_module, "make_shapes_dataset", lambda *a, **k: pytest.fail("regenerated"))
        assert Path(resolve_data("shapes-tiny.yaml")) == path
    assert {p.stat().st_mtime_ns for p in path.parent.rglob("*")} == {old}  # nothing rewritten

    monkeypatch.setattr(data_module, "GENERATOR_VERSION", data_module.GENERATOR_VERSION + 1)
    assert Path(resolve_data("shapes-tiny.yaml")).parent != path.parent  # a new generator regenerates


@pytest.mark.parametrize("name", ["coco8.yaml", "VOC.yaml", "my/own/shapes.yaml", "/abs/data.yaml", "shapes"])
def test_resolve_data_passes_other_names_through(name):
    assert resolve_data(name) == name


def start_generation(root: Path) -> subprocess.Popen:
    """Start a long generation of ``root`` in a child process and wait until it has written some files.

    The wait is generous (a busy machine can take many seconds to start Python and import cv2): it only bounds a
    hang, and the child is ended on failure.
    """
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from yolo_prune.data.shapes import make_shapes_dataset; "
        "make_shapes_dataset(sys.argv[1], n_train=20000, n_val=0, imgsz=64)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not list(root.parent.glob(f".{root.name}.partial-*/labels/train/*0020.txt")):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"generation did not start (exit code {proc.returncode})")
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_generation_is_never_taken_as_complete(tmp_path, monkeypatch, sig):
    monkeypatch.setenv(data_module.CACHE_ENV, str(tmp_path))
    root = Path(resolve_data("shapes-tiny.yaml")).parent  # the cache folder resolve_data will look at
    shutil.rmtree(root)

    proc = start_generation(root)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    assert not root.exists()
    leftovers = list(tmp_path.glob(f".{root.name}.partial-*"))
    assert leftovers == [] if sig == signal.SIGINT else len(leftovers) == 1  # cleaned up unless killed hard

    path = Path(resolve_data("shapes-tiny.yaml"))  # regenerates in full despite any leftover
    assert path.parent == root and path.is_file()
    assert len(list(root.glob("images/train/*"))) == BUILTIN_DATASETS["shapes-tiny.yaml"]["n_train"]


def test_existing_folder_is_not_overwritten(tmp_path):
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        make_shapes_dataset(tmp_path, **SMALL)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


@pytest.mark.parametrize("name", sorted(BUILTIN_DATASETS))
def test_dataset_descriptions_match_the_code(name):
    description = yaml.safe_load((REPO / "datasets" / name).read_text())
    assert description["name"] == name
    assert description["params"] == BUILTIN_DATASETS[name]
    assert list(description["names"].values()) == list(CLASS_NAMES)


def test_ensure_offline_font_leaves_the_user_config_alone(tmp_path, monkeypatch):
    """Fonts are found offline without writing to the Ultralytics config folder (it stays exactly as it was).

    Mutation caught: copying DejaVuSans as ``Arial.ttf`` into ``USER_CONFIG_DIR`` (the old behaviour), or not
    registering anything (``check_font`` would then try github.com: the socket spy fails the test).
    """
    from matplotlib import font_manager
    from ultralytics.utils import checks

    monkeypatch.setattr(checks, "USER_CONFIG_DIR", tmp_path)
    monkeypatch.setattr(font_manager.fontManager, "ttflist", list(font_manager.fontManager.ttflist))
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: pytest.fail("network lookup"))
    (tmp_path / "Arial.ttf").write_bytes(b"mine")
    import ultralytics.utils

    monkeypatch.setattr(ultralytics.utils, "USER_CONFIG_DIR", tmp_path)
    ensure_offline_font()
    assert [p.name for p in tmp_path.iterdir()] == ["Arial.ttf"] and (tmp_path / "Arial.ttf").read_bytes() == b"mine"
    found = Path(checks.check_font("Arial.Unicode.ttf"))
    assert found.name == "Arial.Unicode.ttf" and tmp_path not in found.parents and found.stat().st_size > 100_000


def test_easy_variant_options(tmp_path):
    """Fewer, larger objects without clutter; only non-default options are recorded, so default files are unchanged.

    Mutations caught: ignoring ``max_objects`` (the default allows 5 per image) or the size range; writing default
    options into ``generator.json``/``data.yaml`` (that would change the built-in datasets' files).
    """
    easy = make_shapes_dataset(
        tmp_path / "easy", n_train=24, n_val=0, imgsz=96, max_objects=2, min_size=0.3, max_size=0.6, clutter=False
    )
    counts = [len(f.read_text().splitlines()) for f in sorted((easy.parent / "labels" / "train").glob("*.txt"))]
    assert max(counts) == 2 and min(counts) >= 1
    assert max(max(r[3], r[4]) for r in read_labels(easy.parent)) > 0.3
    params = yaml.safe_load((easy.parent / "generator.json").read_text())["params"]
    assert params["max_objects"] == 2 and params["clutter"] is False
    plain = make_shapes_dataset(tmp_path / "plain", **SMALL)
    assert set(yaml.safe_load((plain.parent / "generator.json").read_text())["params"]) == {*SMALL, "seed"}
    with pytest.raises(ValueError, match="min_size"):
        make_shapes_dataset(tmp_path / "bad", min_size=0.7, max_size=0.5)


def test_the_suite_uses_a_temporary_ultralytics_config():
    """Ultralytics' config folder (settings.json, fonts, DDP scripts) is a temporary one while the tests run.

    Mutation caught: conftest setting ``YOLO_CONFIG_DIR`` after ultralytics is imported, or not at all (the suite
    would write into the user's ~/.config/Ultralytics).
    """
    import tempfile

    from ultralytics.utils import USER_CONFIG_DIR

    assert Path(USER_CONFIG_DIR).is_relative_to(os.environ["YOLO_CONFIG_DIR"])
    assert Path(os.environ["YOLO_CONFIG_DIR"]).is_relative_to(tempfile.gettempdir())
