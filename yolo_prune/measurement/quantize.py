"""INT8 as the last step: post-training quantization to any INT8 format of the Ultralytics exporter.

`export_int8` hands a checkpoint to ``YOLO.export(format=<format>, quantize=8, data=...)`` with calibration images from
the dataset's train split. Two formats have a CPU runtime here and are validated and timed beside the FP32 models:

* ``onnx``: ONNX Runtime static INT8 (``quantize_static``, Q/DQ nodes on every Conv/Gemm/MatMul, the detection head's
  decoding kept in float), the form most NPU toolchains import;
* ``openvino``: OpenVINO IR quantized by NNCF (``int8=True`` keeps meaning this one).

Every other INT8 format of the installed exporter (``engine``, ``litert``, ``rknn``, ``coreml``, ...) is exported and
reported with its file and size, not validated or timed here. `resolve_int8` turns an ``int8=`` value into a format
(one line listing the valid ones otherwise) and `check_int8_available` names the pip packages a format's toolchain
needs before any work starts. `measure_int8` turns an export into a report row.

Examples:
    >>> from yolo_prune.measurement.quantize import export_int8, measure_int8
    >>> export_int8("runs/prune/exp/weights/best.pt", "data.yaml", imgsz=640, out_dir="int8", format="onnx").name
    'best_int8.onnx'
    >>> row = measure_int8("best.pt", "data.yaml", imgsz=640, out_dir="int8", name="pruned", format="onnx")
    >>> row["name"], row["int8_format"], row["size_mb"]  # ('pruned+int8', 'onnx', 0.9)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ultralytics.utils import YAML

from ..config.int8 import (
    CPU_RUNTIMES,
    DEFAULT_INT8,
    TOOLCHAINS,  # re-exported: its old home
    check_int8_available,
    check_int8_request,
    check_qat_available,
    int8_formats,
    resolve_int8,
)
from .measure import _error, file_size_mb, new_row, openvino_size_mb

__all__ = [
    "CALIBRATION_IMAGES",
    "CPU_RUNTIMES",
    "DEFAULT_INT8",
    "TOOLCHAINS",
    "check_int8_available",
    "check_int8_request",
    "check_qat_available",
    "export_int8",
    "int8_formats",
    "int8_note",
    "int8_timing_source",
    "measure_int8",
    "resolve_int8",
    "validate_int8",
]

CALIBRATION_IMAGES = 300  # Ultralytics' recommended minimum for INT8 calibration, and NNCF's default subset size


def export_int8(
    model: Any,
    data: str,
    imgsz: int = 640,
    out_dir: str | Path | None = None,
    name: str | None = None,
    calibration_images: int | None = CALIBRATION_IMAGES,
    format: str = DEFAULT_INT8,
    device: str | None = "cpu",
    qat: bool = False,
) -> Path:
    """Export a model to an INT8 ``format`` with the Ultralytics exporter, calibrated on images from ``data``.

    Calibration uses the first ``calibration_images`` images (sorted by file name) of the dataset's **train** split,
    letterboxed to ``imgsz`` as for validation (Ultralytics' ``fraction`` with ``split=train``); the validation split
    stays unseen, so the INT8 model's mAP is measured on images it was not calibrated on. The model is static, batch 1.
    Nothing is written beside the input checkpoint: the result keeps the exporter's own name inside ``out_dir``
    (``<name>_int8.onnx``, ``<name>_int8_openvino_model``, ...).

    Args:
        model (str | Path | YOLO | nn.Module): Checkpoint path, YOLO object or module (e.g. a pruned model).
        data (str): Dataset yaml (or a built-in name such as ``shapes.yaml``).
        imgsz (int): Square input size of the exported model.
        out_dir (str | Path): Output folder (required).
        name (str, optional): Stem of the exported model; defaults to the checkpoint stem or ``model``.
        calibration_images (int, optional): At most this many train images calibrate the quantizer (300 by default:
            Ultralytics' recommendation and NNCF's default); None uses the whole train split.
        format (str): An INT8 format of `int8_formats` (``openvino``, ``onnx``, ...).
        device (str, optional): Export device (``engine`` needs a GPU; the others export on the CPU).
        qat (bool): ``model`` is a quantization-aware checkpoint (Ultralytics ``train(quantize=8)``): it carries its
            trained ranges, so the exporter writes its Q/DQ ONNX (``<name>_int8.onnx``) without calibration (``data``
            and ``calibration_images`` are not used); ``format`` must be ``onnx``.

    Returns:
        (Path): The exported file or model folder.

    Raises:
        ValueError: On an unknown format, a missing toolchain, ``calibration_images`` not an integer >= 2 or None, or
            ``qat`` with another format than ``onnx``.
    """
    from ..data.builtin import resolve_data
    from .measure import _export_copy

    format = resolve_int8(format) or DEFAULT_INT8
    check_int8_available(format, device)
    if qat:
        if format != "onnx":
            raise ValueError(f"a QAT model exports INT8 ONNX (Q/DQ from its ranges): format='onnx', not {format!r}")
        return _export_copy(model, out_dir, name, "_int8.onnx", format="onnx", imgsz=imgsz, batch=1, simplify=True)
    if calibration_images is not None and (
        isinstance(calibration_images, bool) or not isinstance(calibration_images, int) or calibration_images < 2
    ):
        raise ValueError(f"calibration_images={calibration_images!r} must be an integer >= 2 (or None: all)")
    options = {"simplify": True} if format == "onnx" else {}
    return _export_copy(
        model,
        out_dir,
        name,
        None,  # keep the exporter's name (<stem>_int8.onnx, <stem>_int8_openvino_model, ...)
        format=format,
        quantize=8,
        data=resolve_data(str(data)),
        split="train",
        fraction=1.0 if calibration_images is None else calibration_images,
        imgsz=imgsz,
        batch=1,
        export_device="cpu" if format != "engine" else (device or "0"),
        **options,
    )


def _task_of_export(path: Path) -> str:
    """The task recorded in an export's metadata (OpenVINO ``metadata.yaml`` or ONNX metadata), else ``detect``."""
    if path.is_dir() and (path / "metadata.yaml").is_file():
        return YAML.load(path / "metadata.yaml").get("task", "detect")
    if path.suffix == ".onnx":
        try:
            import onnx

            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            return props.get("task", "detect")
        except Exception:
            return "detect"
    return "detect"


def validate_int8(model_path: str | Path, data: str, imgsz: int = 640, **kwargs: Any) -> dict:
    """Validate an exported INT8 model (ONNX file or OpenVINO folder) with the Ultralytics validator, on the CPU.

    The task is read from the export's metadata and given to ``YOLO`` (otherwise it would guess it from the name). A
    static export is validated at batch 1, its own size.

    Args:
        model_path (str | Path): An ``.onnx`` file or OpenVINO model folder (e.g. from `export_int8`).
        data (str): Dataset yaml (or a built-in name).
        imgsz (int): Validation size; must be the export size.
        **kwargs (Any): Extra ``YOLO.val`` arguments (``project``, ``name``, ...).

    Returns:
        (dict): ``{"map50_95": float, "map50": float}`` (box metrics) plus the mask or pose mAP of a segment or pose
        model (`yolo_prune.measurement.measure.metrics_row`).
    """
    import torch
    from ultralytics import YOLO

    from ..data.builtin import resolve_data
    from .measure import metrics_row

    task = _task_of_export(Path(model_path))
    yolo = YOLO(str(model_path), task=task)
    args = {"plots": False, "verbose": False, "batch": 1, **kwargs}
    previous = torch.get_num_threads()
    try:
        metrics = yolo.val(data=resolve_data(str(data)), imgsz=imgsz, device="cpu", **args)
    finally:
        torch.set_num_threads(previous)  # the validator's select_device changes it process-wide
    return metrics_row(metrics, task)


def int8_timing_source(row: dict, labels: list[str]) -> dict[str, str]:
    """What `yolo_prune.measurement.side_by_side.time_rows` times for an INT8 row: its export on the labels of its
    runtime (``onnx_cpu`` for ``onnx``, ``openvino_cpu`` for ``openvino``); nothing for formats without one here."""
    backend = CPU_RUNTIMES.get(row.get("int8_format") or "")
    if not backend or not row.get("int8_path"):
        return {}
    return {b: row["int8_path"] for b in labels if b.startswith(backend) and b.endswith("cpu")}


def _export_size_mb(path: Path, format: str) -> float:
    """Size of an export's weights: the ``.bin`` of an OpenVINO folder, else the file, else the folder's files."""
    if format == "openvino":
        return openvino_size_mb(path)
    if path.is_file():
        return file_size_mb(path)
    return sum(file_size_mb(p) for p in path.rglob("*") if p.is_file())


def measure_int8(
    model: Any,
    data: str,
    imgsz: int = 640,
    out_dir: str | Path | None = None,
    name: str = "model",
    source_row: dict | None = None,
    runs: int = 50,
    warmup: int = 10,
    threads: int | None = None,
    calibration_images: int | None = CALIBRATION_IMAGES,
    format: str = DEFAULT_INT8,
    device: str | None = "cpu",
    qat: bool = False,
) -> dict:
    """Quantize a model to INT8 (`export_int8`) and measure it; return a report row named ``<name>+int8``.

    Formats with a CPU runtime here (``onnx``, ``openvino``) are validated with the Ultralytics validator and, with
    ``runs`` > 0, timed on their runtime; reports time them beside the FP32 rows instead (``runs=0`` and
    `int8_timing_source`). Other formats get the exported file and its size, and a note that they were not validated
    or timed here. Failures (export, validation, latency) are recorded in the row's ``errors`` under ``int8``, ``val``
    or the backend label, never raised. ``params`` and ``gflops`` are copied from ``source_row`` (quantization changes
    neither the parameter count nor the MACs); ``size_mb`` is the size of the INT8 weights.

    Args:
        model (str | Path | YOLO | nn.Module): The FP32 model to quantize.
        data (str): Dataset yaml: calibration (train split) and validation (val split).
        imgsz (int): Export, validation and latency size.
        out_dir (str | Path): Folder for the INT8 model and validation output.
        name (str): Name of the source row; the INT8 row is ``<name>+int8``.
        source_row (dict, optional): The FP32 model's row (for ``params``/``gflops``).
        runs (int): Timed latency runs on the format's runtime (0: leave timing to the caller).
        warmup (int): Untimed latency runs.
        threads (int, optional): Inference threads (every usable core when None).
        calibration_images (int, optional): See `export_int8`.
        format (str): INT8 format (see `resolve_int8`).
        device (str, optional): Export device (see `export_int8`).
        qat (bool): ``model`` is a quantization-aware checkpoint, exported without calibration (see `export_int8`).

    Returns:
        (dict): A row as in `yolo_prune.measurement.measure.new_row`, plus ``int8_of`` (the source row's name),
            ``int8_format``, ``int8_path``, ``imgsz``, ``batch`` (1) and, for OpenVINO, ``openvino_path``.

    Raises:
        ValueError: Without ``out_dir``, or on an unknown format.
    """
    from .side_by_side import time_rows

    if out_dir is None:
        raise ValueError("measure_int8 needs out_dir= (the INT8 model is written there)")
    format = resolve_int8(format) or DEFAULT_INT8
    source_row = source_row or {}
    row = new_row(f"{name}+int8", None, imgsz=imgsz, batch=1, device="cpu", int8_of=name, int8_format=format)
    row["params"], row["gflops"] = source_row.get("params"), source_row.get("gflops")
    out = Path(out_dir)
    try:
        exported = export_int8(model, data, imgsz, out, name, calibration_images, format, device, qat)
    except Exception as e:
        row["errors"]["int8"] = _error(e)
        return row
    row["path"] = row["int8_path"] = str(exported)
    if format == "openvino":
        row["openvino_path"] = str(exported)
    row["size_mb"] = _export_size_mb(exported, format)
    if format not in CPU_RUNTIMES:
        row["int8_note"] = f"{format}: exported, not validated or timed here (no {format} runtime on this machine)"
        return row
    try:
        val_dir = (out / "val").absolute()  # relative: Ultralytics would use runs/detect/<project>
        row.update(validate_int8(exported, data, imgsz, project=str(val_dir), name=row["name"], exist_ok=True))
    except Exception as e:
        row["errors"]["val"] = _error(e)
    if runs > 0:
        label = f"{CPU_RUNTIMES[format]}_cpu"
        time_rows([row], [int8_timing_source(row, [label])], [label], imgsz, 1, threads, "cpu", runs, warmup, out)
        row.pop("speedup_detail", None)  # timed alone: a speed-up over itself says nothing
    return row


def int8_note(format: str, qat_epochs: int | None = None) -> str:
    """The report line that says how the ``+int8`` (and ``+qat``) rows were made and measured."""
    how = {
        "onnx": "ONNX Runtime static INT8 (quantize_static, Q/DQ on Conv/Gemm/MatMul, head decoding in float)",
        "openvino": "OpenVINO INT8 (NNCF post-training quantization, head decoding in float)",
    }.get(format, f"{format} INT8")
    line = (
        f"+int8 rows: {how} through the Ultralytics exporter, calibrated on up to {CALIBRATION_IMAGES} train images; "
        + (
            "validated with the Ultralytics validator and timed beside the FP32 rows on the same runtime; "
            if format in CPU_RUNTIMES
            else f"exported only: no {format} runtime here, so neither validated nor timed; "
        )
        + "size_mb is the INT8 export; params and GFLOPs are those of the FP32 model"
    )
    if qat_epochs:
        line += (
            f"; final+qat: the final model trained {qat_epochs} more epoch(s) with ModelOpt fake quantization "
            "(Ultralytics quantize=8), exported as INT8 ONNX with the trained ranges (no post-training calibration)"
        )
    return line
