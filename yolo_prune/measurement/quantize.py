"""INT8 as the last step: OpenVINO post-training quantization through the Ultralytics exporter.

`export_int8` hands a checkpoint to ``YOLO.export(format="openvino", quantize=8, data=...)`` (the current spelling of
``int8=True``): Ultralytics converts the model to OpenVINO IR and NNCF quantizes it after training with calibration
images from the dataset, keeping the detection head's decoding in floating point. `measure_int8` turns the result into a
report row: mAP from the Ultralytics validator running the INT8 model, the size of its weights and its OpenVINO
latency. Both need the optional packages ``openvino`` and ``nncf`` (``pip install "yolo-prune[openvino]"``).

Examples:
    >>> from yolo_prune.measurement.quantize import export_int8, measure_int8
    >>> folder = export_int8("runs/prune/exp/weights/best.pt", "data.yaml", imgsz=640, out_dir="int8")
    >>> folder.name
    'best_int8_openvino_model'
    >>> row = measure_int8("best.pt", "data.yaml", imgsz=640, out_dir="int8", name="pruned")
    >>> row["name"], row["size_mb"], row["latency_ms"]  # ('pruned+int8', 0.9, {'openvino_cpu': 11.2})
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from ultralytics.utils import YAML

from .measure import _error, measure_openvino_latency, new_row, openvino_size_mb

__all__ = ["CALIBRATION_IMAGES", "INT8_MISSING", "check_int8_available", "export_int8", "measure_int8", "validate_int8"]

CALIBRATION_IMAGES = 300  # Ultralytics' recommended minimum for INT8 calibration, and NNCF's default subset size
INT8_MISSING = "int8=True needs OpenVINO and NNCF: pip install openvino nncf"


def check_int8_available() -> None:
    """Raise a one-line ``ValueError`` naming the pip packages when OpenVINO or NNCF is not installed.

    Raises:
        ValueError: If ``openvino`` or ``nncf`` cannot be imported.
    """
    missing = [m for m in ("openvino", "nncf") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"int8=True needs {' and '.join(missing)}: pip install {' '.join(missing)}")


def export_int8(
    model: Any,
    data: str,
    imgsz: int = 640,
    out_dir: str | Path | None = None,
    name: str | None = None,
    calibration_images: int | None = CALIBRATION_IMAGES,
) -> Path:
    """Export a detector to an INT8 OpenVINO model, quantized by NNCF with calibration images from ``data``.

    Calibration uses the first ``calibration_images`` images (sorted by file name) of the dataset's **train** split,
    letterboxed to ``imgsz`` as for validation (Ultralytics' ``fraction`` with ``split=train``); the validation split
    stays unseen, so the INT8 model's mAP is measured on images it was not calibrated on. The model is static, batch 1.
    Nothing is written beside the input checkpoint.

    Args:
        model (str | Path | YOLO | nn.Module): Checkpoint path, YOLO object or module (e.g. a pruned model).
        data (str): Dataset yaml (or a built-in name such as ``shapes.yaml``).
        imgsz (int): Square input size of the exported model.
        out_dir (str | Path): Output folder (required).
        name (str, optional): Stem of the model folder; defaults to the checkpoint stem or ``model``.
        calibration_images (int, optional): At most this many train images calibrate the quantizer (300 by default:
            Ultralytics' recommendation and NNCF's default); None uses the whole train split.

    Returns:
        (Path): The model folder ``out_dir/<name>_int8_openvino_model`` (``.xml``, ``.bin``, ``metadata.yaml``).

    Raises:
        ValueError: If OpenVINO or NNCF is missing, or ``calibration_images`` is not an integer >= 2 or None.
    """
    from ..data.shapes import resolve_data
    from .measure import _export_copy

    check_int8_available()
    if calibration_images is not None and (
        isinstance(calibration_images, bool) or not isinstance(calibration_images, int) or calibration_images < 2
    ):
        raise ValueError(f"calibration_images={calibration_images!r} must be an integer >= 2 (or None: all)")
    return _export_copy(
        model,
        out_dir,
        name,
        "_int8_openvino_model",
        format="openvino",
        quantize=8,
        data=resolve_data(str(data)),
        split="train",
        fraction=1.0 if calibration_images is None else calibration_images,
        imgsz=imgsz,
        batch=1,
    )


def validate_int8(model_dir: str | Path, data: str, imgsz: int = 640, **kwargs: Any) -> dict:
    """Validate an exported OpenVINO model with the Ultralytics validator (on the CPU).

    The task is read from the model's ``metadata.yaml`` and given to ``YOLO`` (otherwise it would guess it from the
    folder name). A static export is validated at batch 1, its own size.

    Args:
        model_dir (str | Path): OpenVINO model folder (e.g. from `export_int8`).
        data (str): Dataset yaml (or a built-in name).
        imgsz (int): Validation size; must be the export size.
        **kwargs (Any): Extra ``YOLO.val`` arguments (``project``, ``name``, ...).

    Returns:
        (dict): ``{"map50_95": float, "map50": float}`` (box metrics) plus the mask or pose mAP of a segment or pose
        model (`yolo_prune.measurement.measure.metrics_row`).
    """
    import torch
    from ultralytics import YOLO

    from ..data.shapes import resolve_data

    meta = YAML.load(Path(model_dir) / "metadata.yaml") if (Path(model_dir) / "metadata.yaml").is_file() else {}
    yolo = YOLO(str(model_dir), task=meta.get("task", "detect"))
    args = {"plots": False, "verbose": False, "batch": 1, **kwargs}
    previous = torch.get_num_threads()
    try:
        metrics = yolo.val(data=resolve_data(str(data)), imgsz=imgsz, device="cpu", **args)
    finally:
        torch.set_num_threads(previous)  # the validator's select_device changes it process-wide
    from .measure import metrics_row

    return metrics_row(metrics, meta.get("task", "detect"))


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
) -> dict:
    """Quantize a model to INT8 (`export_int8`), validate and time it; return a report row named ``<name>+int8``.

    Failures (export, validation, latency) are recorded in the row's ``errors`` under ``int8``, ``val`` or
    ``openvino_cpu``, never raised. ``params`` and ``gflops`` are copied from ``source_row`` (quantization changes
    neither the parameter count nor the MACs); ``size_mb`` is the size of the INT8 weights (``.bin``).

    Args:
        model (str | Path | YOLO | nn.Module): The FP32 model to quantize.
        data (str): Dataset yaml: calibration (train split) and validation (val split).
        imgsz (int): Export, validation and latency size.
        out_dir (str | Path): Folder for the INT8 model (``<name>_int8_openvino_model``) and validation output.
        name (str): Name of the source row; the INT8 row is ``<name>+int8``.
        source_row (dict, optional): The FP32 model's row (for ``params``/``gflops``).
        runs (int): Timed latency runs.
        warmup (int): Untimed latency runs.
        threads (int, optional): OpenVINO inference threads (every usable core when None).
        calibration_images (int, optional): See `export_int8`.

    Returns:
        (dict): A row as in `yolo_prune.measurement.measure.new_row`, plus ``int8_of`` (the source row's name),
            ``imgsz``, ``batch`` (1) and ``openvino_path``.

    Raises:
        ValueError: Without ``out_dir``.
    """
    if out_dir is None:
        raise ValueError("measure_int8 needs out_dir= (the INT8 model is written there)")
    source_row = source_row or {}
    row = new_row(f"{name}+int8", None, imgsz=imgsz, batch=1, device="cpu", int8_of=name)
    row["params"], row["gflops"] = source_row.get("params"), source_row.get("gflops")
    out = Path(out_dir)
    try:
        folder = export_int8(model, data, imgsz, out, name, calibration_images)
    except Exception as e:
        row["errors"]["int8"] = _error(e)
        return row
    row["path"] = row["openvino_path"] = str(folder)
    row["size_mb"] = openvino_size_mb(folder)
    try:
        val_dir = (out / "val").absolute()  # relative: Ultralytics would use runs/detect/<project>
        row.update(validate_int8(folder, data, imgsz, project=str(val_dir), name=row["name"], exist_ok=True))
    except Exception as e:
        row["errors"]["val"] = _error(e)
    try:
        stats = measure_openvino_latency(folder, imgsz, 1, warmup, runs, threads)
        row["latency_ms"]["openvino_cpu"] = stats["median_ms"]
        row["latency_detail"]["openvino_cpu"] = stats
    except Exception as e:
        row["errors"]["openvino_cpu"] = _error(e)
    return row
