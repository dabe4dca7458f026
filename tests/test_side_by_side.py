"""Tests for yolo_prune.measurement.side_by_side: every row of a report timed in the same interleaved rounds."""

import os

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported: nothing may be downloaded

import pytest  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402

from yolo_prune.measurement.measure import new_row  # noqa: E402
from yolo_prune.measurement.report import compare_to_baseline, format_table  # noqa: E402
from yolo_prune.measurement.side_by_side import (  # noqa: E402
    backend_runner,
    interleaved_times,
    side_by_side,
    time_rows,
    timing_notes,
)

IMGSZ = 96


def _model(width: float) -> DetectionModel:
    """YOLOv8 at width multiple ``width`` (a wider one does strictly more work), untrained, eval mode."""
    import yaml
    from ultralytics.nn.tasks import yaml_model_load

    cfg = yaml_model_load("yolov8n.yaml")
    cfg["scales"] = {"n": [0.33, width, 1024]}
    return DetectionModel(yaml.safe_load(yaml.safe_dump(cfg)), nc=2, verbose=False).eval()


def test_the_bigger_model_is_slower_and_the_order_alternates():
    """Two widths of one model, timed in interleaved rounds: the wider one is slower in the medians and in the
    per-round speed-up, and every odd round runs the models in the reverse order.

    Mutations caught: rounds always in the same order (the call log); a speed-up taken the wrong way round.
    """
    calls: list[str] = []
    runners = {}
    for name, width in (("small", 0.25), ("big", 1.0)):
        run = backend_runner("torch_cpu", _model(width), imgsz=IMGSZ, threads=1)
        runners[name] = lambda run=run, name=name: (calls.append(name), run())
    times = interleaved_times(runners, rounds=6, warmup=1)
    assert calls == ["small", "big", "big", "small"] * 3 + ["small", "big"]  # warm-up round, then 6 timed ones
    stats = side_by_side(times, base="big")
    assert stats["big"]["median_ms"] > stats["small"]["median_ms"]
    assert stats["small"]["speedup"]["median"] > 1.5 and stats["big"]["speedup"]["median"] == 1.0
    assert stats["small"]["speedup"]["rounds"] == 6


def test_speedup_is_the_median_of_per_round_ratios():
    """With load that moves between rounds, the per-round ratio is what the report gives, not the ratio of medians.

    Base [1, 2, 3] ms and row [3, 1, 2] ms: both medians are 2 ms (ratio 1.0), while the per-round speed-ups
    (base / row) are 1/3, 2 and 1.5, median 1.5. Rows timed separately and divided by their medians would give 1.0.
    """
    stats = side_by_side({"base": [1.0, 2.0, 3.0], "row": [3.0, 1.0, 2.0]}, base="base")
    assert stats["base"]["median_ms"] == stats["row"]["median_ms"] == 2.0
    assert stats["row"]["speedup"]["median"] == pytest.approx(1.5)
    assert stats["row"]["speedup"]["p10"] < 1.0 < stats["row"]["speedup"]["p90"]


def test_time_rows_fills_the_report_and_the_table_shows_the_range(tmp_path):
    """time_rows writes each row's median, its side-by-side speed-up and range (ONNX Runtime and PyTorch); the table's
    `x` column is that median with its range; a model that cannot be loaded is an error in its row, not a crash."""
    rows = [new_row("baseline"), new_row("pruned"), new_row("broken")]
    big, small = _model(1.0), _model(0.25)
    sources = [
        {"torch_cpu": big, "onnx_cpu": big},
        {"torch_cpu": small, "onnx_cpu": small},
        {"onnx_cpu": tmp_path / "missing.pt"},
    ]
    time_rows(rows, sources, ["torch_cpu", "onnx_cpu"], imgsz=IMGSZ, threads=1, rounds=5, warmup=1, work=tmp_path)
    for label in ("torch_cpu", "onnx_cpu"):
        detail = rows[1]["speedup_detail"][label]
        assert detail["p10"] <= detail["median"] <= detail["p90"] and detail["median"] > 1.2, detail
        assert rows[1]["latency_detail"][label]["timed"] == "side by side"
        assert rows[1]["latency_ms"][label] < rows[0]["latency_ms"][label]
    assert "onnx_cpu" in rows[2]["errors"] and not rows[2]["latency_ms"]
    cmp = compare_to_baseline(rows)
    assert cmp[1]["speedup"]["onnx_cpu"] == rows[1]["speedup_detail"]["onnx_cpu"]["median"]
    d = rows[1]["speedup_detail"]["onnx_cpu"]
    assert f"{d['median']:.2f}x ({d['p10']:.2f}-{d['p90']:.2f})" in format_table(rows)
    notes = timing_notes(rows, ["torch_cpu", "onnx_cpu"], IMGSZ, 1)
    assert "side by side in 5 interleaved rounds" in notes[0] and "1 thread(s)" in notes[0]
