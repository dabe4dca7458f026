"""`yolo-prune bench`: measure several checkpoints side by side and write a report.

Examples:
    >>> from yolo_prune.measurement.bench import run_bench
    >>> run_dir = run_bench(["yolov8n.pt", "pruned.pt"], data="coco8.yaml", imgsz=320, runs=20)
    >>> sorted(p.name for p in run_dir.iterdir())  # onnx/, pareto.png, report.json, report.md, results.csv, val/
    >>> run_bench(["best.pt", "pruned.pt"], data="data.yaml", int8="onnx")  # + rows best+int8, pruned+int8 (ORT)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..config.checks import check_int, did_you_mean, is_none, resolve_device
from ..integration.args import rename_args, renamed_kwargs
from .measure import measure_model, new_row, resolve_backends
from .report import format_table, write_report
from .side_by_side import time_rows, timing_notes

__all__ = ["BENCH_DEFAULTS", "parse_bench_args", "run_bench"]

BENCH_DEFAULTS: dict[str, Any] = {
    "models": None,  # required: list of checkpoints, or "a.pt,b.pt"; the first is the baseline
    "data": None,  # dataset yaml for mAP; no mAP without it
    "imgsz": 640,
    "batch": 16,  # validation batch, as in Ultralytics (it used to be the latency batch: now latency_batch)
    "latency_batch": 1,  # input batch of the latency measurements
    "device": None,  # None = as Ultralytics: the first GPU when there is one (adds CUDA backends), else the CPU
    "backends": ("torch", "onnx"),  # or "torch,onnx"; also openvino, torch_cpu, torch_cuda, onnx_cpu, onnx_cuda
    "int8": False,  # also quantize each model to INT8 (onnx, openvino = True, ...; needs data=): a <name>+int8 row
    "threads": None,  # CPU threads for latency; None = every usable core
    "project": "runs/bench",
    "name": "exp",
    "runs": 50,
    "warmup": 10,
}

RENAMED = {"val_batch": "batch"}  # old name -> new name; the old one still works with a deprecation warning

_INT_KEYS = {"imgsz": 32, "batch": 1, "latency_batch": 1, "runs": 1, "warmup": 0, "threads": 1}  # key -> minimum


def _split(value: Iterable[str] | str | None) -> list[str]:
    """Split a comma-separated string (or pass a list through) into stripped non-empty items."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return [v.strip() for v in items if v.strip()]


