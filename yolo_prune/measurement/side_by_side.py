"""Time the models of one report side by side, so that their speed-ups survive a busy machine.

A model timed on its own at one moment of a run and its pruned copy timed at another see different machine load: on
a shared machine the ratio of the two medians measures the load, not the models. Here every model of a report is
loaded once per backend and run in *rounds*: each round runs every model once, in one order on even rounds and the
reverse on odd ones, so drifting load and cache effects hit every model alike. A row's speed-up is the median of its
per-round ratios to the baseline (``baseline ms / row ms`` of the same round), with their 10th and 90th percentiles as
the range; the latency column is each model's median.

Examples:
    >>> from yolo_prune.measurement.side_by_side import time_rows
    >>> time_rows(rows, [{"onnx_cpu": "base.pt"}, {"onnx_cpu": "pruned.pt"}], ["onnx_cpu"], imgsz=640, threads=1)
    >>> rows[1]["speedup_detail"]["onnx_cpu"]  # {'median': 1.93, 'p10': 1.88, 'p90': 1.99, 'rounds': 50}
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .measure import interleaved_times  # the one timing loop, re-exported here where it has always been public

__all__ = ["WIDE_RANGE", "backend_runner", "interleaved_times", "side_by_side", "time_rows", "timing_notes"]

WIDE_RANGE = 0.10  # a speed-up whose 10-90 % range leaves +-10 % of its median is called noisy in the report
BUSY_LOAD = 0.5  # load average per usable core above which the report says the machine was busy


def backend_runner(
    label: str,
    source: Any,
    imgsz: int = 640,
    batch: int = 1,
    threads: int | None = None,
    device: str = "cpu",
    work: str | Path | None = None,
    name: str = "model",
) -> Callable[[], None]:
    """Return a no-argument callable that runs one inference of ``source`` on the backend ``label``.

    Args:
        label: A backend label of `yolo_prune.measurement.measure.resolve_backends`: ``torch_cpu``, ``torch_cuda``,
            ``onnx_cpu``, ``onnx_cuda`` or ``openvino_cpu``.
        source: A checkpoint path, YOLO object or module; or, for ONNX, an exported ``.onnx`` file and, for OpenVINO, an
            exported model folder (used as they are).
        imgsz: Square input size.
        batch: Input batch.
        threads: CPU threads (PyTorch intra-op threads are set on every call); every usable core when None.
        device: Ultralytics device string, for ``torch_cuda``.
        work: Folder for exports made here, in its ``onnx``/``openvino`` subfolders (required when ``source`` is not
            already exported for the backend).
        name: File stem of those exports.

    Raises:
        ValueError: On an unknown label.
        BackendUnavailableError: When the backend's runtime is missing.
    """
    from .measure import (
        default_threads,
        export_onnx,
        export_openvino,
        onnx_runner,
        openvino_runner,
        require_onnxruntime,
        require_openvino,
        torch_runner,
    )

    threads = int(threads or default_threads())
    path = Path(source) if isinstance(source, (str, Path)) else None
    if label.startswith("torch"):
        from ultralytics.utils.torch_utils import select_device

        held = torch.get_num_threads()
        dev = torch.device("cpu") if label == "torch_cpu" else select_device(device, verbose=False)
        torch.set_num_threads(held)  # select_device changes it process-wide
        return torch_runner(source, imgsz, batch, dev, threads)
    if label.startswith("onnx"):
        require_onnxruntime()  # before exporting anything
        if path is None or path.suffix != ".onnx":
            path = export_onnx(source, imgsz, batch, _need(work) / "onnx", name)
        return onnx_runner(path, imgsz, batch, threads, "cuda" if label == "onnx_cuda" else "cpu")
    if label.startswith("openvino"):
        require_openvino()
        exported = path is not None and (path.is_dir() or path.suffix == ".xml")
        folder = path if exported else export_openvino(source, imgsz, batch, _need(work) / "openvino", name)
        return openvino_runner(folder, imgsz, batch, threads)[0]
    raise ValueError(f"no side-by-side timing for backend '{label}'")


def _need(work: str | Path | None) -> Path:
    """The export folder, which the caller must give when a model still has to be exported."""
    if work is None:
        raise ValueError("exporting for side-by-side timing needs work= (a folder the caller owns)")
    return Path(work)


def side_by_side(times: dict[Any, list[float]], base: Any) -> dict[Any, dict]:
    """Summarise interleaved timings: each key's median and 10-90 % ms and its speed-up over ``base``.

    The speed-up is the median of the per-round ratios ``base ms / key ms`` (not the ratio of the medians), with the
    10th and 90th percentile of those ratios as its range.

    Args:
        times: What `interleaved_times` returned (equal-length lists).
        base: The key of the reference model.

    Returns:
        ``{key: {"median_ms", "p10_ms", "p90_ms", "runs", "speedup": {"median", "p10", "p90", "rounds"}}}``; the
        ``speedup`` entry is missing when ``base`` was not timed.
    """
    out: dict[Any, dict] = {}
    for key, ms in times.items():
        arr = np.asarray(ms, dtype=float)
        stats = {
            "median_ms": float(statistics.median(ms)),
            "p10_ms": float(np.percentile(arr, 10)),
            "p90_ms": float(np.percentile(arr, 90)),
            "runs": len(ms),
        }
        if base in times:
            ratios = np.asarray(times[base], dtype=float) / arr
            stats["speedup"] = {
                "median": float(np.median(ratios)),
                "p10": float(np.percentile(ratios, 10)),
                "p90": float(np.percentile(ratios, 90)),
                "rounds": len(ms),
            }
        out[key] = stats
    return out


def time_rows(
    rows: list[dict],
    sources: list[dict[str, Any]],
    labels: list[str],
    imgsz: int = 640,
    batch: int = 1,
    threads: int | None = None,
    device: str = "cpu",
    rounds: int = 50,
    warmup: int = 10,
    work: str | Path | None = None,
) -> None:
    """Time the report's rows side by side on each backend and write the results into the rows, in place.

    For each label, every row that has a source for it is loaded, then all are run in interleaved rounds
    (`interleaved_times`). Each row gets ``latency_ms[label]`` (its median), ``latency_detail[label]`` (median, 10-90 %,
    runs, threads, ``"timed": "side by side"``) and, when the first row was timed too, ``speedup_detail[label]`` (the
    median per-round speed-up over the first row and its 10-90 % range). A row whose model fails to load or export for
    a backend gets the error in ``errors[label]`` and is left out of that backend's rounds.

    Args:
        rows: Report rows; ``rows[0]`` is the baseline.
        sources: Per row, ``{label: source}`` (see `backend_runner`); rows without a label's source are not timed on it.
        labels: Backend labels to time.
        imgsz: Input size.
        batch: Input batch.
        threads: CPU threads; every usable core when None.
        device: Ultralytics device string (for CUDA labels).
        rounds: Timed rounds.
        warmup: Untimed rounds.
        work: Folder for exports made here.
    """
    from .measure import _error, default_threads

    threads = int(threads or default_threads())
    for label in labels:
        runners = {}
        for i, (row, source) in enumerate(zip(rows, sources, strict=True)):
            if label not in source:
                continue
            try:
                name = f"{row.get('name', i)}".replace("+", "_")
                runners[i] = backend_runner(label, source[label], imgsz, batch, threads, device, work, name)
            except Exception as e:
                row.setdefault("errors", {})[label] = _error(e)
        if not runners:
            continue
        start = _cpu_snapshot()
        stats = side_by_side(interleaved_times(runners, rounds, warmup), base=0)
        other = _other_load(start, _cpu_snapshot())
        for i, s in stats.items():
            row = rows[i]
            row.setdefault("latency_ms", {})[label] = s["median_ms"]
            detail = {k: s[k] for k in ("median_ms", "p10_ms", "p90_ms", "runs")}
            row.setdefault("latency_detail", {})[label] = {
                **detail,
                "threads": threads,
                "device": label.split("_")[-1],
                "timed": "side by side",
                "other_load": other,
            }
            if "speedup" in s:
                row.setdefault("speedup_detail", {})[label] = s["speedup"]
            row.get("errors", {}).pop(label, None)


def _cpu_snapshot() -> tuple[float, float, float] | None:
    """(wall s, busy CPU s of the whole machine, CPU s of this process) now; None where /proc/stat is missing."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = (sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0.0)) / tick  # minus idle and iowait
    own = os.times()
    return time.perf_counter(), busy, own.user + own.system


