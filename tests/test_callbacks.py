"""Tests for yolo_prune.integration.callbacks: sparse training and progressive pruning inside a plain
``model.train()``."""

import os

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported: nothing may be downloaded

import math  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402
from ultralytics.utils.dist import ddp_cleanup, generate_ddp_file  # noqa: E402
from ultralytics.utils.patches import torch_load  # noqa: E402

from yolo_prune.integration.callbacks import PROGRESS_ATTR, PruneCallback  # noqa: E402
from yolo_prune.integration.trainer import PrunedDetectionTrainer  # noqa: E402
from yolo_prune.measurement.measure import count_params  # noqa: E402

TRAIN = {
    "imgsz": 64,
    "batch": 4,
    "workers": 0,
    "plots": False,
    "device": "cpu",
    "seed": 0,
    "deterministic": True,
    "exist_ok": True,
}


def mean_abs_bn_scale(module: nn.Module) -> float:
    """Mean |gamma| over all BatchNorm scales of ``module``."""
    gammas = [m.weight.detach().abs().flatten() for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    return torch.cat(gammas).mean().item()


# --------------------------------------------------------------------------------------------------------------------
# (a) sparse training


@pytest.mark.slow
def test_sparse_training_shrinks_bn_scales(tiny_data, tmp_path):
    # SGD without warmup or accumulation, batch 2: 24 optimizer steps move the scales visibly; same seed for both runs.
    # (A stronger penalty would not help: Ultralytics clips the whole gradient to norm 10, penalty included.)
    args = {**TRAIN, "data": tiny_data, "epochs": 3, "batch": 2, "project": str(tmp_path), "val": False}
    args |= {"optimizer": "SGD", "lr0": 0.1, "warmup_epochs": 0, "nbs": 2}
    plain = YOLO("yolov8n.yaml")
    plain.train(name="plain", **args)
    sparse = YOLO("yolov8n.yaml")
    PruneCallback(ratio=0, sparsity=0.1).attach(sparse)
    sparse.train(name="sparse", **args)
    plain_gamma, sparse_gamma = mean_abs_bn_scale(plain.model), mean_abs_bn_scale(sparse.model)
    assert sparse_gamma < 0.9 * plain_gamma, (sparse_gamma, plain_gamma)
    assert count_params(sparse.model) == count_params(plain.model)  # ratio=0: nothing pruned
    assert "optimizer_step" not in vars(sparse.trainer)  # the per-instance wrapper is removed at teardown


def test_sparsity_gradient_is_scaled_like_the_amp_gradients():
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -2.0, 1.0, 0.0]))
    bn.weight.grad = torch.zeros(4)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # enabled: gradients are 1024x when the penalty is added
    trainer = SimpleNamespace(model=nn.Sequential(bn), scaler=scaler, epoch=0, epochs=10)
    PruneCallback(ratio=0, sparsity=0.01).add_sparsity_gradient(trainer)
    assert torch.allclose(bn.weight.grad, 1024.0 * 0.01 * torch.tensor([1.0, -1.0, 1.0, 0.0]))


def test_sparsity_schedules():
    constant = PruneCallback(ratio=0, sparsity=1.0)
    assert [constant.sparsity_at(e, 4) for e in range(5)] == [1.0, 1.0, 1.0, 1.0, 0.0]
    linear = PruneCallback(ratio=0, sparsity=1.0, sparse_schedule="linear")
    assert [linear.sparsity_at(e, 4) for e in range(4)] == [1.0, 0.75, 0.5, 0.25]
    ramp = PruneCallback(ratio=0, sparsity=1.0, sparse_schedule="ramp", sparse_epochs=2)
    assert [ramp.sparsity_at(e, 4) for e in range(4)] == [0.5, 1.0, 0.0, 0.0]
    # with pruning, the penalty stops at the last pruning step (fine-tuning follows)
    progressive = PruneCallback(ratio=0.5, start_epoch=2, end_epoch=6, steps=3, sparsity=1.0)
    assert progressive.prune_epochs == [2, 4, 6]
    assert [progressive.sparsity_at(e, 10) for e in (5, 6)] == [1.0, 0.0]
    assert PruneCallback(ratio=0.5, sparsity=0.0).sparsity_at(0, 10) == 0.0


