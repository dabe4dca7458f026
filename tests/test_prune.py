"""Pruning core: every Ultralytics detection family prunes, stays valid, and saves as a stock checkpoint."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from ultralytics import YOLO
from ultralytics.utils.torch_utils import get_flops

from yolo_prune import prune, save_checkpoint

FAMILIES = [
    "yolov3-tinyu.yaml",
    "yolov5nu.yaml",
    "yolov6n.yaml",
    "yolov8n.yaml",
    "yolov9t.yaml",
    "yolov10n.yaml",
    "yolo11n.yaml",
    "yolo12n.yaml",
    "yolo26n.yaml",
]
IMGSZ = 64


def _shapes(output) -> list[tuple[int, ...]]:
    """Flatten a model output (tensor, list, tuple or dict of them) into a list of shapes.

    The head also returns its input feature maps (``feats``); their widths are internal and change with pruning.
    """
    if isinstance(output, torch.Tensor):
        return [tuple(output.shape)]
    if isinstance(output, dict):
        return [s for key in sorted(output) if key != "feats" for s in _shapes(output[key])]
    if isinstance(output, (list, tuple)):
        return [s for item in output for s in _shapes(item)]
    return []


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, list[tuple[int, ...]]]:
    model.eval()
    with torch.no_grad():
        eval_shapes = _shapes(model(x)[0])  # (predictions, raw head outputs)
    model.train()
    train_shapes = _shapes(model(x))
    model.eval()
    return {"eval": eval_shapes, "train": train_shapes}


def _stock_only(model: torch.nn.Module) -> list[str]:
    """Names of module classes that are not from torch or ultralytics."""
    return sorted(
        {type(m).__qualname__ for m in model.modules() if not type(m).__module__.startswith(("torch.", "ultralytics."))}
    )


@pytest.fixture(scope="module")
def pruned_family(tmp_path_factory) -> dict[str, dict]:
    """Prune each family once at 0.5 (built from yaml) and save it; shared by the tests below."""
    out = tmp_path_factory.mktemp("families")
    results = {}
    for name in FAMILIES:
        base = YOLO(name)
        x = torch.rand(1, 3, IMGSZ, IMGSZ)
        before = _outputs(base.model, x)
        flops = get_flops(base.model, 640)
        params = sum(p.numel() for p in base.model.parameters())
        pruned = prune(base, ratio=0.5, verbose=False)
        path = save_checkpoint(pruned, out / name.replace(".yaml", "-pruned.pt"))
        results[name] = {
            "base": base,
            "pruned": pruned,
            "path": path,
            "x": x,
            "before": before,
            "flops": flops,
            "params": params,
        }
    return results


@pytest.mark.parametrize("name", FAMILIES)
def test_family_prunes_and_stays_valid(pruned_family, name):
    r = pruned_family[name]
    model = r["pruned"].model
    params = sum(p.numel() for p in model.parameters())
    assert params < 0.75 * r["params"], "pruning at 0.5 should remove well over a quarter of the parameters"
    assert get_flops(model, 640) <= 0.65 * r["flops"], "MACs must drop by at least 35% at ratio 0.5"
    assert _outputs(model, r["x"]) == r["before"], "output shapes must not change in train or eval mode"
    assert _stock_only(model) == [], "the pruned model must be made only of stock classes"
    # the input model is untouched (prune works on a copy)
    assert sum(p.numel() for p in r["base"].model.parameters()) == r["params"]
    # width attributes are repaired: the exporter switches C2f-like blocks to forward_split, which splits by .c
    # (mutation caught: leaving .c at its unpruned value makes forward_split fail or differ from forward)
    model.eval()
    for m in model.modules():
        if hasattr(m, "cv1") and hasattr(m, "c") and hasattr(m, "forward_split"):
            assert m.cv1.conv.out_channels == 2 * m.c
            x = torch.rand(1, m.cv1.conv.in_channels, 8, 8)
            with torch.no_grad():
                assert torch.allclose(m.forward_split(x), m(x), atol=1e-5)
    fused = r["pruned"].model
    fused.fuse(verbose=False)
    with torch.no_grad():
        y = fused(r["x"])
    assert _shapes(y[0]) == r["before"]["eval"]


def test_pruned_checkpoints_work_in_stock_ultralytics(pruned_family, tmp_path):
    """Load, predict and export every pruned family in a process that never imports yolo_prune."""
    paths = {name: str(r["path"]) for name, r in pruned_family.items()}
    expected = {
        name: sum(p.numel() for p in YOLO(str(r["path"])).model.parameters()) for name, r in pruned_family.items()
    }
    script = textwrap.dedent(
        f"""
        import json, os, sys
        os.environ["YOLO_OFFLINE"] = "1"
        import numpy as np
        from ultralytics import YOLO
        out = {{}}
        for name, path in json.loads({json.dumps(json.dumps(paths))}).items():
            model = YOLO(path)
            image = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)
            results = model.predict(image, imgsz={IMGSZ}, verbose=False)
            onnx = model.export(format="onnx", imgsz={IMGSZ}, simplify=False, verbose=False)
            out[name] = {{
                "params": sum(p.numel() for p in YOLO(path).model.parameters()),
                "boxes": results[0].boxes.data.shape[-1],
                "onnx": os.path.getsize(onnx),
            }}
        assert "yolo_prune" not in sys.modules
        print(json.dumps(out))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in FAMILIES:
        assert got[name]["params"] == expected[name]
        assert got[name]["boxes"] == 6
        assert got[name]["onnx"] > 0


