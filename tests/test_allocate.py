"""`yolo_prune.allocate`: layer curves from a sensitivity scan, the trade-off choice, and the target search."""

from __future__ import annotations

import json

import pytest

from yolo_prune import prune
from yolo_prune.measurement.hardware import auto_round_to, padded_macs
from yolo_prune.policy.allocate import LayerCurve, allocate, choose_ratios, curves_from_sensitivity


def macs(model, imgsz: int) -> float:
    """MACs as the MACs target counts them: conv MACs padded to the hardware's channel block."""
    return padded_macs(model, imgsz, auto_round_to("torch", "cpu").value)


SENSITIVE = (0, 1, 2)  # in the synthetic scan below, pruning these stages costs a lot; every other stage is free


def synthetic_scan(stages: int = 22, unprunable: tuple[int, ...] = (10, 11, 13, 14, 17, 20)) -> dict:
    """Sensitivity results shaped like ``run_sensitivity``'s: stages 0-2 lose 0.3 mAP per unit ratio, others ~0."""
    rows = []
    for stage in range(stages):
        results = []
        for ratio in (0.3, 0.5, 0.7):
            drop = 0.3 * ratio if stage in SENSITIVE else 0.0005 * ratio
            results.append({"ratio": ratio, "map50_95": 0.8 - drop, "map50": 0.9, "macs_kept": 1 - 0.04 * ratio})
        rows.append({"stage": stage, "type": "Conv", "prunable": stage not in unprunable, "results": results})
    return {"baseline": {"map50_95": 0.8, "map50": 0.9}, "stages": rows}


def test_curves_are_non_negative_non_decreasing_and_skip_unprunable_layers(tmp_path) -> None:
    """A layer whose drop dips (noise) or is negative gets a monotone, non-negative loss curve.

    Mutations caught: keeping raw drops (the 0.5 point would be cheaper than 0.3), keeping negative drops, listing a
    non-prunable layer, or not reading a results file given by path.
    """
    scan = synthetic_scan(stages=3, unprunable=(1,))
    scan["stages"][0]["results"] = [
        {"ratio": 0.3, "map50_95": 0.70, "macs_kept": 0.9},
        {"ratio": 0.5, "map50_95": 0.75, "macs_kept": 0.8},  # scores better than at 0.3: noise
        {"ratio": 0.7, "map50_95": 0.85, "macs_kept": 0.7},  # better than the baseline
    ]
    path = tmp_path / "sensitivity.json"
    path.write_text(json.dumps(scan))
    curves = curves_from_sensitivity(tmp_path)
    assert [c.stage for c in curves] == [0, 2]
    first = curves[0]
    assert first.ratios == [0.0, 0.3, 0.5, 0.7]
    assert first.losses == pytest.approx([0.0, 0.1, 0.1, 0.1])
    assert first.savings == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert first.at(0.4) == pytest.approx((0.1, 0.15))
    with pytest.raises(ValueError, match="cannot read sensitivity"):
        curves_from_sensitivity(tmp_path / "missing.json")


def test_choose_ratios_prunes_cheap_layers_first() -> None:
    """At a moderate price the insensitive layer is cut to its largest measured ratio, the sensitive one not at all.

    Mutations caught: ignoring the loss term (both layers cut alike), ignoring the saving term (nothing cut), or
    extrapolating past the largest measured ratio.
    """
    steep = LayerCurve(0, [0.0, 0.5], [0.0, 0.5], [0.0, 0.2])
    flat = LayerCurve(1, [0.0, 0.5], [0.0, 0.001], [0.0, 0.2])
    assert choose_ratios([steep, flat], 0.0) == ({}, 0.0)
    ratios, predicted = choose_ratios([steep, flat], 0.5)
    assert ratios == {1: 0.5}
    assert predicted == pytest.approx(0.001)
    ratios, _ = choose_ratios([steep, flat], 1e3)
    assert ratios == {0: 0.5, 1: 0.5}


