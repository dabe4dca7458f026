"""Run folders and interrupted runs of `yolo-prune prune`: where files go, unwritable outputs, signals, exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from yolo_prune.integration.checkpoint import load_yolo
from yolo_prune.integration.cli import main, unmeasured
from yolo_prune.integration.pipeline import check_output_folder, run_prune
from yolo_prune.measurement.report import write_report

QUICK = {"imgsz": 64, "batch": 8, "workers": 0, "plots": False, "runs": 1, "warmup": 1, "backends": "torch"}


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_relative_project_keeps_every_file_in_the_run_folder_and_yaml_takes_dataset_classes(
    tiny_data, tmp_path, monkeypatch
):
    """A relative project (the default runs/prune) keeps the trainer's step folder inside the run folder, and a model
    yaml is built with the dataset's 6 classes as ``yolo train`` does. Catches: passing the relative project to the
    trainer (files under runs/detect/runs/prune/exp/step1), or refusing the yaml for its 80 classes."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    run_dir = run_prune(
        model="yolov8n.yaml", data=tiny_data, project="runs/prune", ratio=0.5, epochs=1, scan_ratios="0.5", **QUICK
    )  # one scan ratio: the scan's files must land in the run folder too, at a third of the cost
    assert run_dir == Path("runs/prune/exp")
    files = _files(work)
    assert files and all(f.startswith("runs/prune/exp/") for f in files), sorted(files)[:5]
    assert {"runs/prune/exp/step1/weights/last.pt", "runs/prune/exp/weights/best.pt"} <= files
    assert not (work / "runs" / "detect").exists()
    best = load_yolo(work / "runs/prune/exp/weights/best.pt")
    assert best.model.model[-1].nc == 6 and len(best.model.names) == 6
    assert unmeasured(work / run_dir, "prune") is None


