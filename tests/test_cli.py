"""The ``yolo-prune`` command line, run as a real subprocess: end to end, and one-line errors on bad input."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from yolo_prune import __version__
from yolo_prune.integration.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "epochs=1",
    "imgsz=64",
    "batch=8",
    "workers=0",
    "plots=False",
    "runs=2",
    "warmup=1",
    "allocation=uniform",
    "backends=torch",
]


def yolo_prune(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the console script through the current interpreter (same venv), offline."""
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    env.pop("YOLO_PRUNE_DEBUG", None)
    cmd = [sys.executable, "-c", "from yolo_prune.integration.cli import entrypoint; entrypoint()", *args]
    return subprocess.run(cmd, cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=timeout)


def digest(path: Path) -> str:
    """SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def save_yolov8n(path: Path, nc: int | None = None) -> Path:
    """Save a randomly initialised YOLOv8n (optionally with ``nc`` classes) as a stock checkpoint."""
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    yolo = YOLO("yolov8n.yaml")
    if nc is not None:
        yolo.model = DetectionModel("yolov8n.yaml", nc=nc, verbose=False)
    yolo.save(str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 6-class YOLOv8n (matches the shapes data) and the stock 80-class one."""
    folder = tmp_path_factory.mktemp("models")
    return {"nc6": save_yolov8n(folder / "v8n-nc6.pt", nc=6), "nc80": save_yolov8n(folder / "v8n.pt")}


