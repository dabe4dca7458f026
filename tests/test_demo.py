"""`yolo-prune demo fast=True` end to end, and demo argument checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from yolo_prune.integration.demo import check_demo_args


def test_demo_args() -> None:
    """Prune arguments pass through; model/data and unknown keys are refused."""
    assert check_demo_args({"fast": True, "ratio": 0.4, "name": "x"}) == {"ratio": 0.4, "name": "x"}
    with pytest.raises(ValueError, match="chooses model"):
        check_demo_args({"model": "a.pt"})
    with pytest.raises(ValueError, match="did you mean 'ratio'"):
        check_demo_args({"ratoi": 0.4})
    with pytest.raises(ValueError, match="fast"):
        check_demo_args({"fast": "yes"})


@pytest.mark.slow
def test_demo_fast_end_to_end(tmp_path: Path) -> None:
    """``yolo-prune demo fast=True`` trains a baseline, prunes it and writes the report; a rerun reuses the cache."""
    env = {**os.environ, "YOLO_OFFLINE": "1"}  # YOLO_PRUNE_DATASETS points at the session's temporary cache
    cmd = [sys.executable, "-c", "from yolo_prune.integration.cli import entrypoint; entrypoint()", "demo", "fast=True"]
    result = subprocess.run(
        [*cmd, f"project={tmp_path}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "demo"
    for name in ("report.json", "report.md", "pareto.png", "weights/pruned.pt", "weights/best.pt"):
        assert (run / name).is_file(), name
    rows = {r["name"]: r for r in json.loads((run / "report.json").read_text())["rows"]}
    assert rows["final"]["params"] < rows["baseline"]["params"]
    cached = list((Path(os.environ["YOLO_PRUNE_DATASETS"]) / "demo-models").glob("*.pt"))
    assert len(cached) == 1
    assert not list(cached[0].parent.glob(".train-*"))  # the training folder is removed after caching

    again = subprocess.run(
        [*cmd, f"project={tmp_path}", "epochs=0", "allocation=uniform"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing the cached baseline" in again.stdout + again.stderr
    assert (tmp_path / "demo-2" / "report.md").is_file()