@pytest.mark.parametrize("name", ["yolov8n.yaml", "yolo26n.yaml"])
def test_ratio_zero_keeps_outputs(name):
    base = YOLO(name)
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    base.model.eval()
    with torch.no_grad():
        ref = base.model(x)
    same = prune(base, ratio=0.0, verbose=False).model.eval()
    with torch.no_grad():
        out = same(x)
    ref_t = ref[0] if isinstance(ref, (list, tuple)) else ref
    out_t = out[0] if isinstance(out, (list, tuple)) else out
    assert (ref_t - out_t).abs().max().item() < 1e-5
    assert sum(p.numel() for p in same.parameters()) == sum(p.numel() for p in base.model.parameters())


def test_pruning_twice_and_round_to():
    """Pruning a pruned model shrinks it again, keeps widths multiples of round_to and the output shapes.

    Mutation caught: a second pass that breaks the head (the output shapes would differ from the unpruned model's).
    """
    base = YOLO("yolo11n.yaml")
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    expected = _outputs(base.model, x)
    once = prune(base, ratio=0.5, verbose=False)
    twice = prune(once, ratio=0.5, verbose=False)
    p1, p2 = (sum(p.numel() for p in m.model.parameters()) for m in (once, twice))
    assert p2 < p1
    head = twice.model.model[-1]
    fixed = {head.dfl.conv, *(branch[-1] for branch in (*head.cv2, *head.cv3))}  # outputs defined by the task
    widths = [m.out_channels for m in twice.model.modules() if isinstance(m, torch.nn.Conv2d) and m not in fixed]
    assert all(w % 8 == 0 for w in widths), "kept widths are multiples of round_to=8"
    assert _outputs(twice.model, x) == expected


def test_the_method_decides_which_filters_are_kept():
    """On one base model: the same method and seed keep the same filters, another method or seed keeps others, and
    ``l1`` keeps the first layer's filters of largest L1 norm.

    Mutations caught: ignoring ``method`` (l1 and random would keep the same filters); ignoring ``seed`` for the
    random criterion; keeping the lowest-scored filters instead of the highest.
    """
    base = YOLO("yolov8n.yaml")

    def kept(method: str, seed: int = 0) -> torch.Tensor:
        # round_to=8: the 16-filter stem keeps all 16 at a 16-channel block (round_to="auto" on AVX-512)
        return prune(base, ratio=0.5, method=method, seed=seed, round_to=8, verbose=False).model.model[0].conv.weight

    l1, rnd1 = kept("l1"), kept("random", seed=1)
    assert l1.shape == rnd1.shape, "same ratio -> same widths, whatever the criterion"
    assert torch.equal(l1, kept("l1")) and torch.equal(rnd1, kept("random", seed=1))
    assert not torch.equal(l1, rnd1) and not torch.equal(rnd1, kept("random", seed=2))
    full = base.model.model[0].conv.weight  # kept filters are stronger on average than the removed ones
    assert l1.abs().sum((1, 2, 3)).mean() > full.abs().sum((1, 2, 3)).mean()