@pytest.fixture(scope="module")
def pruned_run(models: dict[str, Path], tiny_data: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One end-to-end ``yolo-prune prune`` run (exp), shared by the checks below."""
    project = tmp_path_factory.mktemp("project")
    before = digest(models["nc6"])
    result = yolo_prune("prune", f"model={models['nc6']}", f"data={tiny_data}", *TINY, f"project={project}")
    return {"result": result, "project": project, "run": project / "exp", "model_digest": before}


@pytest.mark.slow
def test_prune_end_to_end(pruned_run: dict, models: dict[str, Path]) -> None:
    """Exit 0, pruned/best checkpoints written, report rows complete, input model unchanged."""
    result, run = pruned_run["result"], pruned_run["run"]
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    for name in ("pruned.pt", "best.pt", "last.pt"):
        assert (run / "weights" / name).is_file(), name
    for name in ("report.json", "report.md", "results.csv", "pareto.png"):
        assert (run / name).is_file(), name
    assert digest(models["nc6"]) == pruned_run["model_digest"]
    report = json.loads((run / "report.json").read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert list(rows) == ["baseline", "final"]
    for row in rows.values():
        for key in ("params", "gflops", "size_mb", "map50_95", "map50"):
            assert isinstance(row[key], (int, float)) and math.isfinite(row[key]), (row["name"], key, row[key])
        assert math.isfinite(row["latency_ms"]["torch_cpu"]) and row["latency_ms"]["torch_cpu"] > 0
    assert rows["final"]["params"] < rows["baseline"]["params"]
    assert "baseline" in result.stdout and "final" in result.stdout  # the table is printed at the end


@pytest.mark.slow
def test_best_loads_without_plugin(pruned_run: dict, tmp_path: Path) -> None:
    """best.pt is a stock checkpoint: a process that never imports yolo_prune loads it, smaller than the baseline."""
    assert pruned_run["result"].returncode == 0
    best = pruned_run["run"] / "weights" / "best.pt"
    code = (
        "import sys, json\nfrom ultralytics import YOLO\n"
        f"m = YOLO({str(best)!r})\n"
        "assert 'yolo_prune' not in sys.modules\n"
        "print(json.dumps({'params': sum(p.numel() for p in m.model.parameters())}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "YOLO_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    params = json.loads(out.stdout.strip().splitlines()[-1])["params"]
    report = json.loads((pruned_run["run"] / "report.json").read_text())
    assert params == report["rows"][-1]["params"] < report["rows"][0]["params"]


@pytest.mark.slow
def test_second_run_goes_to_new_folder(pruned_run: dict, models: dict[str, Path], tiny_data: str) -> None:
    """An identical second run writes exp-2 and leaves exp byte-for-byte unchanged."""
    assert pruned_run["result"].returncode == 0
    first = tree_digest(pruned_run["run"])
    args = (f"model={models['nc6']}", f"data={tiny_data}", *TINY, f"project={pruned_run['project']}")
    result = yolo_prune("prune", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (pruned_run["project"] / "exp-2" / "weights" / "best.pt").is_file()
    assert tree_digest(pruned_run["run"]) == first


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("model={missing}", "data={data}"), "not found"),
        (("model={model}", "data={missing_yaml}"), "not found"),
        (("model={model}", "data={data}", "ratoi=0.5"), "did you mean 'ratio'"),
        (("model={model}", "data={data}", "ratio=2"), "ratio"),
        (("model={model}", "data={data}", "epochs=-1"), "epochs"),
        (("model={model}", "data={data}", "steps=0"), "steps"),
        (("model={model}", "data={data}", "epochs=ten"), "epochs"),
        (("model={model80}", "data={data}"), "classes"),
        (("model={model}", "data={data}", "reconstruct=lsq"), "reconstruct='lsq' is not valid"),
        (("model={model}", "data={data}", "reconstruct_images=0"), "reconstruct_images"),
    ],
    ids=[
        "missing-model",
        "missing-data",
        "typo",
        "ratio",
        "epochs",
        "steps",
        "non-numeric",
        "class-count",
        "reconstruct",
        "reconstruct-images",
    ],
)
def test_bad_input_one_line_error(
    args: tuple[str, ...], expected: str, models: dict[str, Path], tiny_data: str, tmp_path: Path
) -> None:
    """Bad input gives one ``yolo-prune: error:`` line on stderr, exit 2, no traceback and no files changed."""
    values = {
        "model": models["nc6"],
        "model80": models["nc80"],
        "data": tiny_data,
        "missing": tmp_path / "missing.pt",
        "missing_yaml": tmp_path / "missing" / "data.yaml",
    }
    inputs = [models["nc6"], models["nc80"], Path(tiny_data)]
    before = [digest(p) for p in inputs]
    project = tmp_path / "project"
    extra = [] if any(a.startswith("epochs=") for a in args) else ["epochs=0"]
    result = yolo_prune("prune", *(a.format(**values) for a in args), *extra, f"project={project}")
    assert result.returncode == 2, result.stdout[-1000:] + result.stderr[-1000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("yolo-prune: error: "), result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert [digest(p) for p in inputs] == before
    assert not project.exists()  # validation happens before the run folder is made


def test_help_and_version(capsys: pytest.CaptureFixture) -> None:
    """``yolo-prune help`` lists every subcommand with its defaults; unknown commands are one-line errors."""
    result = yolo_prune("help")
    assert result.returncode == 0
    for command in ("prune", "bench", "demo", "sensitivity", "help", "version"):
        assert f"yolo-prune {command}" in result.stdout
    assert "target_macs=0.5" in result.stdout and "example:" in result.stdout
    bad = yolo_prune("prnue")
    assert bad.returncode == 2 and "did you mean 'prune'" in bad.stderr and "Traceback" not in bad.stderr
    assert main(["--help"]) == 0 and capsys.readouterr().out.strip() == result.stdout.strip()
    assert main(["prune", "-h"]) == 0 and "max_map_drop" in capsys.readouterr().out
    assert main(["version"]) == 0 and capsys.readouterr().out.strip() == __version__


def test_bench_and_sensitivity_wiring(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """bench and sensitivity report usage errors through the CLI: one line, exit code exactly 2.

    Mutation caught: an import error or crash inside the sensitivity module (exit 1, "... set YOLO_PRUNE_DEBUG=1")
    passing for a usage error, as it did when the test accepted exit 1.
    """
    assert main(["bench", "modles=a.pt"]) == 2
    assert "did you mean 'models'" in capsys.readouterr().err
    assert main(["bench", f"models={tmp_path / 'missing.pt'}"]) == 2
    assert "not found" in capsys.readouterr().err
    code = main(["sensitivity", "bogus_key=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("yolo-prune: error: unknown sensitivity argument 'bogus_key'"), err
    assert main(["sensitivity", "model=yolov8n.yaml", f"data={tmp_path / 'none.yaml'}", "ratios=1.5"]) == 2
    assert "ratios" in capsys.readouterr().err
    assert main(["prune", "ratio"]) == 2 and "expected key=value" in capsys.readouterr().err
