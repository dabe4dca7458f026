"""Segment, pose and obb models: head rules, pruned trainers, task data, task metrics and stock reload/export."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from ultralytics import YOLO
from ultralytics.nn.modules import Classify

from yolo_prune import prune
from yolo_prune.data.builtin import resolve_data
from yolo_prune.data.task_shapes import KPT_SHAPE, TASK_CLASS_NAMES, TASK_DATASETS
from yolo_prune.graph.shape_check import _shapes
from yolo_prune.integration.checkpoint import load_yolo
from yolo_prune.integration.cli import main
from yolo_prune.integration.pipeline import run_prune
from yolo_prune.integration.trainer import PrunedOBBTrainer, PrunedPoseTrainer, PrunedSegmentationTrainer
from yolo_prune.measurement.measure import count_gflops
from yolo_prune.policy.importance import get_importance
from yolo_prune.policy.prune import prune_detection_model
from yolo_prune.rules.tasks import HEADS, TASKS, task_of, trainer_for

DATA = {"segment": "shapes-seg.yaml", "pose": "shapes-pose.yaml", "obb": "shapes-obb.yaml"}
# Every family that ships segment/pose/obb yamls, at its smallest scale (yolov9c-seg is the only v9 task yaml).
FAMILIES = [f"{f}-{t}.yaml" for f in ("yolov8n", "yolo11n", "yolo12n", "yolo26n") for t in ("seg", "pose", "obb")]
FAMILIES.append("yolov9c-seg.yaml")
QUICK = {
    "imgsz": 64,
    "batch": 8,
    "workers": 0,
    "plots": False,
    "runs": 2,
    "warmup": 1,
    "allocation": "uniform",
    "backends": "torch",
}
QUICK_TRAIN = {"imgsz": 64, "batch": 8, "workers": 0, "plots": False, "device": "cpu", "val": False}
TASK_KEYS = {"segment": ("map50_95_mask", "map50_mask"), "pose": ("map50_95_pose", "map50_pose"), "obb": ()}


def output_convs(head: nn.Module) -> dict[str, int]:
    """Output widths that pruning must keep: last conv of every output branch and the proto output."""
    widths = {}
    for name, module in head.named_modules():
        last_of_branch = name.count(".") == 2 and name.startswith(("cv", "one2one_cv")) and name.endswith(".2")
        tail = name.count(".") == 1 and name.split(".")[0].endswith(("_kpts", "_sigma"))
        proto_out = name in ("proto.cv3.conv", "proto.semseg.2")
        if isinstance(module, nn.Conv2d) and (last_of_branch or tail or proto_out):
            widths[name] = module.out_channels
    return widths


def test_task_table_maps_heads_to_trainers_and_metrics():
    """Catches: a task head missing from the table, or a task fine-tuned by the detection trainer."""
    assert set(HEADS.values()) == set(TASKS) == {"detect", "segment", "pose", "obb"}
    assert {h.__name__ for h in HEADS} >= {"Segment", "Segment26", "Pose", "Pose26", "OBB", "OBB26"}
    assert trainer_for("segment") is PrunedSegmentationTrainer and trainer_for("obb") is PrunedOBBTrainer
    pose = YOLO("yolo26n-pose.yaml")
    assert task_of(pose) == task_of(pose.model) == "pose" and trainer_for(pose.model) is PrunedPoseTrainer
    assert TASKS["segment"].metrics["map50_95_mask"] == ("seg", "map")


@pytest.mark.parametrize("name", FAMILIES)
def test_prune_keeps_task_outputs_and_cuts_macs(name):
    """Ratio 0.5: outputs keep their shapes in eval and train mode, the output convs (masks, keypoints, angle, proto)
    keep their widths, the hidden convs of the extra branches shrink, and the MACs fall by at least 35 %.

    Catches: a branch the tracing forward misses (Proto26.semseg, Pose26.cv4_sigma: a width mismatch later), an
    output conv pruned (wrong output shapes), or the extra branches left at full width.
    """
    from ultralytics.nn.tasks import OBBModel, PoseModel, SegmentationModel, yaml_model_load

    cfg = yaml_model_load(name)
    if name == "yolov9c-seg.yaml":  # the one v9 task yaml has a single large scale: build it narrower, same blocks
        cfg["width_multiple"] = 0.25
    kind = {"-seg": SegmentationModel, "-pose": PoseModel, "-obb": OBBModel}[name[name.rindex("-") : -5]]
    extra = {"data_kpt_shape": KPT_SHAPE} if kind is PoseModel else {}
    model = kind(cfg, nc=3, verbose=False, **extra)
    head = model.model[-1]
    x = torch.zeros(1, 3, 64, 64)
    before = {training: _shapes(model.train(training)(x)) for training in (False, True)}
    fixed = output_convs(head)
    hidden = head.cv4[0][0].conv.out_channels
    macs = count_gflops(model, 64)

    prune_detection_model(model, 0.5, get_importance("l2"))

    with torch.no_grad():
        assert {training: _shapes(model.train(training)(x)) for training in (False, True)} == before
    assert output_convs(head) == fixed and fixed
    assert head.cv4[0][0].conv.out_channels < hidden
    if hasattr(head, "proto"):
        assert head.proto.cv1.conv.out_channels < head.proto.cv3.conv.in_channels * 2 + 1  # proto trunk pruned too
    cut = 1 - count_gflops(model, 64) / macs
    assert cut >= 0.35, f"{name}: MACs cut {cut:.1%}"


def test_task_datasets_load_in_ultralytics():
    """Catches: labels Ultralytics drops (wrong column count, out-of-range points) or a pose yaml without
    kpt_shape/flip_idx."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    for task, name in DATA.items():
        assert name in TASK_DATASETS and TASK_DATASETS[name]["task"] == task
        info = check_det_dataset(resolve_data(name))
        assert list(info["names"].values()) == list(TASK_CLASS_NAMES)
        n_rows = sum(len(f.read_text().splitlines()) for f in Path(info["path"]).glob("labels/val/*.txt"))
        cfg = get_cfg(overrides={"imgsz": 128, "task": task, "mode": "val"})
        dataset = build_yolo_dataset(cfg, info["val"], batch=4, data=info, mode="val", stride=32)
        assert sum(len(label["cls"]) for label in dataset.labels) == n_rows > 0  # no row dropped
        item = dataset[0]
        if task == "segment":
            assert item["masks"].sum() > 0
        if task == "pose":
            assert info["kpt_shape"] == [4, 3] and info["flip_idx"] == [0, 3, 2, 1]
            assert item["keypoints"].shape[1:] == (4, 3)
        if task == "obb":
            assert item["bboxes"].shape[-1] == 5  # xywhr