def test_bad_inputs(tmp_path):
    ckpt = tmp_path / "model.pt"
    YOLO("yolov8n.yaml").save(ckpt)
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    cases = [
        ({"model": str(tmp_path / "missing.pt")}, "missing"),
        ({"model": str(text)}, "checkpoint"),
        ({"model": str(ckpt), "ratio": 1.0}, "ratio"),
        ({"model": str(ckpt), "ratio": -0.1}, "ratio"),
        ({"model": str(ckpt), "method": "magic"}, "l2"),
        ({"model": "rtdetr-l.yaml"}, "detect"),
        ({"model": "yolov8n-cls.yaml"}, "classify"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(ValueError) as info:
            prune(**kwargs)
        message = str(info.value)
        assert "\n" not in message and needle in message.lower(), message
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == digest, "the input checkpoint must never change"
    assert sum(1 for _ in tmp_path.iterdir()) == 2


def test_ratio_zero_removes_nothing_with_staggered_rounding():
    """Widths that are not multiples of ``round_to`` (nc=90: head width 90) keep every channel at ratio 0.

    Mutation caught: dropping the ``ratio <= 0`` early return in ``_keep_count`` (staggered rounding then removed 8
    channels of yolov8n-nc90).
    """
    from ultralytics.nn.tasks import DetectionModel

    yolo = YOLO("yolov8n.yaml")
    yolo.model = DetectionModel("yolov8n.yaml", nc=90, verbose=False)
    params = sum(p.numel() for p in yolo.model.parameters())
    for staggered in (False, True):
        same = prune(yolo, ratio=0.0, staggered=staggered, verbose=False)
        assert same.prune_info["channels_removed"] == 0, staggered
        assert sum(p.numel() for p in same.model.parameters()) == params


def test_pruning_restores_requires_grad_and_training_mode():
    """Each parameter keeps its ``requires_grad`` flag (the fixed DFL conv stays frozen) and the mode is restored,
    also when pruning fails half-way.

    Mutations caught: leaving every parameter at ``requires_grad=True`` after pruning; restoring
    ``model.train(was_training)`` outside the ``finally`` (the failing call below would leave the model in eval mode).
    """
    from yolo_prune.policy.importance import get_importance
    from yolo_prune.policy.prune import prune_detection_model

    model = YOLO("yolov8n.yaml").model
    model.model[0].conv.weight.requires_grad_(False)  # a user-frozen layer
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    assert not flags["model.22.dfl.conv.weight"] and not flags["model.0.conv.weight"]
    model.train()
    prune_detection_model(model, 0.5, get_importance("l2"))
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert model.training

    bad = {"model.0.conv.weight": torch.ones(1)}  # gradients of another model: the call fails inside the try
    with pytest.raises(ValueError, match="do not match"):
        prune_detection_model(model, 0.5, get_importance("taylor"), gradients=bad)
    assert model.training, "the training mode is restored when pruning fails"
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags


def test_heavy_pruning_without_fine_tuning_lowers_the_measured_map(trained_detector):
    """Removing half the channels of a trained detector costs most of its mAP50-95 (before any fine-tuning).

    Mutation caught: ``prune`` returning the unpruned copy (or pruning a copy that is not returned): the mAP would
    stay at the baseline.
    """
    from yolo_prune.measurement.measure import validate

    t = trained_detector
    pruned = prune(str(t.model), ratio=0.5, verbose=False)
    got = validate(pruned, t.data, imgsz=t.imgsz, batch=16)
    assert pruned.prune_info["channels_removed"] > 0
    assert got["map50_95"] < 0.5 * t.map50_95, (got, t)
