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
from yolo_prune.data import task_shapes
from yolo_prune.data.builtin import resolve_data
from yolo_prune.data.shapes import (
    BUILTIN_DATASETS,
    CLASS_NAMES,
    CLASS_NAMES_V3,
    class_names,
    ensure_offline_font,
    make_shapes_dataset,
)

REPO = Path(__file__).resolve().parents[1]
SMALL = {"n_train": 6, "n_val": 3, "imgsz": 96}
# sha256 of the raw pixels and label text of a few v2 images (see test_v2_output_is_unchanged), computed with the v2
# generator before v3 was added. Tied to the OpenCV drawing code and numpy's PCG64 streams (not to the JPEG encoder).
V2_DIGEST = "0a23af4b6147832d5c70b3c5a618aedfc0e81165726c59946cbbe4ac46c41b78"
# Cache folders of the v2 and task built-in datasets before v3: they must keep pointing at the same data.
V2_FOLDERS = {
    "shapes.yaml": "shapes-g2-e3f5f882",
    "shapes-tiny.yaml": "shapes-tiny-g2-744b2de5",
    "shapes-seg.yaml": "shapes-seg-g1-aa82fbce",
    "shapes-pose.yaml": "shapes-pose-g1-af1502f5",
    "shapes-obb.yaml": "shapes-obb-g1-aa9139ef",
}


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
    version = BUILTIN_DATASETS[name].get("version", data_module.GENERATOR_VERSION)
    assert list(description["names"].values()) == list(class_names(version))


def test_v2_output_is_unchanged():
    """v2 images and labels are exactly those v2 made before v3 existed (raw pixels, so any change shows).

    Mutations caught: any change to a v2 random draw or its order (a v3 feature drawing from the generator in v2, a
    reordered shape helper), to v2's drawing or to the label format; the easy variant's overrides being ignored.
    """
    easy = data_module.replace(data_module._DESIGNS[2], max_objects=2, size_range=(0.3, 0.6))
    cases = [(128, 0, 0), (128, 0, 1), (128, 0, 2), (128, 1, 0), (128, 1, 1), (320, 0, 0), (320, 1, 7)]
    samples = [data_module._render_sample(0, split_id, i, size) for size, split_id, i in cases]
    samples += [data_module._render_sample(0, 0, i, 96, easy, clutter=False) for i in range(3)]
    digest = hashlib.sha256()
    for image, labels in samples:
        digest.update(image.tobytes())
        digest.update(data_module._label_text(labels).encode())
    assert digest.hexdigest() == V2_DIGEST


def test_v2_cache_folders_are_unchanged(tmp_path, monkeypatch):
    """The v2 and task built-in names resolve to the same cache folders as before v3 (nothing is generated here).

    Mutation caught: a ``version`` entry added to the v2 parameters (changes the hash) or a v2 folder named after v3.
    """
    monkeypatch.setenv(data_module.CACHE_ENV, str(tmp_path))

    def fake(root, *args, **kwargs):
        Path(root).mkdir(parents=True)
        (Path(root) / "data.yaml").write_text("names: {}\n")
        return Path(root) / "data.yaml"

    monkeypatch.setattr(data_module, "make_shapes_dataset", fake)
    monkeypatch.setattr(task_shapes, "make_task_dataset", fake)
    assert {name: Path(resolve_data(name)).parent.name for name in V2_FOLDERS} == V2_FOLDERS
    assert Path(resolve_data("shapes-v3-tiny.yaml")).parent.name.startswith("shapes-v3-tiny-g3-")


def test_v3_is_deterministic_per_seed(tmp_path):
    """v3: the same seed gives byte-identical files, another seed (or v2) other images and labels.

    Mutations caught: a random source outside the per-image generator (global numpy or time), or ``version`` ignored.
    """
    small = {"n_train": 4, "n_val": 2, "imgsz": 128, "version": 3}
    first = file_hashes(make_shapes_dataset(tmp_path / "a", seed=1, **small).parent)
    shutil.move(tmp_path / "a", tmp_path / "a-first")
    assert file_hashes(make_shapes_dataset(tmp_path / "a", seed=1, **small).parent) == first
    data_files = [k for k in first if k.startswith(("images", "labels"))]
    assert len(data_files) == 2 * (small["n_train"] + small["n_val"])
    other = file_hashes(make_shapes_dataset(tmp_path / "b", seed=2, **small).parent)
    assert all(first[k] != other[k] for k in data_files)
    v2 = file_hashes(make_shapes_dataset(tmp_path / "c", seed=1, **{**small, "version": 2}).parent)
    assert all(first[k] != v2[k] for k in data_files if k.startswith("images"))
    info = yaml.safe_load((tmp_path / "a" / "generator.json").read_text())
    assert info["version"] == 3 and info["params"]["version"] == 3  # generator.json's params regenerate it
    with pytest.raises(ValueError, match="version"):
        make_shapes_dataset(tmp_path / "d", version=4, **SMALL)


def test_v3_objects_span_sizes_and_classes(tmp_path, monkeypatch):
    """shapes-v3-tiny.yaml: boxes from under 8 % to over 50 % of the side, many objects per image, ten named classes.

    Mutations caught: v3 drawn with v2's size range (12-50 %: no boxes under 8 %, none over 50 %) or object count
    (at most 5), a class never drawn, the data yaml listing v2's six names.
    """
    monkeypatch.setenv(data_module.CACHE_ENV, str(tmp_path))
    root = Path(resolve_data("shapes-v3-tiny.yaml")).parent
    assert list(yaml.safe_load((root / "data.yaml").read_text())["names"].values()) == list(CLASS_NAMES_V3)
    assert len(CLASS_NAMES_V3) == 10 and CLASS_NAMES_V3[: len(CLASS_NAMES)] == CLASS_NAMES
    rows = read_labels(root)
    sides = [max(r[3], r[4]) for r in rows]
    assert sum(s < 0.08 for s in sides) >= 0.1 * len(sides)  # small objects: stride 8 at 320 px
    assert sum(s > 0.35 for s in sides) >= 0.05 * len(sides) and max(sides) > 0.5  # large ones: stride 32
    assert {int(r[0]) for r in rows} == set(range(len(CLASS_NAMES_V3)))
    counts = [len(f.read_text().splitlines()) for f in root.glob("labels/*/*.txt")]
    assert min(counts) >= 1 and max(counts) > 5


def test_v3_small_shares_the_validation_images():
    """shapes-v3-small.yaml differs from shapes-v3.yaml only in n_train: same val images, first training images."""
    big, small = BUILTIN_DATASETS["shapes-v3.yaml"], BUILTIN_DATASETS["shapes-v3-small.yaml"]
    assert big["version"] == 3 and {k: v for k, v in small.items() if k != "n_train"} == {
        k: v for k, v in big.items() if k != "n_train"
    }
    assert small["n_train"] < big["n_train"]


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
