"""Distillation from the unpruned model and the sparse-training stage of `yolo_prune.integration.pipeline.run_prune`."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel

from yolo_prune.integration.pipeline import parse_prune_args, run_prune
from yolo_prune.integration.trainer import PrunedDetectionTrainer

QUICK = {
    "imgsz": 64,
    "batch": 8,
    "workers": 0,
    "plots": False,
    "runs": 2,
    "warmup": 1,
    "allocation": "uniform",
    "ratio": 0.5,
    "backends": "torch",
}


def _model(path: Path, nc: int) -> Path:
    """Save a randomly initialised YOLOv8n with ``nc`` classes (seeded) and return its path."""
    torch.manual_seed(0)
    yolo = YOLO("yolov8n.yaml")
    yolo.model = DetectionModel("yolov8n.yaml", nc=nc, verbose=False)
    yolo.save(str(path))
    return path


@pytest.fixture(scope="module")
def teacher_nc6(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-class YOLOv8n checkpoint (the shapes data has 6 classes): the model to prune and its own teacher."""
    return _model(tmp_path_factory.mktemp("teacher") / "v8n-nc6.pt", 6)


def _columns(results_csv: Path) -> dict[str, list[float]]:
    """Columns of an Ultralytics results.csv as floats."""
    with open(results_csv, newline="") as f:
        rows = [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return {k: [r[k] for r in rows] for k in rows[0]}


def test_distill_arguments_are_checked() -> None:
    """Distillation is on by default for a checkpoint input, off for a yaml (no trained teacher) unless a teacher is
    given; ``distill_model`` implies ``distill``; ``distill`` must be a bool.

    Mutations caught: the default switched off, a yaml model used as its own teacher, ignoring ``distill_model``, or
    accepting ``distill='yes'``.
    """
    args = parse_prune_args({"model": "m.yaml", "data": "d.yaml", "distill_model": "t.pt"})
    assert args["distill"] is True and args["distill_model"] == "t.pt"
    assert parse_prune_args({"model": "m.pt", "data": "d.yaml"})["distill"] is True  # the study's pick
    assert parse_prune_args({"model": "m.pt", "data": "d.yaml", "distill": False})["distill"] is False
    assert parse_prune_args({"model": "yolov8n.yaml", "data": "d.yaml"})["distill"] is False  # no trained teacher
    with pytest.raises(ValueError, match="needs a trained teacher"):
        parse_prune_args({"model": "yolov8n.yaml", "data": "d.yaml", "distill": True})
    with pytest.raises(ValueError, match="distill"):
        parse_prune_args({"model": "m.pt", "data": "d.yaml", "distill": "yes"})
    base = {"model": "m.pt", "data": "d.yaml"}
    assert parse_prune_args(base)["distill_projector"] == "random"
    assert parse_prune_args({**base, "distill_projector": "FIT"})["distill_projector"] == "fit"
    with pytest.raises(ValueError, match="distill_projector='ls': choose one of fit, random"):
        parse_prune_args({"model": "m.pt", "data": "d.yaml", "distill_projector": "ls"})


def test_fitted_projectors_start_distillation_from_a_small_loss() -> None:
    """`fit_projectors` sets each projector of an Ultralytics DistillationModel (pruned student, unpruned teacher) to
    the least-squares map from student to teacher features: through its ReLU, the projected features are much closer
    to the teacher's than with Ultralytics' random projector, on the fitting batch and on a batch it never saw.

    Mutations caught: skipping the fit (no change of the error), a shift too small for the ReLU (clipped features,
    a worse fit), a map fitted to the wrong level, fitting the first levels before finding that a later one does not
    fit (a half-fitted set).
    """
    from copy import deepcopy

    from ultralytics.cfg import get_cfg
    from ultralytics.nn.distill_model import DistillationModel

    from yolo_prune import load_yolo, prune
    from yolo_prune.integration.distill import fit_projectors

    torch.manual_seed(0)
    yolo = load_yolo("yolov8n.yaml", nc=6)
    teacher = deepcopy(yolo.model).eval()
    student = prune(yolo, ratio=0.5).model
    student.args = get_cfg(overrides={"imgsz": 64})
    model = DistillationModel(teacher_model=teacher, student_model=student)
    batches = [{"img": torch.rand(4, 3, 64, 64)} for _ in range(4)]

    def error(batch: dict) -> list[float]:
        with torch.no_grad():
            model._teacher_feats.clear(), model._student_feats.clear()
            teacher(batch["img"]), student.eval()(batch["img"])
            out = []
            for i, projector in enumerate(model.projector):
                s = model.decouple_outputs(model._student_feats[i])
                t = model.decouple_outputs(model._teacher_feats[i])
                out.append(float(((projector(s) - t) ** 2).mean()))
            return out

    unseen = {"img": torch.rand(4, 3, 64, 64)}
    random_error = error(unseen)
    last_first_conv = model.projector[-1][0]  # a projector that does not fit its level: nothing may change at all
    model.projector[-1][0] = torch.nn.Conv2d(last_first_conv.in_channels + 1, last_first_conv.out_channels, 1)
    kept = deepcopy(model.projector[0].state_dict())
    assert fit_projectors(model, batches, lambda b: b, n_batches=1) is None
    assert all(torch.equal(v, model.projector[0].state_dict()[k]) for k, v in kept.items())
    model.projector[-1][0] = last_first_conv
    fitted = fit_projectors(model, batches, lambda b: b, n_batches=4)
    assert fitted is not None and len(fitted) == len(model.projector) == 3
    assert all(after < 0.2 * before for after, before in fitted), fitted
    assert all(a < 0.5 * b for a, b in zip(error(unseen), random_error, strict=True)), (error(unseen), random_error)


@pytest.mark.slow
def test_distill_true_trains_with_the_teacher_and_saves_a_plain_student(
    teacher_nc6, tiny_data, tmp_path, stock_param_counts
) -> None:
    """With ``distill=True`` the fine-tune has a non-zero distillation loss, and best.pt holds only the pruned
    student (a plain ``DetectionModel``, no teacher, no projector) that stock Ultralytics loads.

    Mutations caught: not passing ``distill_model`` to the trainer (no ``dis_loss`` column), a teacher or wrapper
    left inside best.pt, or best.pt holding the unpruned teacher's weights.
    """
    run = run_prune(model=str(teacher_nc6), data=tiny_data, epochs=1, project=tmp_path, **QUICK)  # default: distil
    columns = _columns(run / "step1" / "results.csv")
    assert "train/dis_loss" in columns and columns["train/dis_loss"][0] > 0
    ckpt = torch.load(run / "weights" / "best.pt", weights_only=False)
    student = ckpt["model"]
    assert type(student) is DetectionModel
    assert not any("teacher" in k or "projector" in k for k in student.state_dict())
    pruned = sum(p.numel() for p in torch.load(run / "weights" / "pruned.pt", weights_only=False)["model"].parameters())
    assert stock_param_counts([run / "weights" / "best.pt"]) == [pruned]
    assert "distilled from" in (run / "report.md").read_text()


@pytest.mark.slow
def test_distill_false_trains_without_a_teacher(teacher_nc6, tiny_data, tmp_path) -> None:
    """``distill=False`` fine-tunes without a distillation term.

    Mutation caught: ``distill=False`` ignored (the default is on) or the teacher left in the arguments.
    """
    run = run_prune(model=str(teacher_nc6), data=tiny_data, epochs=1, distill=False, project=tmp_path, **QUICK)
    assert "train/dis_loss" not in _columns(run / "step1" / "results.csv")


def test_bad_teachers_are_refused_before_any_work(teacher_nc6, tiny_data, tmp_path) -> None:
    """A teacher with other classes, an unreadable teacher or a yaml teacher: one-line ValueError, no run folder.

    Mutations caught: checking the teacher only when the trainer builds it (after pruning and writing files), or not
    comparing class counts.
    """
    other = _model(tmp_path / "nc3.pt", 3)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    project = tmp_path / "runs"
    cases = [(other, "nc=3"), (garbage, "cannot use distillation teacher"), ("yolov8n.yaml", "trained teacher")]
    for teacher, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            run_prune(
                model=str(teacher_nc6), data=tiny_data, epochs=1, distill_model=str(teacher), project=project, **QUICK
            )
        assert "\n" not in str(info.value)
    assert not project.exists()


@pytest.mark.slow
def test_distilled_fine_tune_resumes(teacher_nc6, tiny_data, tmp_path) -> None:
    """An interrupted distilled fine-tune resumes from last.pt with its teacher rebuilt, and finishes as a plain
    student.

    Mutations caught: a trainer whose resume path drops the ``DistillationModel`` (no ``dis_loss`` in the resumed
    epoch) or rebuilds the unpruned network.
    """
    from yolo_prune import prune, save_checkpoint

    pruned_path = save_checkpoint(prune(str(teacher_nc6), ratio=0.5, verbose=False), tmp_path / "pruned.pt")
    params = sum(p.numel() for p in YOLO(str(pruned_path)).model.parameters())
    yolo = YOLO(str(pruned_path))

    def stop_after_first_epoch(trainer) -> None:
        if trainer.epoch == 0:
            raise KeyboardInterrupt

    yolo.add_callback("on_model_save", stop_after_first_epoch)
    train = {"data": tiny_data, "imgsz": 64, "batch": 8, "workers": 0, "plots": False, "project": str(tmp_path)}
    with pytest.raises(KeyboardInterrupt):
        yolo.train(trainer=PrunedDetectionTrainer, epochs=2, distill_model=str(teacher_nc6), dis=1.0, name="r", **train)
    last = tmp_path / "r" / "weights" / "last.pt"
    assert last.is_file()
    resumed = YOLO(str(last))
    resumed.train(resume=True, trainer=PrunedDetectionTrainer)
    columns = _columns(tmp_path / "r" / "results.csv")
    assert columns["epoch"] == [1.0, 2.0]
    assert columns["train/dis_loss"][1] > 0
    best = torch.load(tmp_path / "r" / "weights" / "best.pt", weights_only=False)["model"]
    assert type(best) is DetectionModel and sum(p.numel() for p in best.parameters()) == params


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bn", "group"])
def test_sparse_stage_lowers_group_norms(mode, teacher_nc6, tiny_data, tmp_path) -> None:
    """``sparse_epochs`` trains with the penalty before pruning: the model's channel-group norms (and, for ``bn``, its
    BN scales) end lower than after a plain run of the same length, and the report has a ``sparse`` row.

    Mutations caught: the penalty (either mode) not reaching the trainer (both runs end with the same norms), group
    slices mapped onto the wrong parameters, or the pruned model taken from the input instead of the sparse one.
    """
    from yolo_prune.policy.sparsity import channel_groups, group_norms

    def load(run: Path) -> torch.nn.Module:
        return torch.load(run / "sparse" / "weights" / "last.pt", weights_only=False)["model"].float()

    def bn_l1(model: torch.nn.Module) -> float:
        return sum(m.weight.abs().sum().item() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))

    # SGD on every batch of 2 (nbs=batch, no warm-up): 24 steps move the norms visibly. A stronger penalty would not
    # help: Ultralytics clips the whole gradient to norm 10, penalty included.
    sgd = {"optimizer": "SGD", "lr0": 0.1, "nbs": 2, "batch": 2, "warmup_epochs": 0}
    common = {**QUICK, "ratio": 0.3, "epochs": 0, "sparse_epochs": 3, "project": tmp_path, "sparse": mode, **sgd}
    sparse = run_prune(model=str(teacher_nc6), data=tiny_data, sparsity=0.1, name="sparse", **common)
    plain = run_prune(model=str(teacher_nc6), data=tiny_data, sparsity=0.0, name="plain", **common)
    sparse_model, plain_model = load(sparse), load(plain)
    groups = channel_groups(plain_model)
    assert group_norms(sparse_model, groups).sum() < 0.95 * group_norms(plain_model, groups).sum()
    if mode == "bn":
        assert bn_l1(sparse_model) < 0.9 * bn_l1(plain_model)
    assert "sparse" in (sparse / "report.md").read_text()


