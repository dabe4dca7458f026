"""Importance criteria: every method prunes a real model, gradient methods use the training split, bad input fails."""

from __future__ import annotations

import pytest
import torch
from ultralytics import YOLO

from yolo_prune import prune
from yolo_prune.policy.importance import GRADIENT_METHODS, IMPORTANCE_METHODS, collect_gradients, needs_gradients
from yolo_prune.policy.prune import prune_detection_model

IMGSZ = 64


def _valid(model: torch.nn.Module) -> None:
    """The model runs in train and eval mode and still outputs one box per anchor."""
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    model.train()
    assert isinstance(model(x), dict)
    model.eval()
    with torch.no_grad():
        y = model(x)[0]
    assert y.shape[0] == 2 and torch.isfinite(y).all()


@pytest.fixture(scope="module")
def base() -> YOLO:
    return YOLO("yolov8n.yaml")


@pytest.mark.parametrize("method", list(IMPORTANCE_METHODS))
def test_each_method_prunes(base, tiny_data, method):
    params = sum(p.numel() for p in base.model.parameters())
    pruned = prune(
        base, ratio=0.4, method=method, data=tiny_data, imgsz=IMGSZ, calib_batches=1, calib_batch=2, verbose=False
    )
    info = pruned.prune_info
    assert info["method"] == method and info["channels_removed"] > 0
    assert sum(p.numel() for p in pruned.model.parameters()) < params
    assert all(p.grad is None for p in pruned.model.parameters()), "no gradient is left on the pruned model"
    _valid(pruned.model)


def test_gradients_reach_twin_convs_and_change_the_choice(base, tiny_data):
    """Taylor scores come from the loss on training images, including the sliced C2f halves."""
    grads = collect_gradients(base.model, tiny_data, "taylor", batches=1, batch=2, imgsz=IMGSZ)
    assert all(p.grad is None for p in base.model.parameters()), "the input model is left as it was"
    assert "model.2.cv1.conv.weight" in grads and grads["model.2.cv1.conv.weight"].abs().sum() > 0
    taylor = prune(
        base, ratio=0.5, method="taylor", data=tiny_data, imgsz=IMGSZ, calib_batches=1, calib_batch=2, verbose=False
    )
    l2 = prune(base, ratio=0.5, method="l2", verbose=False)
    differs = [
        name
        for (name, a), (_, b) in zip(taylor.model.named_parameters(), l2.model.named_parameters(), strict=True)
        if a.shape == b.shape and not torch.equal(a, b)
    ]
    assert differs, "gradient scores keep other filters than weight norms"


def test_twin_halves_get_their_own_gradient_slices():
    """While a C2f's ``cv1`` is split into twin convs for tracing, each half gets the gradient rows of its own half.

    Mutation caught: swapping the halves in ``_slice_twin_gradients`` (``_cv1a`` given rows ``c:2c``) or giving both
    halves the same slice; an end-to-end "taylor differs from l2" check passes either way.
    """
    from yolo_prune.graph.apply import _slice_twin_gradients
    from yolo_prune.rules.blocks import prepare_for_tracing

    model = YOLO("yolov8n.yaml").model
    for p in model.parameters():
        p.grad = torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape)  # every row different
    plan = prepare_for_tracing(model)
    try:
        _slice_twin_gradients(model)
        blocks = [m for m in model.modules() if hasattr(m, "_cv1a")]
        assert blocks
        for block in blocks:
            c = block._cv1a.conv.out_channels
            for path in ("conv.weight", "bn.weight", "bn.bias"):
                source = block.cv1.get_parameter(path).grad
                assert torch.equal(block._cv1a.get_parameter(path).grad, source[:c]), path
                assert torch.equal(block._cv1b.get_parameter(path).grad, source[c : 2 * c]), path
    finally:
        plan.restore()


def test_hessian_uses_squared_per_image_gradients(base, tiny_data):
    """On one image the Hessian statistic is the square of the Taylor gradient; on more it averages per image."""
    taylor = collect_gradients(base.model, tiny_data, "taylor", batches=1, batch=1, imgsz=IMGSZ)
    hessian = collect_gradients(base.model, tiny_data, "hessian", batches=1, batch=1, imgsz=IMGSZ)
    assert taylor.keys() == hessian.keys()
    for name, g in taylor.items():
        assert torch.allclose(hessian[name], g * g, rtol=1e-4, atol=1e-30), name
    two = collect_gradients(base.model, tiny_data, "hessian", batches=1, batch=2, imgsz=IMGSZ)
    first = "model.0.conv.weight"
    assert all((g >= 0).all() for g in two.values()) and not torch.equal(two[first], hessian[first])


def test_gradients_must_match_the_model(base):
    model = YOLO("yolov8n.yaml").model
    with pytest.raises(ValueError, match="do not match"):
        prune_detection_model(
            model, 0.5, IMPORTANCE_METHODS["taylor"](), gradients={"model.0.conv.weight": torch.ones(1)}
        )


def test_bad_method_inputs(tiny_data):
    assert needs_gradients("Taylor") and not needs_gradients("l1") and GRADIENT_METHODS <= set(IMPORTANCE_METHODS)
    cases = [
        ({"method": "magic"}, "unknown importance method"),
        ({"method": "taylor"}, "data="),
        ({"method": "hessian", "ratio": 0.3}, "data="),
    ]
    for kwargs, needle in cases:
        with pytest.raises(ValueError) as info:
            prune("yolov8n.yaml", verbose=False, **kwargs)
        assert "\n" not in str(info.value) and needle in str(info.value)
    with pytest.raises(ValueError, match="needs no gradients"):
        collect_gradients(YOLO("yolov8n.yaml").model, tiny_data, "l2")
