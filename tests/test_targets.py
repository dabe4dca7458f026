"""Targets: MACs and latency budgets are met by searching the ratio; global allocation respects its limits."""

from __future__ import annotations

import pytest
import torch
from ultralytics import YOLO

from yolo_prune import prune
from yolo_prune.measurement.hardware import auto_round_to, padded_macs
from yolo_prune.policy.targets import check_target


def macs(model, imgsz: int) -> float:
    """MACs as the MACs target counts them: conv MACs padded to the hardware's channel block."""
    return padded_macs(model, imgsz, auto_round_to("torch", "cpu").value)


IMGSZ = 64


@pytest.fixture(scope="module")
def base() -> YOLO:
    return YOLO("yolov8n.yaml")


@pytest.mark.parametrize(("target", "global_pruning"), [(0.5, False), (0.4, True)])
def test_target_macs_within_five_percent(base, target, global_pruning):
    pruned = prune(base, target_macs=target, global_pruning=global_pruning, imgsz=IMGSZ, verbose=False)
    found = pruned.prune_info["target"]
    kept = macs(pruned.model, IMGSZ) / macs(base.model, IMGSZ)
    assert kept <= target + 1e-9 and kept >= 0.95 * target, kept
    assert found["achieved"] == pytest.approx(kept, rel=1e-6) and found["kind"] == "macs"
    assert 0 < pruned.prune_info["ratio"] < 1 and pruned.prune_info["global_pruning"] is global_pruning
    pruned.model.eval()
    with torch.no_grad():
        assert pruned.model(torch.rand(1, 3, IMGSZ, IMGSZ))[0].shape[1] == 4 + pruned.model.model[-1].nc


def test_target_latency_is_met_on_the_measured_backend(base):
    """A real latency search returns the model it measured: rebuilding it from the reported ratio gives the same
    weights, and it is smaller than the base (MACs counted independently of the search).

    Mutations caught: a target search that does not force staggered rounding (``prune(ratio=info["ratio"],
    staggered=True)`` then rebuilds other widths); ``achieved`` reported as the target instead of the measured cost.
    """
    # one thread: on a shared 2-core machine, two contending threads make single timings swing 100x
    pruned = prune(base, target_latency=0.9, backend="torch", imgsz=IMGSZ, runs=10, threads=1, verbose=False)
    found = pruned.prune_info["target"]
    assert found["kind"] == "latency" and found["backend"] == "torch"
    assert found["achieved"] <= 0.9 and found["achieved"] == pytest.approx(found["cost"] / found["base_cost"])
    assert [found["ratio"], found["achieved"]] in found["evaluations"]
    rebuilt = prune(base, ratio=found["ratio"], staggered=True, verbose=False).model.state_dict()
    got = pruned.model.state_dict()
    assert rebuilt.keys() == got.keys() and all(torch.equal(rebuilt[k], got[k]) for k in got)
    assert macs(pruned.model, IMGSZ) < macs(base.model, IMGSZ)


def test_target_search_returns_a_model_that_meets_the_target(base, monkeypatch):
    """With a deterministic stand-in for latency (parameter count), the returned model's cost, recomputed here,
    meets the target and is the reported ``achieved``.

    Mutations caught: ``achieved`` reported as the target (or from another probe) instead of the returned model's
    measured cost; accepting a probe above the target; returning a candidate other than the best one that met it.
    """
    from yolo_prune.policy import targets

    def params(module: torch.nn.Module) -> float:
        return float(sum(p.numel() for p in module.parameters()))

    monkeypatch.setattr(targets, "cost_meter", lambda kind, **kw: params)
    pruned = prune(base, target_latency=0.6, imgsz=IMGSZ, verbose=False)
    found = pruned.prune_info["target"]
    kept = params(pruned.model) / params(base.model)
    assert kept <= 0.6 and found["achieved"] == pytest.approx(kept, rel=1e-9)
    met = [a for _, a in found["evaluations"] if a <= 0.6]
    assert found["achieved"] == max(met), "the best candidate that met the target is returned"
    assert 0.6 * (1 - 0.05) <= kept, "the search lands within its tolerance below the target"


def test_latency_runs_and_threads_renamed_to_the_cli_names(base, monkeypatch):
    """``runs``/``threads`` (the CLI's names) reach the latency meter; the old ``latency_runs``/``latency_threads``
    still do, each with a one-line FutureWarning; old and new together are a one-line ValueError before any work.

    Mutations caught: ``runs``/``threads`` not passed on to the meter (its defaults used); an old name accepted but
    dropped, or mapped to the wrong new name (runs <-> threads); an old name accepted without a FutureWarning; old and
    new given together silently picking one of them.
    """
    from yolo_prune.policy import targets

    seen: list[dict] = []

    def meter(kind: str, **kwargs) -> object:
        seen.append(kwargs)
        return lambda module: float(sum(p.numel() for p in module.parameters()))  # deterministic, fast stand-in

    monkeypatch.setattr(targets, "cost_meter", meter)
    prune(base, target_latency=1.0, imgsz=IMGSZ, runs=7, threads=2, verbose=False)
    assert (seen[-1]["runs"], seen[-1]["threads"]) == (7, 2)

    with pytest.warns(FutureWarning) as record:
        old = prune(base, target_latency=1.0, imgsz=IMGSZ, latency_runs=9, latency_threads=3, verbose=False)
    assert (seen[-1]["runs"], seen[-1]["threads"]) == (9, 3)
    messages = sorted(str(w.message) for w in record if issubclass(w.category, FutureWarning))
    assert len(messages) == 2 and all("\n" not in m and "deprecated" in m for m in messages)
    assert "'latency_runs'" in messages[0] and "use 'runs'" in messages[0]
    assert "'latency_threads'" in messages[1] and "use 'threads'" in messages[1]
    assert old.prune_info["target"]["kind"] == "latency"

    calls = len(seen)
    for given in ({"runs": 5, "latency_runs": 5}, {"threads": 1, "latency_threads": 1}):
        with pytest.raises(ValueError, match="deprecated name of") as error:
            prune(base, target_latency=1.0, imgsz=IMGSZ, verbose=False, **given)
        assert "\n" not in str(error.value)
    assert len(seen) == calls, "refused before any measurement"


