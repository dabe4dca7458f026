"""Tests for yolo_prune.measurement.report: ratios against the baseline and the written files (plain-dict rows, no
models)."""

import csv
import json
from pathlib import Path

import pytest

from yolo_prune.measurement.measure import new_row
from yolo_prune.measurement.report import (
    backends_in,
    compare_to_baseline,
    format_table,
    machine_info,
    write_atomic,
    write_report,
)


def make_rows(with_map: bool = True) -> list[dict]:
    """Return baseline/step1/final rows as the prune pipeline would fill them."""
    rows = []
    for name, gflops, ms_torch, ms_onnx, m in (
        ("baseline", 8.0, 40.0, 20.0, 0.50),
        ("step1", 4.0, 25.0, 12.5, 0.48),
        ("final", 2.0, 20.0, 8.0, 0.45),
    ):
        row = new_row(name, f"/x/{name}.pt", params=int(gflops * 1e6), gflops=gflops, size_mb=gflops)
        row["latency_ms"] = {"torch_cpu": ms_torch, "onnx_cpu": ms_onnx}
        row["latency_detail"] = {
            b: {"median_ms": t, "p10_ms": t * 0.9, "p90_ms": t * 1.1, "runs": 5, "threads": 2, "device": "cpu"}
            for b, t in row["latency_ms"].items()
        }
        if with_map:
            row["map50_95"], row["map50"] = m, m + 0.2
        rows.append(row)
    return rows


def test_compare_to_baseline():
    """Speed-up, MACs ratio and their quotient are relative to the first row."""
    cmp = compare_to_baseline(make_rows())
    assert cmp[0] == {
        "macs_ratio": 1.0,
        "speedup": {"torch_cpu": 1.0, "onnx_cpu": 1.0},
        "efficiency": {"torch_cpu": 1.0, "onnx_cpu": 1.0},
    }
    final = cmp[2]
    assert final["macs_ratio"] == pytest.approx(4.0)
    assert final["speedup"] == pytest.approx({"torch_cpu": 2.0, "onnx_cpu": 2.5})
    assert final["efficiency"] == pytest.approx({"torch_cpu": 0.5, "onnx_cpu": 0.625})


def test_missing_values_give_no_ratio():
    """A row without GFLOPs or latency (e.g. failed to load) gets no ratios instead of an exception."""
    rows = make_rows()
    rows.append(new_row("broken", "/x/broken.pt", errors={"load": "FileNotFoundError: nope"}))
    rows[1]["gflops"] = float("nan")
    cmp = compare_to_baseline(rows)
    assert cmp[1]["macs_ratio"] is None and cmp[1]["efficiency"] == {}
    assert cmp[3] == {"macs_ratio": None, "speedup": {}, "efficiency": {}}
    assert compare_to_baseline([]) == []


def test_format_table_is_aligned():
    """The printed table has one aligned line per row, backend columns and an error section."""
    rows = make_rows()
    rows[2]["errors"] = {"onnx_cpu": "RuntimeError: boom"}
    lines = format_table(rows).splitlines()
    table = lines[:4]
    assert len({len(line) for line in table}) == 1  # aligned
    columns = ("GFLOPs", "MACs x", "mAP50-95", "torch_cpu ms", "onnx_cpu x", "onnx_cpu eff")
    assert all(col in table[0] for col in columns)
    assert table[3].startswith("final") and "4.00x" in table[3] and "2.50x" in table[3] and "0.62" in table[3]
    assert lines[-1].strip() == "final [onnx_cpu]: RuntimeError: boom"


def test_write_report_files(tmp_path):
    """JSON (rows + machine), markdown, CSV and a Pareto plot are written; non-finite numbers become null."""
    rows = make_rows()
    rows[1]["extra_key"] = {"ratio": 0.5}  # the prune pipeline may add its own keys
    rows[2]["size_mb"] = float("inf")
    files = write_report(rows, tmp_path / "out", title="t", command="yolo-prune bench models=a.pt")
    assert set(files) == {"json", "md", "csv", "pareto"} and all(p.is_file() for p in files.values())
    assert files["pareto"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = json.loads(files["json"].read_text())  # strict JSON: no NaN/Infinity
    assert [r["name"] for r in report["rows"]] == ["baseline", "step1", "final"]
    assert report["rows"][1]["extra_key"] == {"ratio": 0.5}
    assert report["rows"][2]["size_mb"] is None
    assert report["rows"][2]["vs_baseline"]["macs_ratio"] == pytest.approx(4.0)
    machine = report["machine"]
    assert machine["command"] == "yolo-prune bench models=a.pt" and machine["cores"] >= 1
    assert machine["versions"]["torch"] and machine["versions"]["ultralytics"] and machine["cpu"]

    md = files["md"].read_text()
    assert md.startswith("# t") and "| final |" in md and "pareto.png" in md
    with open(files["csv"]) as f:
        table = list(csv.DictReader(f))
    assert [r["name"] for r in table] == ["baseline", "step1", "final"]
    assert float(table[2]["onnx_cpu_speedup"]) == pytest.approx(2.5)
    assert float(table[2]["torch_cpu_p90_ms"]) == pytest.approx(22.0)


def test_pareto_skipped_without_map(tmp_path):
    """Without mAP the plot is skipped with a note, and the other files are still written."""
    files = write_report(make_rows(with_map=False), tmp_path)
    assert "pareto" not in files and not (tmp_path / "pareto.png").exists()
    assert {"json", "md", "csv"} <= set(files)
    assert "pareto.png skipped" in " ".join(json.loads(files["json"].read_text())["notes"])
    assert "pareto.png skipped" in files["md"].read_text()


def test_backends_in_and_machine_info():
    """Backends come in first-seen order; machine info has the recorded fields."""
    rows = [{"latency_ms": {"onnx_cpu": 1.0}}, {"latency_ms": {"torch_cpu": 2.0, "onnx_cpu": 1.0}}, {}]
    assert backends_in(rows) == ["onnx_cpu", "torch_cpu"]
    info = machine_info()
    assert {"cpu", "cores", "versions", "date", "command", "gpu"} <= set(info)
    assert set(info["versions"]) >= {"torch", "ultralytics", "torch-pruning", "onnxruntime"}


def test_reports_are_written_atomically(tmp_path, monkeypatch):
    """A write that fails half-way leaves the previous report intact and no temporary file behind; the report files
    themselves go through ``write_atomic``.

    Mutations caught: writing reports in place (``Path.write_text``: a failed write truncates the old file); leaving
    the temporary file when the write fails.
    """
    from yolo_prune.measurement import report

    target = tmp_path / "report.md"
    write_atomic(target, "old report\n")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(target, "half \ud800 written")  # a lone surrogate cannot be encoded: fails mid-write
    assert target.read_text() == "old report\n" and [p.name for p in tmp_path.iterdir()] == ["report.md"]

    written = []

    def spy(path, data):
        written.append(Path(path).name)
        return write_atomic(path, data)

    monkeypatch.setattr(report, "write_atomic", spy)
    files = write_report(make_rows(), tmp_path / "run")
    assert sorted(written) == ["pareto.png", "report.json", "report.md", "results.csv"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(p.name for p in files.values())
    assert list(csv.DictReader(files["csv"].open()))[0]["name"] == "baseline"
