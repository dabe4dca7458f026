"""Accuracy-against-cost reports shared by `yolo-prune prune` and `yolo-prune bench`.

A report is a list of plain-dict rows (see `yolo_prune.measurement.measure.new_row`); the first row is the baseline.
Every row is compared with it: `speedup` (baseline latency / latency, per backend), `macs_ratio` (baseline GFLOPs /
GFLOPs) and `efficiency` (`speedup / macs_ratio`: how much of the MACs cut became real speed).

Examples:
    >>> from yolo_prune.measurement.report import format_table, write_report
    >>> files = write_report(rows, "runs/bench/exp", title="yolo-prune bench")
    >>> print(format_table(rows))
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import tempfile
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "TASK_METRICS",
    "backends_in",
    "compare_to_baseline",
    "format_table",
    "machine_info",
    "save_figure",
    "task_metrics_in",
    "write_atomic",
    "write_report",
]

_PACKAGES = ("torch", "ultralytics", "torch-pruning", "onnxruntime", "onnx", "onnxslim", "openvino", "nncf")


def _num(x: Any) -> float | None:
    """Return `x` as a finite float, else None."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _ratio(a: Any, b: Any) -> float | None:
    """Return a / b for two positive finite numbers, else None."""
    a, b = _num(a), _num(b)
    return a / b if a is not None and b else None


def backends_in(rows: list[dict]) -> list[str]:
    """Return latency backends found in the rows, in first-seen order."""
    seen: list[str] = []
    for row in rows:
        seen += [b for b in (row.get("latency_ms") or {}) if b not in seen]
    return seen


def compare_to_baseline(rows: list[dict]) -> list[dict]:
    """Compare every row with the first one.

    Args:
        rows (list[dict]): Report rows; `rows[0]` is the baseline.

    Returns:
        (list[dict]): One dict per row: `macs_ratio` (float | None), `speedup` and `efficiency` ({backend: float}).
    """
    if not rows:
        return []
    base = rows[0]
    base_lat = base.get("latency_ms") or {}
    out = []
    for row in rows:
        macs = _ratio(base.get("gflops"), row.get("gflops"))
        speedup = {b: _ratio(base_lat.get(b), t) for b, t in (row.get("latency_ms") or {}).items()}
        # timed side by side: the median of the per-round speed-ups (yolo_prune.measurement.side_by_side)
        speedup.update({b: d["median"] for b, d in (row.get("speedup_detail") or {}).items() if b in speedup})
        speedup = {b: s for b, s in speedup.items() if s is not None}
        efficiency = {b: s / macs for b, s in speedup.items() if macs}
        out.append({"macs_ratio": macs, "speedup": speedup, "efficiency": efficiency})
    return out


def _cpu_name() -> str:
    """Return the CPU model name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(command: str | None = None) -> dict:
    """Describe the machine and software the numbers were taken on.

    Args:
        command (str, optional): Command line that produced the report.

    Returns:
        (dict): CPU, cores, GPU, Python, platform, package versions, date and command.
    """
    versions = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:  # torch missing or a broken driver must not stop a report
        pass
    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "gpu": gpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
    }


def _fmt(x: Any, spec: str, suffix: str = "") -> str:
    """Format a number, or `-` when missing."""
    f = _num(x)
    return "-" if f is None else f"{f:{spec}}{suffix}"


# Task metrics next to the box mAP (`map50_95`/`map50`): report key -> column title. A column appears only when a
# row has the key (segment rows have the mask mAP, pose rows the keypoint mAP; see yolo_prune.rules.tasks.TASKS).
TASK_METRICS = {
    "map50_95_mask": "mask mAP50-95",
    "map50_mask": "mask mAP50",
    "map50_95_pose": "pose mAP50-95",
    "map50_pose": "pose mAP50",
}


def task_metrics_in(rows: list[dict]) -> list[str]:
    """Return the task metric keys (`TASK_METRICS`) that some row has, in the table order."""
    return [k for k in TASK_METRICS if any(row.get(k) is not None for row in rows)]


def _table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Return header and cells of the comparison table."""
    backends = backends_in(rows)
    extra = task_metrics_in(rows)
    header = [
        "model",
        "params(M)",
        "GFLOPs",
        "MACs x",
        "size(MB)",
        "mAP50-95",
        "mAP50",
        *(TASK_METRICS[k] for k in extra),
    ]
    for b in backends:
        header += [f"{b} ms", f"{b} x", f"{b} eff"]
    cells = []
    for row, cmp in zip(rows, compare_to_baseline(rows), strict=True):
        params = _num(row.get("params"))
        line = [
            str(row.get("name", "?")),
            _fmt(params / 1e6 if params is not None else None, ".3f"),
            _fmt(row.get("gflops"), ".3g"),
            _fmt(cmp["macs_ratio"], ".2f", "x"),
            _fmt(row.get("size_mb"), ".2f"),
            _fmt(row.get("map50_95"), ".4f"),
            _fmt(row.get("map50"), ".4f"),
            *(_fmt(row.get(k), ".4f") for k in extra),
        ]
        lat = row.get("latency_ms") or {}
        spread = row.get("speedup_detail") or {}
        for b in backends:
            x = _fmt(cmp["speedup"].get(b), ".2f", "x")
            if b in spread and row is not rows[0]:
                x += f" ({spread[b]['p10']:.2f}-{spread[b]['p90']:.2f})"
            line += [_fmt(lat.get(b), ".2f"), x, _fmt(cmp["efficiency"].get(b), ".2f")]
        cells.append(line)
    return header, cells


