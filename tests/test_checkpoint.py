"""Tests for yolo_prune.integration.checkpoint: loading YOLO models and saving pruned ones as stock Ultralytics
checkpoints."""

import os

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported: nothing may be downloaded

import hashlib  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402

from yolo_prune.integration.checkpoint import load_yolo, save_checkpoint  # noqa: E402
from yolo_prune.measurement.measure import count_params  # noqa: E402


def test_load_yolo_accepts_yolo_checkpoint_and_yaml(pruned_v5_ckpt):
    path, pruned, unpruned = pruned_v5_ckpt
    digest = hashlib.sha256(path.read_bytes()).hexdigest()

    from_yaml = load_yolo("yolov5nu.yaml")
    assert isinstance(from_yaml.model, DetectionModel) and from_yaml.task == "detect"
    assert load_yolo(from_yaml) is from_yaml  # returned as is, not copied or changed

    for source in (path, str(path)):
        yolo = load_yolo(source)
        assert yolo.task == "detect" and count_params(yolo.model) == pruned < unpruned
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # the input file is never modified


def _random_bytes(path: Path) -> Path:
    path.write_bytes(random.Random(2048).randbytes(2048))  # seeded: the same bytes on every run
    return path


def _text_file(path: Path) -> Path:
    path.write_text("this is not a checkpoint\n")
    return path


def _state_dict(path: Path) -> Path:
    torch.save(DetectionModel("yolov5nu.yaml", verbose=False).state_dict(), path)
    return path


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda d: d / "missing.pt", r"not found.*nothing is downloaded"),
        (lambda d: _random_bytes(d / "random.pt"), r"not an Ultralytics YOLO checkpoint.*not a PyTorch file"),
        (lambda d: _text_file(d / "notes.pt"), r"not an Ultralytics YOLO checkpoint"),
        (lambda d: _state_dict(d / "state_dict.pt"), r"holds no YOLO model module \(a plain state_dict\?\)"),
        (lambda d: "yolo_no_such_model99n.yaml", r"unknown model yaml 'yolo_no_such_model99n.yaml'"),
        (lambda d: "yolo11n-cls.yaml", r"'classify' model; supported tasks: detect, segment, pose, obb"),
        (lambda d: d / "model.onnx", r"unsupported model .*'\.pt' checkpoint or a model yaml"),
        (lambda d: 42, r"cannot load a model from a int"),
    ],
    ids=["missing", "random-bytes", "text", "state-dict", "unknown-yaml", "classify-task", "onnx", "int"],
)
def test_load_yolo_rejects_bad_input_with_one_line_value_error(tmp_path, make, match):
    source = make(tmp_path)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ValueError, match=match) as info:
        load_yolo(source)
    assert "\n" not in str(info.value)
    assert sorted(os.listdir(tmp_path)) == before  # nothing downloaded or written next to the input


def test_save_checkpoint_writes_fp32_ultralytics_checkpoint_atomically(pruned_v5_ckpt, tmp_path):
    path, pruned, _ = pruned_v5_ckpt
    yolo = load_yolo(path)
    reference = YOLO("yolov5nu.yaml")
    reference.save(tmp_path / "reference.pt")
    out = save_checkpoint(yolo, tmp_path / "out" / "again.pt", yolo_prune={"ratio": 0.5, "method": "l2"})

    assert out == tmp_path / "out" / "again.pt"
    assert os.listdir(out.parent) == ["again.pt"]  # no temporary file left behind
    ckpt = torch.load(out, map_location="cpu", weights_only=False)
    stock_keys = set(torch.load(tmp_path / "reference.pt", map_location="cpu", weights_only=False))
    assert stock_keys <= set(ckpt)
    assert ckpt["ema"] is None and ckpt["optimizer"] is None and isinstance(ckpt["train_args"], dict)
    assert ckpt["yolo_prune"] == {"ratio": 0.5, "method": "l2"}
    floats = [v for v in ckpt["model"].state_dict().values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float32 for v in floats)
    assert count_params(ckpt["model"]) == pruned

    save_checkpoint(yolo, out)  # an existing output that is not the model's source is replaced
    assert os.listdir(out.parent) == ["again.pt"]


