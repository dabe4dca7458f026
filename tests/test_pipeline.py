"""`yolo_prune.integration.pipeline`: argument checks, the step schedule and the max_map_drop budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ultralytics import YOLO

from yolo_prune.integration import engine
from yolo_prune.integration.pipeline import PRUNE_DEFAULTS, budget_exceeded, parse_prune_args, run_prune, step_ratio
from yolo_prune.measurement.measure import count_params, new_row

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


@pytest.fixture(scope="module")
def model_nc6(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 6-class YOLOv8n checkpoint (the shapes data has 6 classes)."""
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    yolo = YOLO("yolov8n.yaml")
    yolo.model = DetectionModel("yolov8n.yaml", nc=6, verbose=False)
    path = tmp_path_factory.mktemp("model") / "v8n-nc6.pt"
    yolo.save(str(path))
    return path


def script_map(monkeypatch: pytest.MonkeyPatch, scripted: dict) -> None:
    """Replace the pipeline's measurement seam with scripted mAP values per row name; pruning stays real."""

    def fake_measure(model, name, path, args, out_dir):
        return new_row(name, str(path), params=count_params(model), map50_95=scripted[name], map50=scripted[name])

    monkeypatch.setattr(engine, "measure_row", fake_measure)


def test_step_ratio_compounds_to_the_final_ratio() -> None:
    """Equal steps remove ``ratio`` of the original channels in total."""
    for ratio, steps in [(0.5, 1), (0.5, 2), (0.75, 3), (0.0, 4)]:
        assert 1 - (1 - step_ratio(ratio, steps)) ** steps == pytest.approx(ratio)
    assert step_ratio(0.75, 2) == pytest.approx(0.5)


def test_budget_exceeded() -> None:
    """The schedule stops only when mAP falls further than allowed (or the step could not be measured); without a
    baseline the budget cannot be applied and nothing stops."""
    assert not budget_exceeded(0.5, 0.1, None)
    assert not budget_exceeded(0.5, 0.48, 0.02)
    assert budget_exceeded(0.5, 0.47, 0.02)
    assert budget_exceeded(0.5, None, 0.02)
    assert not budget_exceeded(None, 0.1, 0.02)
    assert not budget_exceeded(None, None, 0.02)


def test_parse_prune_args() -> None:
    """Defaults are filled in, Ultralytics training keys pass through, bad values raise one-line ValueErrors."""
    args = parse_prune_args({"model": "m.pt", "data": "d.yaml", "lr0": 0.002, "patience": 5, "steps": 2.0})
    assert args["train_args"] == {"lr0": 0.002, "patience": 5}
    assert args["steps"] == 2 and args["max_map_drop"] is None
    assert args["ratio"] is None and args["target_macs"] == 0.5  # default: 2x fewer MACs
    assert args["allocation"] == "sensitivity" and args["distill"] is True
    assert args["epochs"] is None and args["min_images"] == 4500  # the budget follows the training set's size
    assert args["latency_imgsz"] == args["imgsz"] == 640 and args["backends"] == ("torch", "onnx")
    assert (
        parse_prune_args({"model": "m.pt", "data": "d.yaml", "imgsz": 320, "latency_imgsz": 640})["latency_imgsz"]
        == 640
    )
    with pytest.raises(ValueError, match="latency_imgsz"):
        parse_prune_args({"model": "m.pt", "data": "d.yaml", "latency_imgsz": 8})
    with pytest.raises(ValueError, match="not both"):
        parse_prune_args({"model": "m.pt", "data": "d.yaml", "ratio": 0.3, "target_macs": 0.5})
    with pytest.raises(ValueError, match="allocation"):
        parse_prune_args({"model": "m.pt", "data": "d.yaml", "allocation": "magic"})
    with pytest.raises(ValueError, match="scan_ratios"):
        parse_prune_args({"model": "m.pt", "data": "d.yaml", "scan_ratios": "0.5,1.5"})
    with pytest.raises(ValueError, match="did you mean 'ratio'"):
        parse_prune_args({"model": "m.pt", "data": "d.yaml", "ratoi": 0.5})
    with pytest.raises(ValueError, match="did you mean 'workers'"):
        parse_prune_args({"model": "m.pt", "data": "d.yaml", "wrkers": 0})
    for bad in ({"ratio": 1.0}, {"steps": 0}, {"epochs": -1}, {"epochs": 1.5}, {"max_map_drop": -0.1}, {"lr0": "x"}):
        with pytest.raises(ValueError):
            parse_prune_args({"model": "m.pt", "data": "d.yaml", **bad})
    with pytest.raises(ValueError, match="not supported"):
        parse_prune_args({"model": "m.pt", "data": "d.yaml", "resume": True})
    with pytest.raises(ValueError, match="missing required argument data"):
        parse_prune_args({"model": "m.pt"})


@pytest.mark.slow
def test_two_steps_prune_only(model_nc6: Path, tiny_data: str, tmp_path: Path) -> None:
    """steps=2, epochs=0: two pruned checkpoints, each smaller, and report rows for every step."""
    run = run_prune(model=str(model_nc6), data=tiny_data, ratio=0.5, steps=2, epochs=0, project=tmp_path, **QUICK)
    weights = run / "weights"
    for name in ("pruned.pt", "step1-pruned.pt", "step2-pruned.pt", "best.pt", "last.pt"):
        assert (weights / name).is_file(), name
    assert not (run / "step1").exists()  # no fine-tuning, no trainer run
    assert (weights / "best.pt").read_bytes() == (weights / "step2-pruned.pt").read_bytes()
    rows = {r["name"]: r for r in json.loads((run / "report.json").read_text())["rows"]}
    assert list(rows) == ["baseline", "step1", "step2", "final"]
    assert rows["baseline"]["params"] > rows["step1"]["params"] > rows["step2"]["params"] == rows["final"]["params"]
    assert rows["final"]["from_step"] == 2