def test_global_pruning_respects_min_channels_and_ratio(base):
    glob = prune(base, ratio=0.6, global_pruning=True, min_channels=16, max_ratio=0.75, verbose=False)
    info = glob.prune_info
    assert info["channels_removed"] == pytest.approx(0.6 * info["channels_before"], rel=0.05)
    before = {n: m.out_channels for n, m in base.model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    after = {n: m.out_channels for n, m in glob.model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    shrunk = {n: (before[n], after[n]) for n in before if after[n] < before[n]}
    assert shrunk, "something was pruned"
    assert all(a >= 16 for b, a in shrunk.values()), "no group is cut below min_channels"
    assert all(a >= 0.25 * b for b, a in shrunk.values()), "no group loses more than max_ratio"
    assert all(a % 8 == 0 for b, a in shrunk.values()), "kept widths are multiples of round_to"
    for m in glob.model.modules():  # twin halves of C2f cv1 stay equal
        if hasattr(m, "c") and hasattr(m, "cv1") and hasattr(m, "forward_split"):
            assert m.cv1.conv.out_channels == 2 * m.c
    ratios = {n: a / b for n, (b, a) in shrunk.items()}
    assert max(ratios.values()) - min(ratios.values()) > 0.1, "global allocation differs between layers"
    glob.model.train()
    glob.model(torch.rand(2, 3, IMGSZ, IMGSZ))


def test_layer_ratios_prune_only_listed_layers(base):
    pruned = prune(base, layer_ratios={2: 0.5, "4": 0.5}, verbose=False)
    widths = {n: m.out_channels for n, m in pruned.model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    full = {n: m.out_channels for n, m in base.model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    changed = {n.split(".")[1] for n in full if widths[n] != full[n]}
    assert changed == {"2", "4"}
    assert pruned.prune_info["layer_ratios"] == {"2": 0.5, "4": 0.5}


def test_bad_target_inputs(base):
    cases = [
        ({"ratio": 0.5, "target_macs": 0.5}, "mutually exclusive"),
        ({"target_macs": 0.5, "target_latency": 0.5}, "at most one"),
        ({"target_macs": 0.0}, "(0, 1]"),
        ({"target_macs": 1.5}, "(0, 1]"),
        ({"target_latency": -1}, "(0, 1]"),
        ({"target_macs": "half"}, "number"),
        ({"target_latency": 0.5, "backend": "tensorrt"}, "backend"),
        ({"target_macs": 0.001}, "out of reach"),
        ({"global_pruning": True, "layer_ratios": {2: 0.5}}, "global_pruning"),
        ({"target_macs": 0.5, "layer_ratios": {2: 0.5}}, "target"),
        ({"layer_ratios": {2: 1.5}}, "ratio"),
        ({"ratio": 0.5, "global_pruning": True, "max_ratio": 0}, "max_ratio"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(ValueError) as info:
            prune(base, verbose=False, imgsz=IMGSZ, **kwargs)
        assert "\n" not in str(info.value) and needle in str(info.value), (kwargs, str(info.value))
    assert check_target(1, "target_macs") == 1.0


def test_target_one_returns_the_unpruned_model_with_a_measured_cost(base):
    """``target_macs=1.0`` keeps everything, and ``achieved`` is the measured MACs ratio of what is returned.

    Mutations caught: ``ratio=0`` with staggered rounding removing channels of widths that are not multiples of
    ``round_to`` (the nc=90 head); ``search_ratio`` reporting ``achieved=1.0`` without measuring the returned module.
    """
    from ultralytics.nn.tasks import DetectionModel

    yolo = YOLO("yolov8n.yaml")
    yolo.model = DetectionModel("yolov8n.yaml", nc=90, verbose=False)
    kept = prune(yolo, target_macs=1.0, imgsz=IMGSZ, verbose=False)
    found = kept.prune_info["target"]
    assert kept.prune_info["channels_removed"] == 0 and found["ratio"] == 0.0
    measured = macs(kept.model, IMGSZ) / macs(yolo.model, IMGSZ)
    assert measured == 1.0 and found["achieved"] == measured and found["evaluations"] == [[0.0, measured]]


def test_search_ratio_reports_the_measured_cost_at_target_one():
    """At target 1.0 the search measures the model it returns instead of assuming its cost.

    Mutation caught: hard-coding ``achieved=1.0`` for target 1.0 (the scripted cost says 0.8).
    """
    from yolo_prune.policy.targets import search_ratio

    module = torch.nn.Linear(1, 1)
    search, got = search_ratio(lambda r: module, lambda m: 8.0, base_cost=10.0, target=1.0, verbose=False)
    assert got is module and search.achieved == pytest.approx(0.8) and search.cost == 8.0
