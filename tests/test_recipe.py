"""Tests for yolo_prune.integration.recipe: the fine-tuning learning rate follows the input model's own training."""

import math

import pytest

from yolo_prune.integration.recipe import (
    DEFAULT_EPOCHS,
    FALLBACK,
    LR_FRACTION,
    MIN_IMAGES,
    count_images,
    finetune_defaults,
    finetune_epochs,
    trained_optimizer,
)


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


def test_the_default_budget_sees_enough_images_and_a_given_epochs_is_kept(tmp_path):
    """Unset epochs: 10, raised on a small set until the fine-tune sees MIN_IMAGES images; a given epochs is kept;
    images are counted as Ultralytics lists them (folders recursively, .txt lists, lists of both).

    Mutations caught: the budget left at 10 epochs on 150 images; a user's epochs overridden; a miscount of the set.
    """
    assert finetune_epochs(None, 150) == (30, finetune_epochs(None, 150)[1]) and "1500" in finetune_epochs(None, 150)[1]
    assert finetune_epochs(None, 65)[0] == math.ceil(MIN_IMAGES / 65)
    assert finetune_epochs(None, 800) == (DEFAULT_EPOCHS, None) and finetune_epochs(None, 0) == (DEFAULT_EPOCHS, None)
    assert finetune_epochs(3, 150) == (3, None) and finetune_epochs(0, 150) == (0, None)
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/1.jpg", "a/b/2.PNG", "a/b/3.txt", "a/4.jpeg"):
        (tmp_path / name).write_bytes(b"")
    listing = tmp_path / "list.txt"
    listing.write_text("x/1.jpg\n\nx/2.jpg\n")
    assert count_images(tmp_path / "a") == 3 and count_images(str(listing)) == 2
    assert count_images([str(tmp_path / "a"), listing]) == 5 and count_images(tmp_path / "missing") == 0
