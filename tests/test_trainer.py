"""Tests for yolo_prune.integration.trainer: fine-tuning a pruned model keeps it pruned (train, resume, DDP
hand-off)."""

import os

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported: nothing may be downloaded

import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402
from ultralytics.utils import YAML  # noqa: E402
from ultralytics.utils.patches import torch_load  # noqa: E402

from yolo_prune.integration.checkpoint import save_checkpoint  # noqa: E402
from yolo_prune.integration.trainer import PrunedDetectionTrainer  # noqa: E402
from yolo_prune.measurement.measure import count_params  # noqa: E402

TINY = {"epochs": 1, "imgsz": 64, "batch": 4, "workers": 0, "plots": False, "device": "cpu", "exist_ok": True}


def record_sizes(sizes: dict):
    """Return an ``on_pretrain_routine_end`` callback storing model, EMA and optimizer parameter counts in ``sizes``."""

    def callback(trainer):
        sizes["model"] = count_params(trainer.model)
        sizes["ema"] = count_params(trainer.ema.ema)
        sizes["optimizer"] = sum(p.numel() for group in trainer.optimizer.param_groups for p in group["params"])

    return callback


@pytest.mark.slow
def test_stock_trainer_unprunes_but_pruned_trainer_keeps_the_pruned_model(
    pruned_v5_ckpt, tiny_data, tmp_path, stock_param_counts
):
    path, pruned, unpruned = pruned_v5_ckpt
    stock = YOLO(path)
    stock.train(data=tiny_data, project=str(tmp_path), name="stock", val=False, **TINY)
    assert count_params(stock.model) == unpruned  # the stock trainer rebuilt the yaml: pruning silently lost

    sizes = {}
    ours = YOLO(path)
    ours.add_callback("on_pretrain_routine_end", record_sizes(sizes))
    ours.train(trainer=PrunedDetectionTrainer, data=tiny_data, project=str(tmp_path), name="ours", val=True, **TINY)
    assert sizes == {"model": pruned, "ema": pruned, "optimizer": pruned}
    assert count_params(ours.model) == pruned
    weights = tmp_path / "ours" / "weights"
    assert stock_param_counts([weights / "best.pt", weights / "last.pt"]) == [pruned, pruned]


class StopAfterFirstEpoch(Exception):
    """Raised by a callback to interrupt a run once its first epoch is saved."""


def interrupt_after_first_epoch(trainer):
    """``on_fit_epoch_end`` callback: stop the run like a crash, after last.pt of epoch 1 is written."""
    if trainer.epoch == 0:
        raise StopAfterFirstEpoch