@pytest.mark.parametrize(
    "source, match",
    [
        ("yolo11n-cls.yaml", r"'classify' model; supported tasks: detect, segment, pose, obb"),
        ("yoloe-11s-seg.yaml", r"head is YOLOESegment: supported tasks are detect \(Detect, v10Detect\), segment"),
        ("classify-head", r"head is Classify: supported tasks are detect"),
    ],
)
def test_unsupported_heads_are_refused_in_one_line(source, match):
    """Catches: a classify model, a YOLOE head or an unknown head reaching the pruner (traceback or broken model)."""
    if source == "classify-head":  # a segmentation model whose head was swapped for an unknown module
        model = YOLO("yolo11n-seg.yaml").model
        model.model[-1] = Classify(64, 3)
        with pytest.raises(ValueError, match=match) as info:
            prune_detection_model(model, 0.5, get_importance("l2"))
    else:
        with pytest.raises(ValueError, match=match) as info:
            prune(source, ratio=0.5, verbose=False)
    assert "\n" not in str(info.value)


def test_cli_refuses_a_classify_model_in_one_line(capsys):
    """Catches: the CLI printing a traceback, or exiting 0, on a classify model."""
    code = main(["prune", "model=yolo11n-cls.yaml", "data=shapes-seg.yaml", "project=unused"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "classify" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_pose_keypoints_must_match_the_dataset(tmp_path):
    """A pose checkpoint with 17 keypoints cannot be fine-tuned on 4-keypoint data. Catches: the mismatch reaching
    the trainer (a loss shape error deep in a run)."""
    path = tmp_path / "pose17.pt"
    load_yolo("yolov8n-pose.yaml", nc=3).save(path)
    with pytest.raises(ValueError, match=r"kpt_shape=\[4, 3\] but the pose model has kpt_shape=\[17, 3\]") as info:
        run_prune(model=str(path), data="shapes-pose.yaml", ratio=0.5, epochs=0, project=tmp_path, **QUICK)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------------------------------
# End to end: prune, fine-tune one epoch on the task data, report, then stock Ultralytics reloads, predicts, exports.

E2E = {"segment": "yolo26n-seg.yaml", "pose": "yolo26n-pose.yaml", "obb": "yolo11n-obb.yaml"}


@pytest.fixture(scope="module")
def task_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One ``run_prune`` per task (yaml model, ratio 0.5, one epoch at imgsz 64): task -> run folder."""
    project = tmp_path_factory.mktemp("task-runs")
    return {
        task: run_prune(model=model, data=DATA[task], ratio=0.5, epochs=1, project=project, name=task, **QUICK)
        for task, model in E2E.items()
    }


@pytest.mark.slow
@pytest.mark.parametrize("task", list(E2E))
def test_prune_and_fine_tune_each_task(task_runs, task):
    """The pipeline prunes, fine-tunes with the task's pruned trainer and reports box and task mAP.

    Catches: the stock task trainer rebuilding the unpruned model from yaml, a task trainer refusing the model, or
    the task metrics missing from the report.
    """
    run = task_runs[task]
    rows = {row["name"]: row for row in json.loads((run / "report.json").read_text())["rows"]}
    for row in rows.values():
        for key in ("map50_95", "map50", *TASK_KEYS[task]):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (row["name"], key)
    assert rows["final"]["params"] < 0.5 * rows["baseline"]["params"]
    assert rows["final"]["gflops"] < 0.65 * rows["baseline"]["gflops"]
    header = (run / "results.csv").read_text().splitlines()[0].split(",")
    assert all(key in header for key in TASK_KEYS[task])
    best = YOLO(run / "weights" / "best.pt")
    assert best.task == task and sum(p.numel() for p in best.model.parameters()) == rows["final"]["params"]


@pytest.mark.slow
def test_bench_reports_task_metrics(task_runs, tmp_path, capsys):
    """``yolo-prune bench`` on segment checkpoints prints and writes the mask mAP next to the box mAP."""
    run = task_runs["segment"]
    models = f"{run / 'weights' / 'pruned.pt'},{run / 'weights' / 'best.pt'}"
    code = main(
        ["bench", f"models={models}", "data=shapes-seg.yaml", "imgsz=64", "backends=torch", "runs=2"]
        + ["warmup=1", f"project={tmp_path}"]
    )
    assert code == 0, capsys.readouterr().err[-2000:]
    report = json.loads((tmp_path / "exp" / "report.json").read_text())
    assert all(math.isfinite(row["map50_95_mask"]) for row in report["rows"])
    assert "mask mAP50-95" in (tmp_path / "exp" / "report.md").read_text()


STOCK_TASKS_CHILD = textwrap.dedent(
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

    out = {}
    for path in sys.argv[1:]:
        yolo = YOLO(path)
        params = sum(p.numel() for p in yolo.model.parameters())
        image = np.full((64, 64, 3), 114, dtype=np.uint8)
        results = yolo.predict(image, imgsz=64, device="cpu", verbose=False)
        onnx_file = yolo.export(format="onnx", imgsz=64, device="cpu", simplify=False)
        session = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
        outputs = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, 64, 64), dtype=np.float32)})
        out[yolo.task] = {"params": params, "n_results": len(results), "shapes": [list(o.shape) for o in outputs]}
    assert "yolo_prune" not in sys.modules
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.slow
def test_fine_tuned_task_models_work_in_stock_ultralytics(task_runs, tmp_path):
    """best.pt of each task loads, predicts and exports to ONNX in a process that cannot import yolo_prune.

    Catches: a custom class left in the checkpoint, stale head attributes (mask/keypoint/angle widths) that break
    prediction or export.
    """
    paths = [task_runs[task] / "weights" / "best.pt" for task in E2E]
    script = tmp_path / "stock_tasks_child.py"
    script.write_text(STOCK_TASKS_CHILD)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"YOLO_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), *map(str, paths)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert set(result) == set(E2E)
    for task, path in zip(E2E, paths, strict=True):
        assert result[task]["params"] == sum(p.numel() for p in YOLO(path).model.parameters())
        assert result[task]["n_results"] == 1
    nc, anchors = len(TASK_CLASS_NAMES), 8 * 8 + 4 * 4 + 2 * 2  # raw one-to-many outputs at 64 px (strides 8-32)
    extra = {"segment": 32, "pose": KPT_SHAPE[0] * KPT_SHAPE[1], "obb": 1}  # masks, keypoints, angle
    for task, n in extra.items():
        assert result[task]["shapes"][0] == [1, 4 + nc + n, anchors], task
    assert result["segment"]["shapes"][1] == [1, 32, 16, 16]  # the prototype masks keep their number


@pytest.mark.slow
def test_prune_callback_prunes_a_pose_model_during_training(tmp_path):
    """PruneCallback (progressive pruning + group-lasso sparsity) on a YOLO26 pose model inside ``model.train()``.

    Catches: the callbacks tracing only detection heads (Pose26's sigma branch and flow model), or a pruned model that
    the pose loss or validator cannot run.
    """
    from yolo_prune.integration.callbacks import PruneCallback

    path = tmp_path / "pose.pt"
    load_yolo("yolo26n-pose.yaml", nc=3, kpt_shape=list(KPT_SHAPE)).save(path)
    yolo = YOLO(path)
    before = sum(p.numel() for p in yolo.model.parameters())
    PruneCallback(ratio=0.5, steps=1, sparsity=1e-4, sparse="group").attach(yolo)
    yolo.train(data=resolve_data(DATA["pose"]), epochs=1, project=str(tmp_path), name="cb", **QUICK_TRAIN)
    last = YOLO(Path(yolo.trainer.last))
    assert last.task == "pose" and sum(p.numel() for p in last.model.parameters()) < 0.6 * before
    assert list(last.model.model[-1].kpt_shape) == list(KPT_SHAPE)


@pytest.mark.parametrize("name, method", [("yolo26n-seg.yaml", "hessian"), ("yolo26n-pose.yaml", "taylor")])
def test_gradient_criteria_use_the_task_loss(name, method):
    """Taylor and Hessian scores come from the task's own loss on the task data (masks, keypoints, YOLO26's semantic
    masks and keypoint sigmas). Catches: calibration batches without the task's labels (KeyError in the loss) or a
    Pose26 head run without its training-only sigma branch."""
    from yolo_prune.policy.importance import collect_gradients

    model = load_yolo(name, nc=3, kpt_shape=list(KPT_SHAPE)).model
    task = task_of(model)
    modes = [m.training for m in model.eval().modules()]
    grads = collect_gradients(model, DATA[task], method, batches=1, batch=2, imgsz=64)
    assert [m.training for m in model.modules()] == modes  # the head's temporary training flag is undone
    assert grads["model.0.conv.weight"].abs().sum() > 0  # the loss reaches the stem
    if task == "pose":
        assert grads[f"model.{len(model.model) - 1}.cv4_sigma.0.weight"].abs().sum() > 0  # sigma branch in the loss
    before = sum(p.numel() for p in model.parameters())
    stats = prune_detection_model(model, 0.5, get_importance(method), gradients=grads)
    assert stats.params_after < 0.6 * before


def test_task_data_is_deterministic(tmp_path):
    """Same arguments, same bytes; an unknown task is refused. Catches: unseeded randomness in the generator."""
    import hashlib

    from yolo_prune.data.task_shapes import make_task_dataset

    def digest(root: Path) -> dict[str, str]:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "data.yaml")  # data.yaml holds its path
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    first = make_task_dataset(tmp_path / "a", "obb", n_train=3, n_val=2, imgsz=96, seed=5).parent
    second = make_task_dataset(tmp_path / "b", "obb", n_train=3, n_val=2, imgsz=96, seed=5).parent
    assert digest(first) == digest(second) and len(digest(first)) == 2 * 5 + 1
    with pytest.raises(ValueError, match="unknown task 'classify'"):
        make_task_dataset(tmp_path / "c", "classify")
