"""Tests for yolo_prune.bench: a full bench run on two tiny models, failures included."""

import os

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported

import csv  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from yolo_prune.bench import BENCH_DEFAULTS, parse_bench_args, run_bench  # noqa: E402

IMGSZ = 64


def sha256(path: Path) -> str:
    """Return the hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bench_two_models_with_failures(tmp_path, tiny_data, tiny_models):
    """Bench writes all four files with finite numbers, records failures per row and leaves the inputs alone."""
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
        val_batch=4,
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