def _other_load(start: tuple | None, end: tuple | None) -> float | None:
    """Cores kept busy by *other* processes between two `_cpu_snapshot`s (machine busy time minus this process's)."""
    if start is None or end is None or end[0] <= start[0]:
        return None
    return round(max(0.0, (end[1] - start[1]) - (end[2] - start[2])) / (end[0] - start[0]), 2)


def timing_notes(rows: list[dict], labels: list[str], imgsz: int, threads: int | None) -> list[str]:
    """Report lines: how the rows were timed, and a warning when a speed-up range is wide or the machine was busy."""
    from .measure import default_threads

    timed = [b for b in labels if any(b in (r.get("latency_ms") or {}) for r in rows)]
    if not timed:
        return []
    rounds = max((r.get("latency_detail", {}).get(b, {}).get("runs", 0) for r in rows for b in timed), default=0)
    cores = default_threads()
    notes = [
        f"latency: {', '.join(timed)} at imgsz {imgsz}, {int(threads or cores)} thread(s), every row timed side by "
        f"side in {rounds} interleaved rounds (order reversed every other round); `x` is the median of the per-round "
        "speed-ups over the first row, with its 10-90 % range"
    ]
    wide = [
        f"{r.get('name')} {b} {d['p10']:.2f}-{d['p90']:.2f}x"
        for r in rows[1:]
        for b, d in (r.get("speedup_detail") or {}).items()
        if d["p90"] - d["p10"] > 2 * WIDE_RANGE * d["median"]
    ]
    loads = [d["other_load"] for r in rows for d in (r.get("latency_detail") or {}).values() if d.get("other_load")]
    load = max(loads, default=0.0)
    busy = load > BUSY_LOAD * max(1, cores - int(threads or cores))  # cores left over by the timing itself
    if wide or busy:
        notes.append(
            "WARNING: timings are noisy"
            + (f" (speed-up ranges wider than +-{WIDE_RANGE:.0%}: {', '.join(wide)})" if wide else "")
            + (f" (other processes kept {load:.1f} of {cores} cores busy while timing)" if busy else "")
            + "; re-measure on a quiet machine, or with threads=1, before relying on the speed-ups"
        )
    return notes