def _error_lines(rows: list[dict]) -> list[str]:
    """Return one `name [stage]: message` line per recorded error."""
    return [f"{row.get('name', '?')} [{k}]: {v}" for row in rows for k, v in (row.get("errors") or {}).items()]


def format_table(rows: list[dict]) -> str:
    """Return the comparison table as aligned plain text, followed by any errors.

    Columns: model, params, GFLOPs, MACs ratio vs the first row, size, box mAP50-95, box mAP50, the task's mAP
    columns when rows have them (mask or pose mAP50-95 and mAP50, `TASK_METRICS`) and, per backend, median
    latency, speed-up vs the first row and efficiency (`speedup / macs_ratio`).

    Args:
        rows (list[dict]): Report rows; `rows[0]` is the baseline.

    Returns:
        (str): The table.
    """
    header, cells = _table(rows)
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in [header, *cells]
    ]
    errors = _error_lines(rows)
    if errors:
        lines += ["", "errors:", *(f"  {e}" for e in errors)]
    return "\n".join(lines)


def _markdown(rows: list[dict], title: str, machine: dict, notes: list[str], pareto: str | None) -> str:
    """Return the markdown report."""
    header, cells = _table(rows)
    md = [f"# {title}", ""]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    md += [
        f"- date: {machine['date']}",
        f"- CPU: {machine['cpu']} ({machine['cores']} cores, {machine['usable_cores']} usable)",
        f"- GPU: {machine['gpu'] or 'none'}",
        f"- software: Python {machine['python']}, {versions}",
    ]
    if machine.get("command"):
        md.append(f"- command: `{machine['command']}`")
    md += ["", "| " + " | ".join(header) + " |", "|" + "|".join([":---", *["---:"] * (len(header) - 1)]) + "|"]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in cells]
    md += ["", "`MACs x`, `x`: baseline (first row) / this row; `eff` = speed-up / MACs ratio. Latency: median ms."]
    errors = _error_lines(rows)
    if errors:
        md += ["", "## Errors", "", *(f"- {e}" for e in errors)]
    if notes:
        md += ["", "## Notes", "", *(f"- {n}" for n in notes)]
    if pareto:
        md += ["", f"![mAP50-95 against measured speed-up]({pareto})"]
    return "\n".join(md) + "\n"


def _csv_rows(rows: list[dict]) -> tuple[list[str], list[dict]]:
    """Flatten rows into CSV columns."""
    backends = backends_in(rows)
    extra = task_metrics_in(rows)
    fields = ["name", "path", "params", "gflops", "macs_ratio", "size_mb", "map50_95", "map50", *extra]
    for b in backends:
        fields += [f"{b}_ms", f"{b}_p10_ms", f"{b}_p90_ms", f"{b}_threads", f"{b}_speedup"]
        fields += [f"{b}_speedup_p10", f"{b}_speedup_p90", f"{b}_efficiency"]
    fields.append("errors")
    flat = []
    for row, cmp in zip(rows, compare_to_baseline(rows), strict=True):
        d = {k: row.get(k) for k in ("name", "path", "params", "gflops", "size_mb", "map50_95", "map50", *extra)}
        d["macs_ratio"] = cmp["macs_ratio"]
        for b in backends:
            detail = (row.get("latency_detail") or {}).get(b) or {}
            d[f"{b}_ms"] = (row.get("latency_ms") or {}).get(b)
            d[f"{b}_p10_ms"], d[f"{b}_p90_ms"] = detail.get("p10_ms"), detail.get("p90_ms")
            d[f"{b}_threads"] = detail.get("threads")
            d[f"{b}_speedup"], d[f"{b}_efficiency"] = cmp["speedup"].get(b), cmp["efficiency"].get(b)
            spread = (row.get("speedup_detail") or {}).get(b) or {}
            d[f"{b}_speedup_p10"], d[f"{b}_speedup_p90"] = spread.get("p10"), spread.get("p90")
        d["errors"] = "; ".join(f"{k}: {v}" for k, v in (row.get("errors") or {}).items())
        flat.append(d)
    return fields, flat


