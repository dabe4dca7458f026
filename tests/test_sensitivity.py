"""Sensitivity: one layer at a time, three result files with finite numbers, and per-layer ratios from them."""

from __future__ import annotations

import json
import math

import pytest

from yolo_prune import prune
from yolo_prune.policy.sensitivity import SENSITIVITY_DEFAULTS, layer_ratios, run_sensitivity


def test_sensitivity_writes_its_files(tiny_data, tmp_path, capfd):
    run = run_sensitivity(
        "yolov8n.yaml",
        tiny_data,
        ratios="0.3,0.7",
        imgsz=64,
        batch=8,
        stages=[0, 10, -1],
        round_to=8,  # the 16-channel stem keeps its width at a 16-channel block (round_to="auto" on AVX-512)
        project=tmp_path,
        name="exp",
        verbose=False,
    )
    assert run == tmp_path / "exp"
    assert sorted(p.name for p in run.iterdir()) == ["sensitivity.json", "sensitivity.md", "sensitivity.png"]
    results = json.loads((run / "sensitivity.json").read_text())
    assert [row["stage"] for row in results["stages"]] == [0, 10, 22]
    assert [row["prunable"] for row in results["stages"]] == [True, False, True]  # layer 10 is an Upsample
    for row in results["stages"]:
        assert [r["ratio"] for r in row["results"]] == [0.3, 0.7]
        for r in row["results"]:
            assert all(math.isfinite(r[k]) for k in ("map50_95", "map50", "drop", "macs_kept"))
    head = results["stages"][2]["results"]
    assert head[1]["macs_kept"] < head[0]["macs_kept"] < 1.0
    assert "| 22 | Detect |" in (run / "sensitivity.md").read_text()
    assert "Scan time" in (run / "sensitivity.md").read_text()
    assert (run / "sensitivity.png").stat().st_size > 1000
    seconds = results["seconds"]  # where the scan's time went, validation and the rest
    assert seconds["validate"] > 0 and seconds["prune"] > 0 and seconds["total"] >= seconds["validate"]
    output = "".join(capfd.readouterr())
    assert "6/6" in output and "sensitivity" in output, output[-2000:]  # one progress bar over layers x ratios
    assert "Validating" not in output and "val: Scanning" not in output  # the validator's own bars and lines are quiet
    again = run_sensitivity(
        "yolov8n.yaml", tiny_data, ratios=0.5, imgsz=64, stages=[-1], project=tmp_path, verbose=False
    )
    assert again != run and again.name.startswith("exp"), "runs never overwrite each other"

    ratios = layer_ratios(run, max_drop=0.01)  # an untrained model has mAP 0: every ratio costs nothing
    assert ratios == {0: 0.7, 22: 0.7}
    pruned = prune("yolov8n.yaml", layer_ratios=ratios, verbose=False)
    assert pruned.prune_info["channels_removed"] > 0


def test_layer_ratios_stop_at_the_first_large_drop():
    results = {
        "baseline": {"map50_95": 0.5, "map50": 0.8},
        "stages": [
            {
                "stage": 1,
                "prunable": True,
                "results": [
                    {"ratio": 0.3, "map50_95": 0.495, "map50": 0.8},
                    {"ratio": 0.5, "map50_95": 0.45, "map50": 0.8},
                    {"ratio": 0.7, "map50_95": 0.495, "map50": 0.8},
                ],
            },
            {"stage": 2, "prunable": True, "results": [{"ratio": 0.3, "map50_95": 0.3, "map50": 0.5}]},
            {"stage": 3, "prunable": False, "results": []},
        ],
    }
    assert layer_ratios(results, max_drop=0.01) == {1: 0.3}
    assert layer_ratios(results, max_drop=0.01, metric="map50") == {1: 0.7}


def test_bad_sensitivity_inputs(tiny_data, tmp_path):
    assert {"model", "data", "ratios", "stages", "method", "project", "name"} <= set(SENSITIVITY_DEFAULTS)
    cases = [
        ({"model": None, "data": tiny_data}, "model="),
        ({"model": "yolov8n.yaml", "data": tiny_data, "ratios": [0.5, 1.2]}, "ratios"),
        ({"model": "yolov8n.yaml", "data": tiny_data, "stages": [99]}, "stages"),
        ({"model": "yolov8n.yaml", "data": tiny_data, "method": "magic"}, "unknown importance"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(ValueError) as info:
            run_sensitivity(project=tmp_path, verbose=False, **kwargs)
        assert "\n" not in str(info.value) and needle in str(info.value)
    assert not any(tmp_path.iterdir()), "nothing is written for bad input"
    with pytest.raises(ValueError, match="metric"):
        layer_ratios({}, metric="f1")


def test_sensitivity_ranks_layers_by_a_real_drop(trained_detector, tmp_path):
    """On a trained detector, pruning one layer costs a measured mAP that differs between layers, and
    ``layer_ratios`` spares the most sensitive layer.

    Mutation caught: the scan validating the unpruned network (or the baseline) for every layer: every drop would be
    0, so no layer would rank above another.
    """
    t = trained_detector
    run = run_sensitivity(
        str(t.model), t.data, ratios=0.75, imgsz=t.imgsz, batch=16, stages=[2, 6, 15], project=tmp_path, verbose=False
    )
    results = json.loads((run / "sensitivity.json").read_text())
    assert results["baseline"]["map50_95"] == pytest.approx(t.map50_95, abs=1e-3)
    drops = {row["stage"]: row["results"][0]["drop"] for row in results["stages"]}
    for row in results["stages"]:
        r = row["results"][0]
        assert r["channels_removed"] > 0 and r["drop"] == pytest.approx(t.map50_95 - r["map50_95"])
    worst = max(drops, key=drops.get)
    assert drops[worst] > 0.03 and drops[worst] - min(drops.values()) > 0.03, drops
    ratios = layer_ratios(run, max_drop=0.01)
    assert worst not in ratios and ratios, (drops, ratios)


def test_sensitivity_with_reconstruction_measures_the_refitted_cut(trained_detector, tmp_path):
    """``reconstruct="ls"`` re-fits each pruned copy before validating it: the same cuts cost less mAP than without,
    and the results say how they were measured.

    Mutation caught: the re-fit computed on a copy or skipped (drops equal to the plain scan's).
    """
    t = trained_detector
    scans = {}
    for method in (None, "ls"):
        run = run_sensitivity(
            str(t.model), t.data, ratios=0.75, imgsz=t.imgsz, batch=16, stages=[2, 6, 15], project=tmp_path,
            reconstruct=method, reconstruct_images=32, verbose=False,
        )  # fmt: skip
        scans[method] = json.loads((run / "sensitivity.json").read_text())
    assert scans["ls"]["reconstruct"] == "ls" and scans[None]["reconstruct"] is None
    plain = {r["stage"]: r["results"][0]["drop"] for r in scans[None]["stages"]}
    fitted = {r["stage"]: r["results"][0]["drop"] for r in scans["ls"]["stages"]}
    assert sum(fitted.values()) < sum(plain.values()) - 0.02, (plain, fitted)
    with pytest.raises(ValueError, match="reconstruct_images"):
        run_sensitivity(str(t.model), t.data, reconstruct="ls", reconstruct_images=0, project=tmp_path)