# --------------------------------------------------------------------------------------------------------------------
# (b) progressive pruning


def consistency_checker(record: list):
    """Callbacks (to register after PruneCallback's) recording whether optimizer/EMA/loss follow the live model."""

    def on_train_epoch_start(trainer):
        model = trainer.model
        params = {id(p) for p in model.parameters()}
        in_optimizer = [p for group in trainer.optimizer.param_groups for p in group["params"]]
        ema_shapes = {k: v.shape for k, v in trainer.ema.ema.state_dict().items()}
        record.append(
            {
                "epoch": trainer.epoch,
                "params": count_params(model),
                "optimizer_is_model": {id(p) for p in in_optimizer} == params and len(in_optimizer) == len(params),
                "ema_is_model": ema_shapes == {k: v.shape for k, v in model.state_dict().items()},
                "dfl_frozen": all(not p.requires_grad for n, p in model.named_parameters() if ".dfl" in n),
                "best_fitness": trainer.best_fitness,
                "steps": getattr(model, PROGRESS_ATTR)["steps"],
            }
        )

    def on_train_batch_end(trainer):
        assert torch.isfinite(trainer.loss), "training loss is not finite"
        pairs = trainer.ema._pairs  # built on the EMA's first update: it must average the live tensors
        if pairs is not None:
            live = {t.data_ptr() for t in trainer.model.state_dict().values()}
            assert all(t.data_ptr() in live for t in pairs[1]), "EMA averages tensors that are no longer the model's"

    return {"on_train_epoch_start": on_train_epoch_start, "on_train_batch_end": on_train_batch_end}


@pytest.mark.slow
def test_progressive_pruning_inside_model_train(tiny_data, tmp_path, stock_param_counts):
    model = YOLO("yolov8n.yaml")
    PruneCallback(ratio=0.5, start_epoch=1, end_epoch=2, steps=2, sparsity=1e-3).attach(model)
    record = []
    for event, function in consistency_checker(record).items():
        model.add_callback(event, function)
    model.train(data=tiny_data, epochs=3, project=str(tmp_path), name="progressive", **TRAIN)

    assert [r["epoch"] for r in record] == [0, 1, 2]
    unpruned, after_first, after_second = (r["params"] for r in record)
    assert unpruned > after_first > after_second
    assert [r["steps"] for r in record] == [0, 1, 2]
    assert all(r["optimizer_is_model"] and r["ema_is_model"] and r["dfl_frozen"] for r in record), record
    assert [r["best_fitness"] for r in record[1:]] == [None, None]  # the unpruned model's fitness was dropped
    progress = getattr(model.model, PROGRESS_ATTR)  # the final model (reloaded from best.pt) carries its record
    assert progress["steps"] == 2 and progress["params_original"] == unpruned
    assert 0.4 < 1 - progress["channels"] / progress["channels_original"] <= 0.5  # rounding to 8 may fall short

    weights = Path(model.trainer.save_dir) / "weights"
    assert count_params(model.model) == after_second  # Model.train() reloaded best.pt: pruned
    assert stock_param_counts([weights / "best.pt", weights / "last.pt"]) == [after_second] * 2
    metrics = YOLO(weights / "best.pt").val(data=tiny_data, imgsz=64, batch=4, plots=False, device="cpu")
    assert math.isfinite(metrics.fitness)


class Interrupted(Exception):
    """Raised by a callback to stop a run the way a crash or Ctrl-C would."""


