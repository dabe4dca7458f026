"""Tests for yolo_prune.integration.recipe: the fine-tuning learning rate follows the input model's own training."""

import pytest

from yolo_prune.integration.recipe import FALLBACK, LR_FRACTION, finetune_defaults, trained_optimizer


def test_the_learning_rate_is_a_fraction_of_the_one_the_model_was_trained_with():
    """A resolved optimizer is kept at LR_FRACTION of its lr0; 'auto' resolves to Ultralytics' short-run AdamW.

    Mutations caught: a fixed lr0 for every model; the fraction applied twice or not at all; 'auto' taken as a name.
    """
    args, reason = finetune_defaults({"optimizer": "AdamW", "lr0": 0.001, "lrf": 0.01}, nc=6)
    assert args["optimizer"] == "AdamW" and args["lr0"] == pytest.approx(0.001 * LR_FRACTION)
    assert "0.001" in reason
    args, _ = finetune_defaults({"optimizer": "SGD", "lr0": 0.01}, nc=80)
    assert args["optimizer"] == "SGD" and args["lr0"] == pytest.approx(0.01 * LR_FRACTION)
    assert trained_optimizer({"optimizer": "auto", "lr0": 0.01}, nc=6) == ("AdamW", 0.001)
    assert finetune_defaults({"optimizer": "auto", "lr0": 0.01}, nc=6)[0]["lr0"] == pytest.approx(0.001 * LR_FRACTION)


@pytest.mark.parametrize("train_args", [None, {}, {"optimizer": "AdamW"}, {"lr0": 0.01}])
def test_a_model_that_records_no_training_gets_the_fallback(train_args):
    """No optimizer or lr0 recorded (a yaml, a foreign file): the fallback recipe, and the reason says so."""
    args, reason = finetune_defaults(train_args, nc=6)
    assert {k: args[k] for k in FALLBACK} == FALLBACK
    assert "records no training" in reason