def test_allocate_meets_the_target_with_the_measured_cost() -> None:
    """The search returns an allocation whose *measured* cost is at most the target and close to it.

    The measure here is an exact additive model, so the result must land within the tolerance. Mutations caught:
    returning the last probe instead of the best feasible one, or a bisection moving the wrong way.
    """
    curves = [
        LayerCurve(i, [0.0, 0.3, 0.5, 0.7], [0.0, 0.01 * i, 0.03 * i, 0.09 * i], [0, 0.03, 0.05, 0.07])
        for i in range(12)
    ]

    def measure(ratios: dict[int, float]) -> float:
        return 1.0 - sum(c.at(ratios.get(c.stage, 0.0))[1] for c in curves)

    found = allocate(curves, measure, target=0.6, verbose=False)
    assert found.achieved <= 0.6
    assert found.achieved >= 0.6 * (1 - 0.02) - 1e-9
    assert found.achieved == pytest.approx(measure(found.ratios))
    assert found.ratios.get(0, 0.0) >= found.ratios.get(11, 0.0)  # the cheapest layer gives at least as much
    with pytest.raises(ValueError, match="out of reach"):
        allocate(curves, measure, target=0.1, verbose=False)


@pytest.mark.slow
def test_prune_with_sensitivity_meets_target_macs_and_spares_sensitive_layers() -> None:
    """``prune(target_macs=0.5, sensitivity=...)`` keeps at most half the MACs (measured) and cuts the stages the
    scan marks as sensitive less than the others; ``ratio`` with sensitivity matches uniform pruning's MACs.

    Mutations caught: allocation ignoring the curves (sensitive stages cut as much as the rest), ``achieved`` taken
    from the curves instead of measured, or the ratio budget not computed from uniform pruning.
    """
    scan = synthetic_scan()
    pruned = prune("yolov8n.yaml", target_macs=0.5, sensitivity=scan, imgsz=128, verbose=False)
    base = macs(prune("yolov8n.yaml", ratio=0.0, verbose=False).model, 128)
    kept = macs(pruned.model, 128) / base
    info = pruned.prune_info["allocation"]
    assert kept <= 0.5 and kept >= 0.45
    assert info["achieved"] == pytest.approx(kept, rel=1e-6)
    ratios = {int(k): v for k, v in info["ratios"].items()}
    assert max(ratios.get(s, 0.0) for s in SENSITIVE) < min(ratios[s] for s in (5, 6, 7, 8, 9))

    uniform = macs(prune("yolov8n.yaml", ratio=0.3, verbose=False).model, 128) / base
    same_budget = prune("yolov8n.yaml", ratio=0.3, sensitivity=scan, imgsz=128, verbose=False)
    assert macs(same_budget.model, 128) / base <= uniform + 1e-9
    with pytest.raises(ValueError, match="layer_ratios"):
        prune("yolov8n.yaml", sensitivity=scan, layer_ratios={3: 0.5}, verbose=False)


def test_model_fingerprint_is_exact_and_thread_independent() -> None:
    """The fingerprint that guards a reused scan is the same under any thread count and changes with one weight.

    Mutations caught: hashing float sums (their last bits depend on the thread count, so a run refused its own scan)
    or hashing shapes only (a scan of another model with the same architecture would be reused).
    """
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from yolo_prune.policy.sensitivity import model_fingerprint

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", verbose=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = model_fingerprint(model)
        torch.set_num_threads(max(2, threads))
        assert model_fingerprint(model) == one
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        model.model[4].cv1.conv.weight[0, 0, 0, 0] += 1e-3
    assert model_fingerprint(model) != one


def test_allocate_fills_a_gap_in_the_convex_hull() -> None:
    """A layer whose loss jumps (harmless at 0.3, ruinous from 0.4) makes the price bisection jump from just above the
    target (0.77) to far below it (0.37); single moves then land just under the target at half the predicted loss.

    Mutations caught (each checked): returning the bisection's feasible point (predicted loss 0.8), or single moves
    chosen by raw efficiency instead of useful saving (the jumpy layer's large cut overshoots: loss 0.8 again).
    """
    free = LayerCurve(0, [0.0, 0.3, 0.5], [0.0, 0.0, 0.0], [0.0, 0.05, 0.1])
    jumpy = LayerCurve(1, [0.0, 0.3, 0.4, 0.5], [0.0, 0.02, 0.55, 0.6], [0.0, 0.05, 0.2, 0.45])
    gentle = LayerCurve(2, [0.0, 0.3, 0.5], [0.0, 0.05, 0.1], [0.0, 0.04, 0.08])
    curves = [free, jumpy, gentle]

    def measure(ratios: dict[int, float]) -> float:
        return 1.0 - sum(c.at(ratios.get(c.stage, 0.0))[1] for c in curves)

    found = allocate(curves, measure, target=0.75, verbose=False)
    assert 0.65 <= found.achieved <= 0.75
    assert found.predicted_loss < 0.5
    assert found.ratios[1] < 0.5