def test_group_lasso_gradient_shrinks_every_group_slice() -> None:
    """One descent step on the group-lasso penalty alone lowers every channel's group norm, never penalises the
    outputs the head must keep (its last convs' outputs, DFL), and leaves the model's parameters in place.

    Mutations caught: twin halves mapped with the wrong offset (index errors or norms that grow), the head's fixed
    output convs penalised, or tracing the model itself (its ``cv1`` parameters would be replaced mid-training).
    """
    from yolo_prune.policy.sparsity import add_group_lasso_gradient, channel_groups, group_norms

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=6, verbose=False)
    held = {name: id(p) for name, p in model.named_parameters()}
    groups = channel_groups(model)
    assert {name: id(p) for name, p in model.named_parameters()} == held  # the optimizer's parameters survive
    before = group_norms(model, groups)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    add_group_lasso_gradient(model, groups, 0.01)
    touched = {name for name, p in model.named_parameters() if p.grad.abs().sum() > 0}
    assert "model.4.cv1.conv.weight" in touched and "model.22.dfl.conv.weight" not in touched
    fixed_outputs = ("model.22.cv2.0.2", "model.22.cv3.0.2", "model.22.dfl")  # what the head must keep
    assert not [(n, d) for g in groups for n, d, _ in g.slices if n.startswith(fixed_outputs) and d == 0]
    with torch.no_grad():
        for p in model.parameters():
            p -= p.grad
    assert (group_norms(model, groups) < before).all()