def test_save_checkpoint_refuses_to_overwrite_its_input_or_store_custom_objects(pruned_v5_ckpt, tmp_path):
    path, _, _ = pruned_v5_ckpt
    yolo = load_yolo(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="refusing to overwrite"):
        save_checkpoint(yolo, path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest

    with pytest.raises(ValueError, match="extra value meta\\['t'\\] is a Tensor"):
        save_checkpoint(yolo, tmp_path / "a.pt", meta={"t": torch.zeros(1)})
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(yolo, tmp_path / "b.pt", model="x")
    yolo.model.model[0].register_forward_hook(count_params)  # pickled by reference: stock could not load it
    with pytest.raises(ValueError, match=r"count_params, which stock Ultralytics cannot load"):
        save_checkpoint(yolo, tmp_path / "c.pt")
    assert os.listdir(tmp_path) == []


STOCK_CHILD = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockYoloPrune(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "yolo_prune":
                raise ImportError("yolo_prune must not be needed to use a pruned checkpoint")
            return None

    sys.meta_path.insert(0, BlockYoloPrune())
    import numpy as np
    import onnxruntime as ort
    from ultralytics import YOLO
    from ultralytics.nn.tasks import torch_safe_load

    path = sys.argv[1]
    yolo = YOLO(path)
    params = sum(p.numel() for p in yolo.model.parameters())
    results = yolo.predict(np.zeros((64, 64, 3), dtype=np.uint8), imgsz=64, device="cpu", verbose=False)
    onnx_file = yolo.export(format="onnx", imgsz=64, device="cpu", simplify=False)
    session = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, 64, 64), dtype=np.float32)})
    torch_safe_load(path, safe_only=True)  # only allow-listed torch/ultralytics classes inside
    assert "yolo_prune" not in sys.modules
    print("RESULT " + json.dumps({"params": params, "n_results": len(results), "onnx_shape": list(output.shape)}))
    """
)


@pytest.mark.slow
def test_saved_pruned_checkpoint_works_in_stock_ultralytics(pruned_v5_ckpt, tmp_path):
    path, pruned, _ = pruned_v5_ckpt
    nc = load_yolo(path).model.model[-1].nc
    script = tmp_path / "stock_child.py"
    script.write_text(STOCK_CHILD)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"YOLO_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["params"] == pruned
    assert result["n_results"] == 1
    assert result["onnx_shape"][:2] == [1, 4 + nc]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A real checkpoint written by ``YOLO.save()`` for a yolov8n at width 1/16 (about 1.4 MB)."""
    from ultralytics.nn.tasks import yaml_model_load

    cfg = yaml_model_load("yolov8n.yaml")
    cfg["scales"] = {"n": [0.33, 0.0625, 1024]}
    yolo = YOLO("yolov8n.yaml")
    yolo.model = DetectionModel(cfg, verbose=False)
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    yolo.save(path)
    return path


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    """A zip archive (not a torch file) in memory."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."  # how a legacy (non-zip) torch.save file starts


def _damaged_versions(data: bytes, rng: random.Random):
    """Yield ``(kind, bytes)``: random files (bare, or behind a zip or legacy-torch header), truncations, bit flips and
    zeroed blocks of ``data``."""
    for i in range(300):
        body = rng.randbytes(rng.randrange(0, 3000))
        yield "random", (b"", b"PK\x03\x04", LEGACY_MAGIC, b"\x80\x02")[i % 4] + body
    cuts = {1, 3, 4, 30, 100, len(data) // 2, len(data) - 23, len(data) - 22, len(data) - 1}
    for cut in sorted(cuts | {rng.randrange(1, len(data)) for _ in range(50)}):
        yield "truncated", data[:cut]
    head = min(len(data), 4096)  # zip headers and the pickle live here: flips there exercise the parsers
    for k in range(120):
        pos = rng.randrange(head) if k % 2 else rng.randrange(len(data))
        flipped = bytearray(data)
        flipped[pos] ^= 1 << rng.randrange(8)
        yield "bit-flip", bytes(flipped)
    for _ in range(30):
        start, size = rng.randrange(len(data)), rng.randrange(16, 4096)
        yield "zeroed", data[:start] + bytes(len(data[start : start + size])) + data[start + size :]


def test_load_yolo_fuzz_loads_or_refuses_with_one_line(tiny_ckpt, tmp_path):
    """Seeded fuzz of the checkpoint reader: every damaged file is loaded or refused with a one-line ValueError.

    Catches: unpickling before checking the format (MemoryError/OverflowError/UnicodeDecodeError from random bytes),
    dropping the CRC check or the broad catch around the unpickler (BadZipFile, RuntimeError from a damaged archive).
    """
    data = tiny_ckpt.read_bytes()
    target = tmp_path / "fuzz.pt"
    outcomes: dict[str, dict[str, int]] = {}
    for kind, blob in _damaged_versions(data, random.Random(11)):
        target.write_bytes(blob)
        try:
            load_yolo(target)
            result = "loaded"
        except ValueError as e:
            assert "\n" not in str(e) and str(e).startswith("'"), f"{kind}: {e!r}"
            result = "refused"
        outcomes.setdefault(kind, {"loaded": 0, "refused": 0})[result] += 1
    assert outcomes["random"] == {"loaded": 0, "refused": 300}
    assert outcomes["truncated"]["loaded"] == 0  # a torch zip cut anywhere loses its central directory
    assert outcomes["bit-flip"]["refused"] > 100  # the CRCs catch flips in tensor data too
    assert sum(outcomes["zeroed"].values()) == 30
    assert os.listdir(tmp_path) == ["fuzz.pt"]  # nothing written next to the input


def test_load_yolo_refuses_damaged_archives_with_specific_reasons(tiny_ckpt, tmp_path):
    """Each kind of damage gets its own reason. Catches: a generic message for everything, or the CRC check removed
    (a flipped tensor byte would load silently)."""
    data = tiny_ckpt.read_bytes()
    cases = {
        "empty.pt": (b"", r"empty \(0 bytes\)"),
        "cut.pt": (data[: len(data) // 2], r"truncated or damaged \(zip archive unreadable: BadZipFile"),
        "flip.pt": (data[:-200_000] + bytes([data[-200_000] ^ 0xFF]) + data[-199_999:], r"CRC check failed"),
        "legacy-garbage.pt": (LEGACY_MAGIC + b"\x80\x02\x95" + b"\xff" * 64, r"could not be read|truncated"),
        "zip-not-torch.pt": (_zip_bytes({"notes.txt": b"hello"}), r"zip archive without the data\.pkl record"),
    }
    for name, obj in {"list.pt": [1, 2, 3], "no-model.pt": {"epoch": 3}, "str-model.pt": {"model": "yolo"}}.items():
        torch.save(obj, tmp_path / name)  # wrong objects: valid torch files holding something else
        with pytest.raises(ValueError, match=r"holds no YOLO model module"):
            load_yolo(tmp_path / name)
    for name, (blob, match) in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ValueError, match=match) as info:
            load_yolo(tmp_path / name)
        assert "\n" not in str(info.value)


def test_saved_checkpoint_drops_the_source_runs_metrics(tmp_path):
    """A model loaded from a trained checkpoint keeps its train_args, but not the metrics of that (unpruned) run.

    Mutation caught: copying ``train_metrics``/``train_results`` from ``YOLO.ckpt`` into the pruned checkpoint.
    """
    source = tmp_path / "trained.pt"
    yolo = YOLO("yolov5nu.yaml")
    yolo.save(source)
    ckpt = torch.load(source, map_location="cpu", weights_only=False)
    ckpt.update(
        train_metrics={"metrics/mAP50-95(B)": 0.42},
        train_results={"epoch": [1], "metrics/mAP50-95(B)": [0.42]},
        train_args={"imgsz": 96, "epochs": 3},
    )
    torch.save(ckpt, source)
    out = save_checkpoint(load_yolo(source), tmp_path / "pruned.pt")
    saved = torch.load(out, map_location="cpu", weights_only=False)
    assert "train_metrics" not in saved and "train_results" not in saved
    assert saved["train_args"]["imgsz"] == 96, "the source's training arguments are kept"
