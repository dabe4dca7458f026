"""Tests for yolo_prune.measurement.bench: a full bench run on two tiny models, failures included."""

import os

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported

import csv  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from yolo_prune.integration.cli import main  # noqa: E402
from yolo_prune.measurement.bench import BENCH_DEFAULTS, parse_bench_args, run_bench  # noqa: E402

IMGSZ = 64


def sha256(path: Path) -> str:
    """Return the hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bench_two_models_with_failures(tmp_path, tiny_data, tiny_models):
    """Bench writes all four files with finite numbers, records failures per row and leaves the inputs alone.

    Mutation caught (among others): ``latency_batch`` not passed to the latency measurement (the row's batch is then
    1, or the validation batch when the two are swapped).
    """
    big, small = tiny_models
    missing = big.parent / "missing.pt"
    hashes = {p: sha256(p) for p in (big, small)}
    listing = sorted(p.name for p in big.parent.iterdir())

    run_dir = run_bench(
        [str(big), str(small), str(missing)],
        data=tiny_data,
        imgsz=IMGSZ,
        backends=("torch", "onnx", "tensorrt"),
        project=tmp_path / "runs",
        runs=3,
        warmup=1,
        batch=4,
        latency_batch=2,
        threads=1,  # a loaded 2-core CI box makes multi-threaded timing slow and noisy; no timing is asserted
        command="yolo-prune bench",
    )
    assert run_dir == tmp_path / "runs" / "exp"
    for f in ("report.json", "report.md", "results.csv", "pareto.png"):
        assert (run_dir / f).is_file(), f

    report = json.loads((run_dir / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == ["v8n", "v8n_narrow", "missing"]
    for name in ("v8n", "v8n_narrow"):
        row = rows[name]
        numbers = [row["params"], row["gflops"], row["size_mb"], row["map50_95"], row["map50"]]
        numbers += list(row["latency_ms"].values())
        assert all(isinstance(x, (int, float)) and math.isfinite(x) for x in numbers), row
        assert set(row["latency_ms"]) == {"torch_cpu", "onnx_cpu"}
        assert row["batch"] == 2, "the latency input batch is latency_batch"
        assert set(row["errors"]) == {"tensorrt"} and "accepted" in row["errors"]["tensorrt"]
    assert rows["v8n_narrow"]["gflops"] < rows["v8n"]["gflops"]
    assert rows["v8n_narrow"]["params"] < rows["v8n"]["params"]
    assert rows["v8n_narrow"]["vs_baseline"]["macs_ratio"] > 1
    assert "load" in rows["missing"]["errors"] and rows["missing"]["params"] is None

    with open(run_dir / "results.csv") as f:
        assert [r["name"] for r in csv.DictReader(f)] == ["v8n", "v8n_narrow", "missing"]
    assert "missing [load]" in (run_dir / "report.md").read_text()

    # inputs untouched: same bytes, nothing written beside them (the ONNX files live in the run folder)
    assert {p: sha256(p) for p in (big, small)} == hashes
    assert sorted(p.name for p in big.parent.iterdir()) == listing
    assert sorted(p.name for p in (run_dir / "onnx").glob("*.onnx")) == ["v8n.onnx", "v8n_narrow.onnx"]

    # a second run never overwrites the first
    second = run_bench(str(missing), imgsz=IMGSZ, project=tmp_path / "runs", runs=1, warmup=0, threads=1)
    assert second != run_dir and second.parent == run_dir.parent and (second / "report.json").is_file()
    assert (run_dir / "report.json").is_file()


def test_parse_bench_args():
    """CLI strings are converted; unknown keys are rejected with a suggestion."""
    args = parse_bench_args({"models": "a.pt, b.pt", "imgsz": "320", "backends": "onnx", "data": "None"})
    assert args["models"] == ["a.pt", "b.pt"] and args["imgsz"] == 320 and args["backends"] == ("onnx",)
    assert args["data"] is None and args["runs"] == BENCH_DEFAULTS["runs"]
    assert set(args) == set(BENCH_DEFAULTS)
    with pytest.raises(ValueError, match="imgsz"):
        parse_bench_args({"models": "a.pt", "imgz": 320})
    with pytest.raises(ValueError, match="integer"):
        parse_bench_args({"models": "a.pt", "runs": "many"})
    with pytest.raises(ValueError, match="models"):
        parse_bench_args({})


def test_bench_batch_is_the_validation_batch_and_val_batch_is_deprecated(capsys):
    """``batch`` is the validation batch (default 16, as Ultralytics' val) and ``latency_batch`` the latency input
    batch (default 1); the old ``val_batch`` still works as ``batch`` with a one-line FutureWarning; old and new
    together are a one-line usage error (exit 2 from the CLI).

    Mutations caught: ``batch`` left as the latency batch (default 1) or ``latency_batch`` missing from the defaults;
    ``val_batch`` accepted but dropped (``batch`` stays 16) or kept as an extra key; ``val_batch`` accepted without a
    FutureWarning; ``val_batch`` and ``batch`` together silently picking one.
    """
    args = parse_bench_args({"models": "a.pt"})
    assert (args["batch"], args["latency_batch"]) == (16, 1) and "val_batch" not in args
    args = parse_bench_args({"models": "a.pt", "batch": "8", "latency_batch": "2"})
    assert (args["batch"], args["latency_batch"]) == (8, 2)

    with pytest.warns(FutureWarning, match="'val_batch' is deprecated.*use 'batch'") as record:
        args = parse_bench_args({"models": "a.pt", "val_batch": "8"})
    assert (args["batch"], args["latency_batch"]) == (8, 1) and set(args) == set(BENCH_DEFAULTS)
    assert all("\n" not in str(w.message) for w in record)

    with pytest.raises(ValueError, match="deprecated name of 'batch'") as error:
        parse_bench_args({"models": "a.pt", "val_batch": 8, "batch": 8})
    assert "\n" not in str(error.value)
    capsys.readouterr()
    assert main(["bench", "models=a.pt", "val_batch=8", "batch=8"]) == 2  # refused before warning or loading
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give only 'batch'" in err[0], err


def test_run_bench_maps_val_batch_and_logs_both_batches(tmp_path):
    """``run_bench(val_batch=...)`` (the old Python name) warns and becomes ``batch``; the start of every bench logs
    ``batch=<n> (validation), latency_batch=<m>`` so the changed meaning of ``batch`` is visible.

    Mutations caught: ``run_bench`` without the renaming (``val_batch=`` a TypeError, or dropped so the log says 16);
    no start line, or one that swaps the two batches; ``val_batch`` and ``batch`` together accepted.
    """
    from ultralytics.utils import LOGGER

    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    LOGGER.addHandler(handler)
    missing = str(tmp_path / "missing.pt")  # nothing to load: the run is quick, the arguments are what is tested
    try:
        with pytest.warns(FutureWarning, match="'val_batch'"):
            run_bench(missing, project=tmp_path / "runs", val_batch=4, latency_batch=2, runs=1, warmup=0, threads=1)
        run_bench(missing, project=tmp_path / "runs", runs=1, warmup=0, threads=1)
    finally:
        LOGGER.removeHandler(handler)
    started = [line for line in lines if "(validation)" in line]
    assert len(started) == 2, started
    assert started[0].endswith("batch=4 (validation), latency_batch=2"), started
    assert started[1].endswith("batch=16 (validation), latency_batch=1"), started
    with pytest.raises(ValueError, match="give only 'batch'"):
        run_bench(missing, project=tmp_path / "runs", batch=4, val_batch=4)