def test_prune_callback_refuses_distillation_with_the_reason() -> None:
    """Progressive pruning inside a distilled run is refused before training, and the message says why and what to
    do instead.

    Mutation caught: dropping the distillation check (the run would train with stale projectors after a prune step).
    """
    from types import SimpleNamespace

    from yolo_prune import PruneCallback

    args = SimpleNamespace(device="cpu", compile=False, quantize=None, distill_model="teacher.pt")
    trainer = SimpleNamespace(args=args, world_size=1, epochs=10, resume=False)
    with pytest.raises(RuntimeError, match="projectors.*distill=True"):
        PruneCallback(ratio=0.5, start_epoch=1).check_trainer(trainer)
    PruneCallback(ratio=0.0, sparsity=1e-4).check_trainer(trainer)  # sparse training alone is fine


DDP_DISTILL_REPORT = """
import json
model = trainer.model
print("RESULT " + json.dumps({
    "wrapper": type(model).__name__,
    "student": sum(p.numel() for p in model.student_model.parameters()),
    "teacher": sum(p.numel() for p in model.teacher_model.parameters()),
    "teacher_frozen": not any(p.requires_grad for p in model.teacher_model.parameters()),
}))
"""


@pytest.mark.slow
def test_ddp_workers_rebuild_the_teacher(pruned_v5_ckpt, tiny_data, tmp_path, ddp_worker) -> None:
    """Under DDP the pruned student travels by value and each worker rebuilds the distillation teacher from its path.

    Runs Ultralytics' real generated DDP worker script as one worker. Mutations caught: a trainer whose DDP hand-off
    drops ``distill_model`` (no wrapper in the worker) or sends the unpruned model as the student.
    """
    path, pruned, unpruned = pruned_v5_ckpt
    teacher = YOLO("yolov5nu.yaml")
    torch.manual_seed(0)
    teacher.model = DetectionModel("yolov5nu.yaml", nc=6, verbose=False)
    teacher.save(str(tmp_path / "teacher.pt"))
    overrides = {
        "model": str(path),
        "data": tiny_data,
        "project": str(tmp_path),
        "name": "ddp",
        "val": False,
        "epochs": 1,
        "imgsz": 64,
        "batch": 4,
        "workers": 0,
        "plots": False,
        "device": "cpu",
        "exist_ok": True,
        "distill_model": str(tmp_path / "teacher.pt"),
        "dis": 1.0,
    }
    result = ddp_worker(PrunedDetectionTrainer(overrides=overrides), DDP_DISTILL_REPORT)
    assert result == {"wrapper": "DistillationModel", "student": pruned, "teacher": unpruned, "teacher_frozen": True}