def test_resume_continues_an_interrupted_pruned_run(pruned_v5_ckpt, tiny_data, tmp_path):
    path, pruned, _ = pruned_v5_ckpt
    first = YOLO(path)
    first.add_callback("on_fit_epoch_end", interrupt_after_first_epoch)
    with pytest.raises(StopAfterFirstEpoch):
        first.train(
            trainer=PrunedDetectionTrainer,
            data=tiny_data,
            project=str(tmp_path),
            name="run",
            val=False,
            **TINY | {"epochs": 2},
        )
    last = tmp_path / "run" / "weights" / "last.pt"
    assert torch_load(last, map_location="cpu")["epoch"] == 0

    sizes = {}
    resumed = YOLO(last)
    resumed.add_callback("on_pretrain_routine_end", record_sizes(sizes))
    resumed.train(resume=True, trainer=PrunedDetectionTrainer)
    assert resumed.trainer.start_epoch == 1 and resumed.trainer.epoch == 1  # only epoch 2 ran, after the resume
    assert sizes == {"model": pruned, "ema": pruned, "optimizer": pruned}
    assert count_params(resumed.model) == pruned
    assert len((tmp_path / "run" / "results.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs


DDP_REPORT = textwrap.dedent(
    """
    import json
    print("RESULT " + json.dumps({
        "trainer": f"{type(trainer).__module__}.{type(trainer).__name__}",
        "model": sum(p.numel() for p in trainer.model.parameters()),
        "ema": sum(p.numel() for p in trainer.ema.ema.parameters()),
        "epoch": trainer.epoch,
    }))
    """
)


@pytest.mark.slow
def test_ddp_workers_receive_the_pruned_model(pruned_v5_ckpt, tiny_data, tmp_path, ddp_worker):
    path, pruned, _ = pruned_v5_ckpt
    overrides = {"model": str(path), "data": tiny_data, "project": str(tmp_path), "name": "ddp", "val": False, **TINY}

    def inspect(state_file: Path) -> None:
        state = torch_load(state_file, map_location="cpu")
        assert state["trainer"] is PrunedDetectionTrainer  # by reference: importable as yolo_prune.integration.trainer
        assert isinstance(state["model"], torch.nn.Module) and count_params(state["model"]) == pruned  # by value

    result = ddp_worker(PrunedDetectionTrainer(overrides=overrides), DDP_REPORT, inspect)
    assert result == {
        "trainer": "yolo_prune.integration.trainer.PrunedDetectionTrainer",
        "model": pruned,
        "ema": pruned,
        "epoch": 0,
    }


def test_class_count_mismatch_is_a_one_line_value_error(tiny_data, tmp_path):
    nc = len(YAML.load(tiny_data)["names"])
    path = save_checkpoint(DetectionModel("yolov5nu.yaml", nc=nc + 2, verbose=False), tmp_path / "other_nc.pt")
    with pytest.raises(ValueError, match=rf"has nc={nc} classes but the model has nc={nc + 2}") as info:
        YOLO(path).train(trainer=PrunedDetectionTrainer, data=tiny_data, project=str(tmp_path), **TINY)
    assert "\n" not in str(info.value)


def test_refuses_to_swap_or_rebuild_the_model(pruned_v5_ckpt, tiny_data, tmp_path):
    path, _, _ = pruned_v5_ckpt
    other = save_checkpoint(DetectionModel("yolov5nu.yaml", verbose=False), tmp_path / "other.pt")
    run = {"trainer": PrunedDetectionTrainer, "data": tiny_data, "project": str(tmp_path), **TINY}
    with pytest.raises(ValueError, match=r"pretrained='.*other\.pt' would replace the pruned model"):
        YOLO(path).train(pretrained=str(other), **run)
    with pytest.raises(ValueError, match="pretrained=False would rebuild the unpruned network"):
        YOLO(path).train(pretrained=False, **run)
    with pytest.raises(ValueError, match="got none: load it from a .pt checkpoint"):
        YOLO("yolov5nu.yaml").train(**run)


@pytest.mark.slow
def test_fine_tuning_recovers_the_map_lost_to_pruning(trained_detector, tmp_path):
    """Two epochs of fine-tuning with the pruned trainer raise the measured mAP50-95 of a heavily pruned detector,
    and the fine-tuned model is still the pruned one.

    Mutations caught: a trainer that rebuilds or reloads the pruned model without training it (mAP stays at the
    pruned value); one that trains the unpruned network (the parameter count check).
    """
    from yolo_prune import prune
    from yolo_prune.measurement.measure import validate

    t = trained_detector
    pruned = prune(str(t.model), ratio=0.5, verbose=False)
    path = save_checkpoint(pruned, tmp_path / "pruned.pt")
    before = validate(str(path), t.data, imgsz=t.imgsz, batch=16)["map50_95"]
    recipe = {"batch": 16, "nbs": 16, "optimizer": "AdamW", "lr0": 0.002, "warmup_epochs": 0, "mosaic": 0.0}
    recipe |= {"scale": 0.0, "translate": 0.0, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "cache": "ram", "amp": False}
    yolo = YOLO(str(path))
    yolo.train(
        trainer=PrunedDetectionTrainer,
        data=t.data,
        epochs=2,
        imgsz=t.imgsz,
        workers=0,
        plots=False,
        val=False,
        device="cpu",
        seed=0,
        deterministic=True,
        project=str(tmp_path),
        name="ft",
        **recipe,
    )
    after = validate(str(yolo.trainer.last), t.data, imgsz=t.imgsz, batch=16)["map50_95"]
    assert count_params(YOLO(str(yolo.trainer.last)).model) == count_params(pruned.model)
    assert after > before + 0.01, (before, after)


@pytest.mark.slow
def test_a_fine_tune_that_damages_the_model_keeps_the_model_it_started_from(trained_detector, tmp_path):
    """The pruned trainer validates the model before the first step and keeps it as best.pt unless an epoch beats it.

    A learning rate far too high for a converged model (AdamW at 0.05) wrecks it in one epoch; best.pt must then be
    the starting model (same mAP50-95), while last.pt is the wrecked one. Mutations caught: no validation before
    training (best.pt would be the only epoch, the wrecked model); a start written to last.pt (resume would restart at
    epoch 1 and skip training).
    """
    from yolo_prune.measurement.measure import validate

    t = trained_detector
    start = validate(str(t.model), t.data, imgsz=t.imgsz, batch=16)["map50_95"]
    yolo = YOLO(str(t.model))
    yolo.train(
        trainer=PrunedDetectionTrainer,
        data=t.data,
        epochs=1,
        imgsz=t.imgsz,
        batch=16,
        nbs=16,
        optimizer="AdamW",
        lr0=0.05,
        warmup_epochs=0,
        workers=0,
        plots=False,
        device="cpu",
        seed=0,
        project=str(tmp_path),
        name="ft",
    )
    trainer = yolo.trainer
    assert trainer.start_metrics is not None
    assert trainer.start_metrics["metrics/mAP50-95(B)"] == pytest.approx(start, abs=0.01)
    wrecked = validate(str(trainer.last), t.data, imgsz=t.imgsz, batch=16)["map50_95"]
    kept = validate(str(trainer.best), t.data, imgsz=t.imgsz, batch=16)["map50_95"]
    assert wrecked < start - 0.05, (start, wrecked)  # the recipe did damage the model
    assert kept == pytest.approx(start, abs=0.01), (start, kept)
    assert torch_load(trainer.best, map_location="cpu")["epoch"] == -1  # best.pt is the start, stripped