def parse_bench_args(overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge `key=value` overrides (strings from the CLI, or typed values) with `BENCH_DEFAULTS`.

    Args:
        overrides (dict[str, Any]): Arguments given by the user.

    Returns:
        (dict[str, Any]): Keyword arguments for `run_bench`.

    Raises:
        ValueError: On an unknown key (with the closest valid one), a non-integer number, no models, an unknown or
            uninstalled backend, ``int8=True`` without ``data`` or without OpenVINO/NNCF, or an old argument name
            (``val_batch``) given together with its new one (``batch``).
    """
    from .measure import resolve_backends

    overrides = rename_args(overrides, RENAMED, "bench")
    unknown = [k for k in overrides if k not in BENCH_DEFAULTS]
    if unknown:
        hints = []
        for k in unknown:
            hints.append(f"'{k}'{did_you_mean(k, BENCH_DEFAULTS)}")
        raise ValueError(f"unknown bench argument(s) {', '.join(hints)}; valid: {', '.join(BENCH_DEFAULTS)}")
    args = {**BENCH_DEFAULTS, **overrides}
    for k in ("data", "threads"):
        if is_none(args[k]):
            args[k] = None
    for k, minimum in _INT_KEYS.items():
        if args[k] is not None:
            args[k] = check_int(args[k], k, minimum)
    args["models"] = _split(args["models"])
    args["backends"] = tuple(_split(args["backends"]))
    args["device"] = resolve_device(args["device"])
    if not args["models"]:
        raise ValueError("bench needs models=a.pt,b.pt (the first one is the baseline)")
    from ..config.int8 import check_int8_request

    int8, backends = check_int8_request(args["int8"], args["backends"], args["device"])
    if int8 and args["data"] is None:
        raise ValueError(f"int8={int8} needs data=... (calibration images from its train split, mAP from its val)")
    args["int8"], args["backends"] = int8, tuple(backends)
    labels, errors = resolve_backends(args["backends"], args["device"])
    if errors or not labels:
        raise ValueError(next(iter(errors.values()), "backends= must name a backend (torch, onnx, openvino)"))
    return args


def _row_names(models: list[str]) -> list[str]:
    """Return unique, file-name-safe labels: the file stem, prefixed by its folder (then an index) when shared."""
    stems = [Path(m).stem or "model" for m in models]
    names = [f"{Path(m).parent.name}_{s}" if stems.count(s) > 1 else s for m, s in zip(models, stems, strict=True)]
    names = [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]
    return ["".join(c if c.isalnum() or c in "-_." else "_" for c in n) for n in names]


@renamed_kwargs(**RENAMED)
def run_bench(
    models: list[str] | str,
    data: str | None = None,
    imgsz: int = 640,
    batch: int = 16,
    device: str | None = None,
    backends: Iterable[str] | str = ("torch", "onnx"),
    project: str | Path = "runs/bench",
    name: str = "exp",
    runs: int = 50,
    warmup: int = 10,
    latency_batch: int = 1,
    threads: int | None = None,
    command: str | None = None,
    int8: bool | str = False,
) -> Path:
    """Measure each model, write the report into a new run folder and log the table.

    A model that fails to load, or a backend that fails, becomes an error entry in its row; the others go on. Inputs
    are only read: ONNX exports and validation output go into the run folder.

    Args:
        models (list[str] | str): Checkpoints (or one comma-separated string); the first is the baseline.
        data (str, optional): Dataset yaml for mAP.
        imgsz (int): Image size for GFLOPs, latency and validation.
        batch (int): Validation batch size, as Ultralytics' ``batch`` (before this name meant the latency batch; the
            old ``val_batch`` still works, with a deprecation warning).
        device (str, optional): Ultralytics device string; a GPU adds CUDA backends. None: the first GPU when there
            is one, else the CPU (as Ultralytics).
        backends (Iterable[str] | str): `torch`, `onnx` or explicit labels (see
            `yolo_prune.measurement.measure.resolve_backends`).
        project (str | Path): Parent folder of runs.
        name (str): Run name; incremented (`exp`, `exp-2`, ...) so no run is overwritten.
        runs (int): Timed runs per backend.
        warmup (int): Untimed runs per backend.
        latency_batch (int): Input batch of the latency measurements.
        threads (int, optional): CPU threads for latency; every usable core when None.
        command (str, optional): Command line to record in the report.
        int8 (bool | str): Also quantize each model to INT8 (`yolo_prune.measurement.quantize.measure_int8`,
            calibrated on train images of ``data``): ``onnx`` (ONNX Runtime Q/DQ), ``openvino`` (NNCF; also True) or
            another INT8 format of the exporter, and add its row ``<name>+int8`` after the model's own row, timed
            beside the FP32 rows on the format's runtime (added to ``backends``); a failure is recorded in that row's
            ``errors``.

    Returns:
        (Path): The run folder.
    """
    from ultralytics.utils import LOGGER, colorstr
    from ultralytics.utils.files import increment_path

    prefix = colorstr("bench: ")
    from ..config.checks import check_output_folder
    from ..config.int8 import check_int8_request

    device = resolve_device(device)
    models = _split(models)
    int8, backends = check_int8_request(int8, _split(backends), device)
    check_output_folder(project)
    run_dir = increment_path(Path(project) / name, mkdir=True)
    LOGGER.info(f"{prefix}batch={batch} (validation), latency_batch={latency_batch}")
    labels, errors = resolve_backends(backends, device)
    rows, sources = [], []  # sources: per row, what each backend times (see side_by_side.time_rows)
    for i, (model, label) in enumerate(zip(models, _row_names(models), strict=True), 1):
        LOGGER.info(f"{prefix}({i}/{len(models)}) {model}")
        try:
            row = measure_model(
                model,
                data=data,
                imgsz=imgsz,
                batch=latency_batch,
                device=device,
                backends=[],  # timed below, every model beside the others
                runs=runs,
                warmup=warmup,
                out_dir=run_dir,
                name=label,
                val_batch=batch,
                threads=threads,
            )
        except Exception as e:  # measure_model records its own failures; this is a last resort
            row = new_row(label, model, errors={"bench": f"{type(e).__name__}: {e}"})
        rows.append(row)
        row["errors"].update(errors)
        sources.append({} if {"load", "bench"} & set(row["errors"]) else dict.fromkeys(labels, model))
        if int8 and not {"load", "bench"} & set(row["errors"]):
            from .quantize import int8_timing_source, measure_int8

            LOGGER.info(f"{prefix}({i}/{len(models)}) {model}: INT8")
            int8_row = measure_int8(
                model, data, imgsz, run_dir / "int8", label, row, runs=0, format=int8, device=device
            )
            rows.append(int8_row)
            sources.append(int8_timing_source(int8_row, labels))  # timed below, beside the FP32 rows
    LOGGER.info(f"{prefix}timing {len(rows)} models side by side on {', '.join(labels)} ({runs} interleaved rounds)")
    time_rows(rows, sources, labels, imgsz, latency_batch, threads, device, runs, warmup, run_dir)
    notes = timing_notes(rows, labels, imgsz, threads)
    if int8:
        from .quantize import int8_note

        notes.append(int8_note(int8))
    files = write_report(rows, run_dir, title="yolo-prune bench", command=command, notes=notes)
    LOGGER.info(f"{prefix}results (first row is the baseline):\n{format_table(rows)}")
    LOGGER.info(f"{prefix}report written to {colorstr('bold', run_dir)}: {', '.join(p.name for p in files.values())}")
    return run_dir