@pytest.mark.slow
def test_resuming_a_pruned_run_needs_the_pruned_trainer_and_finishes_the_schedule(tiny_data, tmp_path):
    def interrupt_after_epoch_1(trainer):
        if trainer.epoch == 1:
            raise Interrupted

    model = YOLO("yolov8n.yaml")
    PruneCallback(ratio=0.5, start_epoch=1, end_epoch=2, steps=2).attach(model)
    model.add_callback("on_fit_epoch_end", interrupt_after_epoch_1)  # last.pt holds epoch 1, pruned once
    with pytest.raises(Interrupted):
        model.train(data=tiny_data, epochs=3, project=str(tmp_path), name="resume", **TRAIN)
    last = Path(model.trainer.last)
    once = count_params(torch_load(last, map_location="cpu")["ema"])

    stock = PruneCallback(ratio=0.5, start_epoch=1, end_epoch=2, steps=2).attach(YOLO(last))
    with pytest.raises(RuntimeError, match="trainer=PrunedDetectionTrainer"):
        stock.train(resume=True)  # refused before the stock trainer rebuilds the model from yaml

    resumed = PruneCallback(ratio=0.5, start_epoch=1, end_epoch=2, steps=2).attach(YOLO(last))
    resumed.train(resume=True, trainer=PrunedDetectionTrainer)
    progress = getattr(resumed.model, PROGRESS_ATTR)
    assert progress["steps"] == 2  # the second step ran after resuming, the first did not run again
    assert count_params(resumed.model) == progress["params"] < once


# --------------------------------------------------------------------------------------------------------------------
# (c) refusals and DDP


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ratio": 1.0}, "ratio"),
        ({"ratio": -0.1}, "ratio"),
        ({"ratio": "half"}, "ratio"),
        ({"start_epoch": 5, "end_epoch": 2}, "start_epoch"),
        ({"start_epoch": -1}, "start_epoch"),
        ({"steps": 0}, "steps"),
        ({"method": "magic"}, "unknown method"),
        ({"sparsity": -1e-4}, "sparsity"),
        ({"sparse": "weights"}, "sparse mode"),
        ({"sparse_schedule": "cosine"}, "sparse_schedule"),
        ({"round_to": 0}, "round_to"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PruneCallback(**kwargs)


def make_trainer(callback: PruneCallback, tiny_data: str, tmp_path: Path, epochs: int = 3) -> DetectionTrainer:
    """A real DetectionTrainer whose callbacks come from a YOLO object the callback was attached to."""
    yolo = callback.attach(YOLO("yolov8n.yaml"))
    overrides = {**TRAIN, "model": "yolov8n.yaml", "data": tiny_data, "epochs": epochs, "project": str(tmp_path)}
    return DetectionTrainer(overrides=overrides, _callbacks=yolo.callbacks)


def test_schedule_past_the_run_is_refused_before_training(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="only 3 epochs"):
        make_trainer(PruneCallback(ratio=0.5, start_epoch=1, end_epoch=3, steps=2), tiny_data, tmp_path)


def test_pruning_under_ddp_is_refused_sparse_training_is_allowed(tiny_data, tmp_path):
    pruning = make_trainer(PruneCallback(ratio=0.5, start_epoch=1, end_epoch=2, steps=2), tiny_data, tmp_path)
    sparse = make_trainer(PruneCallback(ratio=0, sparsity=1e-4), tiny_data, tmp_path)
    # A DDP worker's trainer has world_size > 1 (the device string lists several GPUs); no GPUs here, so set it on
    # real trainers and fire the event each worker fires before building its model.
    for trainer in (pruning, sparse):
        trainer.world_size = 2
    with pytest.raises(RuntimeError, match="cannot prune during multi-GPU"):
        pruning.run_callbacks("on_pretrain_routine_start")
    sparse.run_callbacks("on_pretrain_routine_start")  # allowed

    # What the DDP launcher sends to the workers: the callbacks travel by value through cloudpickle
    file = generate_ddp_file(sparse)
    try:
        state = torch_load(Path(file).with_suffix(".pt"), map_location="cpu")
    finally:
        ddp_cleanup(sparse, file)
    owners = [getattr(f, "__self__", None) for f in state["callbacks"]["on_train_start"]]
    sent = [owner for owner in owners if isinstance(owner, PruneCallback)]
    assert len(sent) == 1 and sent[0].sparsity == 1e-4 and sent[0].ratio == 0


def test_attach_adds_each_callback_once():
    callback = PruneCallback(ratio=0.5, start_epoch=1, end_epoch=2, steps=2)
    model = YOLO("yolov8n.yaml")
    callback.attach(model)
    callback.attach(model)
    for event, functions in callback.callbacks.items():
        assert sum(f == functions[0] for f in model.callbacks[event]) == 1