def test_max_map_drop_keeps_last_model_within_budget(
    model_nc6: Path, tiny_data: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With scripted mAP (0.50, then 0.49, then 0.45) and max_map_drop=0.02, step 2 stops the run; step 1 is final,
    and each step really pruned (parameters counted on the models the pipeline handed to the measurement).

    Mutations caught: pruning that does nothing (the step rows would have the baseline's parameter count); the final
    model taken from the step that broke the budget.
    """
    script_map(monkeypatch, {"baseline": 0.50, "step1": 0.49, "step2": 0.45, "step3": 0.40})
    run = run_prune(
        model=str(model_nc6), data=tiny_data, steps=3, epochs=0, max_map_drop=0.02, project=tmp_path, **QUICK
    )
    report = json.loads((run / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == ["baseline", "step1", "step2", "final"]  # step 3 never ran
    assert not (run / "weights" / "step3-pruned.pt").exists()
    assert rows["final"]["from_step"] == 1 and rows["final"]["map50_95"] == 0.49
    assert rows["baseline"]["params"] > rows["step1"]["params"] > rows["step2"]["params"]
    assert rows["final"]["params"] == rows["step1"]["params"]
    assert (run / "weights" / "best.pt").read_bytes() == (run / "weights" / "step1-pruned.pt").read_bytes()
    assert count_params(YOLO(str(run / "weights" / "best.pt")).model) == rows["step1"]["params"]
    assert any("stopped after step 2" in n for n in report["notes"])


def test_max_map_drop_without_a_baseline_runs_the_whole_schedule(
    model_nc6: Path, tiny_data: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A baseline that cannot be validated (mAP None) leaves the budget unapplied: every step runs, with one note.

    Mutation caught: ``budget_exceeded`` counting a missing baseline as over budget (the run then stopped after step 1
    with a message about step 1 dropping mAP).
    """
    script_map(monkeypatch, {"baseline": None, "step1": 0.49, "step2": 0.45})
    run = run_prune(
        model=str(model_nc6), data=tiny_data, steps=2, epochs=0, max_map_drop=0.02, project=tmp_path, **QUICK
    )
    report = json.loads((run / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == ["baseline", "step1", "step2", "final"] and rows["final"]["from_step"] == 2
    assert [n for n in report["notes"] if "not applied" in n] == [
        "max_map_drop=0.02 is not applied: the baseline could not be validated, so there is no mAP50-95 to measure "
        "the drop from; every step of the schedule runs"
    ]
    assert not any("stopped after" in n or "already drops" in n for n in report["notes"])


@pytest.mark.slow
def test_max_map_drop_stops_on_a_measured_drop(trained_detector, tmp_path: Path) -> None:
    """On a trained detector, a two-step schedule whose second step costs real mAP stops there; step 1 is final.

    Mutation caught: the budget compared against anything but the measured mAP50-95 (e.g. the baseline row itself,
    or mAP50 of the same row): no step would exceed it and step 2 would become the final model.
    """
    t = trained_detector
    quick = {**QUICK, "imgsz": t.imgsz, "batch": 16}
    run = run_prune(
        model=str(t.model), data=t.data, ratio=0.6, steps=2, epochs=0, max_map_drop=0.02, project=tmp_path, **quick
    )
    report = json.loads((run / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["baseline"]["map50_95"] == pytest.approx(t.map50_95, abs=1e-3)
    assert rows["baseline"]["map50_95"] - rows["step1"]["map50_95"] <= 0.02
    assert rows["baseline"]["map50_95"] - rows["step2"]["map50_95"] > 0.02
    assert rows["final"]["from_step"] == 1 and any("stopped after step 2" in n for n in report["notes"])
    assert (run / "weights" / "best.pt").read_bytes() == (run / "weights" / "step1-pruned.pt").read_bytes()


def test_device_defaults_to_what_ultralytics_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no ``device``, prune, bench and sensitivity use the first GPU when there is one, else the CPU; an
    explicit device is kept.

    Mutation caught: a ``device="cpu"`` default (a user with a GPU would fine-tune on the CPU).
    """
    import inspect

    import torch

    from yolo_prune import prune
    from yolo_prune.measurement.bench import BENCH_DEFAULTS, parse_bench_args
    from yolo_prune.policy.sensitivity import SENSITIVITY_DEFAULTS, run_sensitivity

    assert PRUNE_DEFAULTS["device"] is BENCH_DEFAULTS["device"] is SENSITIVITY_DEFAULTS["device"] is None
    for function in (prune, run_sensitivity):
        assert inspect.signature(function).parameters["device"].default is None, function.__name__
    for available, expected in ((True, "0"), (False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda available=available: available)
        assert parse_prune_args({"model": "m.pt", "data": "d.yaml", "backends": "onnx"})["device"] == expected
        assert parse_bench_args({"models": "a.pt", "backends": "onnx"})["device"] == expected
    assert parse_prune_args({"model": "m.pt", "data": "d.yaml", "device": "cpu"})["device"] == "cpu"