def test_unwritable_project_is_refused_before_any_work(tiny_data, tmp_path, capsys):
    """A file in the way of project=, or a read-only folder, gives one line and exit 2, nothing created.
    Catches: the check removed (an OSError traceback from mkdir after the model was loaded)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    code = main(["prune", "model=yolov8n.yaml", f"data={tiny_data}", f"project={blocker / 'runs'}", "epochs=0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is a file, not a folder" in err[0]
    assert sorted(os.listdir(tmp_path)) == ["blocker"]

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    target = locked if not os.access(locked, os.W_OK) else Path("/proc/sys")  # root may write in 0555 folders
    if os.access(target, os.W_OK):
        pytest.skip("no read-only folder available to this user")
    with pytest.raises(ValueError, match="cannot be written: no write permission"):
        check_output_folder(target / "runs" / "prune")
    code = main(["bench", f"models={blocker}", f"project={target / 'runs'}"])  # refused before the model is read
    assert code == 2 and "cannot be written" in capsys.readouterr().err


def test_unmeasured_final_model_fails_the_command(tmp_path):
    """A report whose final row has measurement errors makes prune/demo/bench exit 1 with one line naming them.
    Catches: exit 0 with a report full of errors."""
    ok = {"name": "baseline", "map50_95": 0.5, "errors": {}}
    bad = {"name": "final", "map50_95": None, "errors": {"val": "RuntimeError: boom", "latency_torch_cpu": "x"}}
    write_report([ok, bad], tmp_path / "run", title="t")
    line = unmeasured(tmp_path / "run", "prune")
    assert line and "final [val], final [latency_torch_cpu]" in line and "report.md" in line and "\n" not in line
    assert unmeasured(tmp_path / "run", "bench") == line.replace("the final model", "some models")
    write_report([ok, {**bad, "errors": {}}], tmp_path / "good", title="t")
    assert unmeasured(tmp_path / "good", "prune") is None
    assert "without a readable report" in unmeasured(tmp_path / "missing", "demo")


def test_bench_exits_1_when_a_model_cannot_be_measured(tiny_data, tmp_path, capsys):
    """``yolo-prune bench`` with one unreadable model writes the full report and exits 1 naming what failed.
    Catches: the CLI ignoring the report's errors (exit 0)."""
    from ultralytics import YOLO

    good, broken = tmp_path / "good.pt", tmp_path / "broken.pt"
    YOLO("yolov8n.yaml").save(good)
    broken.write_bytes(b"\x00" * 64)
    project = tmp_path / "bench"
    args = [f"models={good},{broken}", f"data={tiny_data}", "imgsz=64", "runs=1", "warmup=0", f"project={project}"]
    code = main(["bench", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "some models could not be validated or measured: broken [load]" in err[0]
    assert {"report.json", "report.md", "results.csv"} <= set(os.listdir(project / "exp"))


def _start_prune(model: Path, data: str, project: Path, epochs: int) -> subprocess.Popen:
    """Start ``yolo-prune prune`` in a child process (its own process group, so signals reach only it)."""
    args = [f"model={model}", f"data={data}", f"project={project}", f"epochs={epochs}"]
    args += [f"{k}={v}" for k, v in {**QUICK, "batch": 4, "allocation": "uniform", "reconstruct": "none"}.items()]
    cmd = [sys.executable, "-c", "from yolo_prune.integration.cli import entrypoint; entrypoint()", "prune", *args]
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Poll until ``path`` exists (the child still running), with a generous timeout."""
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert proc.poll() is None, f"child ended early ({proc.returncode}): {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.05)


RESUME = textwrap.dedent(
    """
    import sys
    from ultralytics import YOLO
    from yolo_prune.integration.trainer import PrunedDetectionTrainer

    YOLO(sys.argv[1]).train(resume=True, trainer=PrunedDetectionTrainer)
    """
)


def _widths(path: Path) -> list[int]:
    return [m.out_channels for m in load_yolo(path).model.modules() if isinstance(m, torch.nn.Conv2d)]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_fine_tune_resumes_to_the_pruned_layout(sig, tiny_data, tmp_path):
    """Interrupt ``yolo-prune prune`` during fine-tuning (after epoch 1's last.pt), then run the documented resume.

    Catches: a non-atomic pruned.pt or trainer checkpoint (truncated file after the kill), a resume that rebuilds the
    unpruned network (other widths), or a SIGINT that exits with a traceback instead of 130 and the resume hint.
    """
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    model = tmp_path / "v8n-nc6.pt"
    yolo = YOLO("yolov8n.yaml")
    yolo.model = DetectionModel("yolov8n.yaml", nc=6, verbose=False)
    yolo.save(str(model))
    project = tmp_path / "runs"
    run = project / "exp"
    proc = _start_prune(model, tiny_data, project, epochs=4)
    try:
        _wait_for(run / "step1" / "weights" / "last.pt", proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err[-2000:]
        assert "interrupted" in err and "trainer=PrunedDetectionTrainer" in err and "Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
    pruned = _widths(run / "weights" / "pruned.pt")  # complete: written atomically before training started
    last = run / "step1" / "weights" / "last.pt"
    assert _widths(last) == pruned  # the trainer's last.pt is complete too
    assert not (run / "weights" / "best.pt").exists()  # the run did not get that far

    script = tmp_path / "resume.py"
    script.write_text(RESUME)
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    resumed = subprocess.run(
        [sys.executable, str(script), str(last)], env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _widths(run / "step1" / "weights" / "best.pt") == pruned
    assert _widths(last) == pruned
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == -1  # finished: optimizer stripped
    leftovers = [p.name for p in run.rglob("*.tmp")]  # a SIGKILL mid-write may leave its hidden temporary file
    assert all(n.startswith((".last.pt.", ".best.pt.", ".pruned.pt.")) for n in leftovers), leftovers
    assert sig == signal.SIGKILL or not leftovers


KILLED_WRITER = textwrap.dedent(
    """
    import sys
    from ultralytics import YOLO
    from yolo_prune.integration.checkpoint import save_checkpoint

    yolo = YOLO("yolov8s.yaml")  # about 45 MB in FP32: each write takes a while
    for i in range(1000):
        save_checkpoint(yolo, sys.argv[1], yolo_prune={"i": i})
        print("saved", i, flush=True)
    """
)


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_never_leaves_a_truncated_file(tmp_path):
    """SIGKILL a process that keeps rewriting pruned.pt: the file is always complete (the old or the new one).
    Catches: writing the checkpoint in place instead of through a temporary file and os.replace."""
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    target = tmp_path / "out" / "pruned.pt"
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(target)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        saved = 0
        for line in proc.stdout:  # let it finish a few writes, then kill it in the middle of the next one
            saved += line.startswith("saved ")
            if saved == 3:
                break
        assert saved == 3, "the writer stopped early"
        time.sleep(0.1)
        proc.kill()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ckpt = torch.load(target, map_location="cpu", weights_only=False)
    assert ckpt["yolo_prune"]["i"] >= 2
    load_yolo(target)  # reads back as a whole checkpoint
