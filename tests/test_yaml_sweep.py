"""Every detection yaml Ultralytics ships prunes at ratio 0.5 into a model that runs, or is refused with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import ultralytics
from ultralytics.nn.tasks import DetectionModel, yaml_model_load

from yolo_prune.graph.shape_check import _shapes
from yolo_prune.policy.importance import get_importance
from yolo_prune.policy.prune import prune_detection_model

MODELS = Path(ultralytics.__file__).parent / "cfg" / "models"
OTHER_TASKS = ("-cls", "-seg", "-pose", "-obb", "-depth", "-sem")
REFUSED = {  # yaml -> what the one-line refusal says
    "rtdetr-l.yaml": "not a YOLO detection model yaml",
    "rtdetr-resnet50.yaml": "not a YOLO detection model yaml",
    "rtdetr-resnet101.yaml": "not a YOLO detection model yaml",
    "rtdetr-x.yaml": "not a YOLO detection model yaml",
    "yolov8-rtdetr.yaml": "not a YOLO detection model yaml",
    "yolov8-world.yaml": "head is WorldDetect",
    "yolov8-worldv2.yaml": "head is WorldDetect",
    "yoloe-v8.yaml": "head is YOLOEDetect",
    "yoloe-11.yaml": "head is YOLOEDetect",
    "yoloe-26.yaml": "head is YOLOEDetect",
}
# Already pruned at their smallest scale, with the same checks, by tests/test_prune.py::FAMILIES
IN_FAMILIES = {"yolov3-tiny.yaml", "yolov5.yaml", "yolov6.yaml", "yolov8.yaml", "yolov9t.yaml", "yolov10n.yaml"} | {
    "yolo11.yaml",
    "yolo12.yaml",
    "yolo26.yaml",
}
NARROW = 0.25  # width multiplier for the yamls whose only scale is a large one (v9s..e, v10s..x, v3): same blocks


def detection_yamls() -> list[str]:
    """Every yaml under ultralytics/cfg/models that is not for another task (cls, seg, pose, obb, ...)."""
    return sorted(p.name for p in MODELS.rglob("*.yaml") if not any(t in p.name for t in OTHER_TASKS))


def smallest(name: str) -> str:
    """The yaml name at its smallest scale: ``yolov8-p6.yaml`` -> ``yolov8n-p6.yaml``; names without scales as is."""
    cfg = yaml_model_load(next(MODELS.rglob(name)))
    scales = cfg.get("scales") or {}
    if len(scales) <= 1:
        return name
    letter = min(scales, key=lambda k: scales[k][1])
    if name.startswith("yoloe-"):  # yoloe-11.yaml -> yoloe-11s.yaml
        return f"{Path(name).stem}{letter}.yaml"
    stem, _, variant = Path(name).stem.partition("-")
    return f"{stem}{letter}{'-' + variant if variant else ''}.yaml"


def build(name: str) -> DetectionModel:
    """A detection model of ``name`` with 3 classes; single-scale large yamls are narrowed by `NARROW`."""
    cfg = yaml_model_load(smallest(name))
    scales = cfg.get("scales") or {}
    big = len(scales) <= 1 and name not in ("yolov3-tiny.yaml", "yolov9t.yaml", "yolov10n.yaml")
    if big and "CBLinear" not in str(cfg.get("backbone")):  # CBLinear's split sizes are not scaled with the width
        depth, width, channels = next(iter(scales.values()), (1.0, 1.0, 1024))
        cfg["scales"] = {"z": [depth, width * NARROW, channels]}
        cfg["scale"] = "z"
    return DetectionModel(cfg, nc=3, verbose=False)


def test_sweep_lists_every_variant():
    """Catches: a sweep that silently skips variants (the -p2/-p6/-ghost/-spp/-tiny yamls must all be here)."""
    names = detection_yamls()
    for expected in ("yolov8-p6.yaml", "yolov8-ghost-p2.yaml", "yolov3-spp.yaml", "yolov3-tiny.yaml", "yolo26-p6.yaml"):
        assert expected in names
    assert smallest("yolov8-ghost-p6.yaml") == "yolov8n-ghost-p6.yaml" and smallest("yolov9e.yaml") == "yolov9e.yaml"
    from test_prune import FAMILIES

    assert {smallest(n) for n in IN_FAMILIES} == {n.replace("u.yaml", ".yaml") for n in FAMILIES}


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in detection_yamls() if n not in set(REFUSED) | IN_FAMILIES])
def test_every_detection_yaml_prunes_into_a_running_model(name):
    """Ratio 0.5 at the smallest scale: outputs keep their shapes in eval and train mode, parameters shrink.

    Catches: the yolov8-p6 IndexError (C2 not split into twins), GhostConv's half-width primary conv left with 0
    outputs (tied channels pruned apart), and any rule change that breaks one family.
    """
    model = build(name).eval()
    stride = int(max(model.stride))
    x = torch.zeros(1, 3, 2 * stride, 2 * stride)
    with torch.no_grad():
        before = _shapes(model(x))
    params = sum(p.numel() for p in model.parameters())
    stats = prune_detection_model(model, 0.5, get_importance("l2"))
    assert stats.params_after < 0.8 * params, stats
    with torch.no_grad():
        assert _shapes(model.eval()(x)) == before
    assert all(m.out_channels >= 1 for m in model.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_other_heads_are_refused_with_one_line(name):
    """Catches: RT-DETR, World or YOLOE heads reaching the pruner (a raw traceback or a broken model)."""
    from yolo_prune import prune

    with pytest.raises(ValueError, match=REFUSED[name]) as info:
        prune(smallest(name), ratio=0.5, verbose=False)
    assert "\n" not in str(info.value)


def test_check_pruned_names_the_block_that_broke():
    """A model pruned inconsistently (a conv cut without its BatchNorm and consumers, or to 0 channels) is refused
    with one line naming the layer. Catches: check_pruned not running a forward, or not checking widths."""
    import torch_pruning as tp

    from yolo_prune.policy.prune import check_pruned, reference_shapes

    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False).eval()
    x = torch.zeros(1, 3, 64, 64)
    reference = reference_shapes(model, x)
    assert reference[False] != reference[True]  # eval and train outputs differ; both are kept
    check_pruned(model, x, reference)  # an unpruned model passes

    tp.prune_conv_out_channels(model.model[2].cv2.conv, list(range(8)))  # BatchNorm and layer 3 not updated
    with pytest.raises(ValueError, match=r"pruning broke the model: layer 2 \(C2f\) fails in eval mode") as info:
        check_pruned(model, x, reference)
    assert "\n" not in str(info.value)

    conv = model.model[4].cv1.conv
    tp.prune_conv_out_channels(conv, list(range(conv.out_channels)))
    with pytest.raises(ValueError, match=r"layer 4 \(C2f\): 'model\.4\.cv1\.conv' was left with 0 channels"):
        check_pruned(model, x, reference)