def _plot_pareto(rows: list[dict], path: Path) -> str | None:
    """Plot mAP50-95 against the measured speed-up over the first row (with its 10-90 % range as error bars when the
    rows were timed side by side) on the first backend that has both; return a note when skipped."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    comparisons = compare_to_baseline(rows)
    for backend in backends_in(rows):
        points = [
            (cmp["speedup"][backend], row["map50_95"], str(row.get("name", "?")), (row.get("speedup_detail") or {}))
            for row, cmp in zip(rows, comparisons, strict=True)
            if _num(cmp["speedup"].get(backend)) is not None and _num(row.get("map50_95")) is not None
        ]
        if points:
            break
    else:
        return "pareto.png skipped: no row has both mAP50-95 and a latency (pass data= to measure mAP)"
    fig = Figure(figsize=(6, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for x, y, name, spread in points:
        d = spread.get(backend)
        err = [[x - d["p10"]], [d["p90"] - x]] if d else None
        ax.errorbar([x], [y], xerr=err, fmt="o", color="tab:blue", capsize=3, zorder=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel(f"measured speed-up over {rows[0].get('name', 'the first row')} ({backend}, x)")
    ax.set_ylabel("mAP50-95")
    ax.set_title("accuracy against measured speed-up")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    return None


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    A reader (or a crash half-way) never sees a partial file: ``path`` holds the old content or the new one.

    Args:
        path (str | Path): Destination file; its folder is created if needed.
        data (str | bytes): Text (written as UTF-8) or bytes.

    Returns:
        (Path): ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename, so a crash cannot leave an empty file under `path`
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save a matplotlib figure as PNG to ``path`` atomically (see `write_atomic`)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return write_atomic(path, buffer.getvalue())


def _clean(x: Any) -> Any:
    """Make a row JSON-safe: non-finite floats become None, paths and other objects strings."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if x is None or isinstance(x, (str, int, bool)):
        return x
    return str(x)


def write_report(
    rows: list[dict],
    out_dir: str | Path,
    title: str = "yolo-prune report",
    command: str | None = None,
    notes: list[str] | None = None,
) -> dict[str, Path]:
    """Write `report.json`, `report.md`, `results.csv` and (when any row has mAP and latency) `pareto.png`.

    Args:
        rows (list[dict]): Report rows; `rows[0]` is the baseline. Extra keys are kept in `report.json`.
        out_dir (str | Path): Folder to write into (created if needed).
        title (str): Report title.
        command (str, optional): Command line to record.
        notes (list[str], optional): Extra notes for the markdown and JSON.

    Returns:
        (dict[str, Path]): Written files by kind: `json`, `md`, `csv` and, unless skipped, `pareto`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    notes = list(notes or [])
    machine = machine_info(command)
    files = {"json": out / "report.json", "md": out / "report.md", "csv": out / "results.csv"}

    skipped = _plot_pareto(rows, out / "pareto.png")
    if skipped:
        notes.append(skipped)
    else:
        files["pareto"] = out / "pareto.png"

    comparisons = compare_to_baseline(rows)
    report = {
        "title": title,
        "machine": machine,
        "baseline": rows[0].get("name") if rows else None,
        "rows": [{**row, "vs_baseline": cmp} for row, cmp in zip(rows, comparisons, strict=True)],
        "notes": notes,
    }
    write_atomic(files["json"], json.dumps(_clean(report), indent=2))
    write_atomic(files["md"], _markdown(rows, title, machine, notes, "pareto.png" if "pareto" in files else None))
    fields, flat = _csv_rows(rows)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(_clean(flat))
    write_atomic(files["csv"], text.getvalue())
    return files
