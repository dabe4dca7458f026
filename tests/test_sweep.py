"""A sweep from the command line: several targets from one scan, one table and plot, resumable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import TINY, digest, save_yolov8n, yolo_prune

from yolo_prune.integration.sweep import sweep_targets

SWEEP_ARGS = [a for a in TINY if not a.startswith("allocation=")] + [
    "scan_images=4",
    "scan_ratios=0.5",
    "reconstruct=none",
]


@pytest.mark.slow
def test_sweep_three_targets_one_report_stock_checkpoints_and_resume(tiny_data: str, tmp_path: Path) -> None:
    """``ratio=0.1,0.2,0.3``: one sensitivity scan, a subfolder per target, one report whose rows are the input model
    and each target timed side by side, a plot, and best.pt files that stock Ultralytics loads; an interrupted sweep
    run again continues, re-running only the unfinished target and keeping its partial folder.

    Mutations caught: a scan per target (more than one sensitivity.json); rows timed separately (no speed-up range);
    a resume that re-runs finished targets (their best.pt would change).
    """
    model = save_yolov8n(tmp_path / "v8n-nc6.pt", nc=6)
    args = ("prune", f"model={model}", f"data={tiny_data}", *SWEEP_ARGS, "ratio=0.1,0.2,0.3,0.8", f"project={tmp_path}")
    result = yolo_prune(*args, "name=sweep", timeout=900)
    # 0.8 is out of reach of a scan that went to 0.5: that target fails, the others are kept, the command exits 1
    assert result.returncode == 1 and "ratio=0.8 [prune]" in result.stderr, result.stderr[-3000:]
    run = tmp_path / "sweep"
    subs = ["ratio-0.1", "ratio-0.2", "ratio-0.3"]
    assert all((run / s / "weights" / "best.pt").is_file() for s in subs)
    assert [p.parent.name for p in run.rglob("sensitivity.json")] == ["sensitivity"]  # one scan, at the top
    assert (run / "pareto.png").stat().st_size > 1000
    report = json.loads((run / "report.json").read_text())
    rows = report["rows"]
    assert [r["name"] for r in rows] == ["baseline", "ratio=0.1", "ratio=0.2", "ratio=0.3", "ratio=0.8"]
    assert "out of reach" in rows[4]["errors"]["prune"] and "finished" not in json.loads(
        (run / "sweep.json").read_text()
    )
    rows = rows[:4]
    assert rows[1]["gflops"] > rows[2]["gflops"] > rows[3]["gflops"]
    for r in rows[1:]:
        d = r["speedup_detail"]["torch_cpu"]
        assert d["p10"] <= d["median"] <= d["p90"] and r["latency_detail"]["torch_cpu"]["timed"] == "side by side"

    code = (
        "import sys, json\nfrom ultralytics import YOLO\n"
        f"ps = [sum(p.numel() for p in YOLO(f).model.parameters()) for f in {[str(run / s / 'weights/best.pt') for s in subs]!r}]\n"  # noqa: E501
        "assert 'yolo_prune' not in sys.modules\nprint(json.dumps(ps))\n"
    )
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [r["params"] for r in rows[1:]]

    # interrupt the third target after the fact: its report gone; the same command continues the unfinished sweep
    kept = {s: digest(run / s / "weights" / "best.pt") for s in subs[:2]}
    (run / subs[2] / "report.json").unlink()
    result = yolo_prune(*args, "name=sweep", timeout=900)
    assert result.returncode == 1, result.stderr[-3000:]
    assert {s: digest(run / s / "weights" / "best.pt") for s in subs[:2]} == kept  # finished targets skipped
    assert (run / subs[2] / "report.json").is_file() and (run / f"{subs[2]}.interrupted").is_dir()
    assert not (tmp_path / "sweep-2").exists()  # continued in place, not a new run folder


def test_sweep_targets_parsing() -> None:
    """Comma lists become targets; one swept key at a time; bad values are one-line errors."""
    assert sweep_targets({"target_latency": "0.7,0.5, 0.35"}) == ("target_latency", [0.7, 0.5, 0.35])
    assert sweep_targets({"ratio": [0.2, 0.4]}) == ("ratio", [0.2, 0.4])
    assert sweep_targets({"target_macs": 0.5}) is None
    with pytest.raises(ValueError, match="numbers separated by commas"):
        sweep_targets({"ratio": "0.2,abc"})
    with pytest.raises(ValueError, match="repeats"):
        sweep_targets({"ratio": "0.2,0.2"})
    with pytest.raises(ValueError, match="one of"):
        sweep_targets({"ratio": "0.2,0.3", "target_macs": "0.5,0.4"})


def test_bad_sweep_is_a_one_line_error(tiny_data: str, tmp_path: Path) -> None:
    """A bad target in a sweep is refused before any work, in one line, exit code 2, nothing written."""
    result = yolo_prune("prune", "model=yolov8n.yaml", f"data={tiny_data}", "ratio=0.2,1.5", f"project={tmp_path}")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "ratio" in result.stderr and not any(tmp_path.iterdir())
