"""Measure what a (pruned) YOLO model costs and how accurate it is.

Everything here works on stock Ultralytics checkpoints and modules of any width: parameters, GFLOPs (Ultralytics/THOP
convention, 2 x MACs), checkpoint size, eager PyTorch latency, ONNX and OpenVINO exports through the Ultralytics
exporter, ONNX Runtime and OpenVINO latency (OpenVINO is optional: ``pip install openvino``) and mAP from the
Ultralytics validator. `measure_model` combines them into one report row (a plain dict, see `new_row`) where a failing
stage or backend is recorded under `errors` instead of being raised.

Examples:
    >>> from yolo_prune.measurement.measure import measure_model
    >>> row = measure_model("best.pt", data="data.yaml", imgsz=320, out_dir="runs/bench/exp")
    >>> row["latency_ms"]  # {'torch_cpu': 12.3, 'onnx_cpu': 8.1}
    >>> measure_model("best.pt", backends="torch,onnx,openvino")["latency_ms"]  # adds 'openvino_cpu'

Over 400 lines: every report row's measurements (params, GFLOPs, file size, validation, exports and the latency
runners of three backends) share the export and device helpers here; the latency runners are the next candidate to
move into a module of their own.
"""

from __future__ import annotations

import io
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config.checks import ACCEPTED_BACKENDS, OPENVINO_MISSING, check_backend_names
from ..integration.checkpoint import load_yolo  # the package's one checkpoint reader, re-exported for old imports

__all__ = [
    "ACCEPTED_BACKENDS",
    "OPENVINO_MISSING",
    "BackendUnavailableError",
    "checkpoint_size_mb",
    "count_gflops",
    "count_params",
    "default_threads",
    "export_onnx",
    "export_openvino",
    "file_size_mb",
    "interleaved_times",
    "load_yolo",
    "measure_model",
    "measure_onnx_latency",
    "measure_openvino_latency",
    "measure_torch_latency",
    "metrics_row",
    "new_row",
    "onnx_runner",
    "openvino_runner",
    "openvino_size_mb",
    "require_onnxruntime",
    "require_openvino",
    "resolve_backends",
    "time_runs",
    "torch_runner",
    "validate",
]


class BackendUnavailableError(RuntimeError):
    """Raised when a latency backend cannot run here (package missing, no GPU provider)."""


def _unwrap(model: Any) -> nn.Module:
    """Return the `nn.Module` inside a YOLO object (or the module itself)."""
    from ultralytics.engine.model import Model

    if isinstance(model, Model):  # YOLO objects are nn.Modules too: unwrap them first
        model = model.model
    if isinstance(model, nn.Module):
        return model
    raise TypeError(f"expected an nn.Module or an Ultralytics YOLO object, got {type(model).__name__}")


def _save_module(model: nn.Module, path: Path) -> Path:
    """Write `model` as an Ultralytics-loadable checkpoint (FP32, so exports match the in-memory module)."""
    module = deepcopy(_unwrap(model)).float().cpu()
    torch.save({"model": module, "train_args": dict(getattr(module, "args", {}) or {})}, path)
    return path


def count_params(model: nn.Module) -> int:
    """Return the number of parameters of a model.

    Args:
        model (nn.Module | YOLO): The model.

    Returns:
        (int): Total parameter count.
    """
    return int(sum(p.numel() for p in _unwrap(model).parameters()))


def count_gflops(model: nn.Module, imgsz: int = 640) -> float:
    """Return GFLOPs at `imgsz` with `ultralytics.utils.torch_utils.get_flops` semantics (2 x MACs).

    Works on a deep copy (THOP adds hooks and buffers), so the given model is never modified, and on any channel
    widths since it profiles a real forward pass.

    Args:
        model (nn.Module | YOLO): The model, as given (not fused).
        imgsz (int): Square input size.

    Returns:
        (float): GFLOPs for one image.

    Raises:
        RuntimeError: If the profiler fails (Ultralytics reports 0.0 in that case).
    """
    from ultralytics.utils.torch_utils import get_flops

    module = deepcopy(_unwrap(model)).float().eval()
    gflops = float(get_flops(module, imgsz=imgsz))
    if not gflops > 0:
        raise RuntimeError("FLOPs profiling failed (is ultralytics-thop installed and does the model run?)")
    return gflops


def file_size_mb(path: str | Path) -> float:
    """Return the size of a file in MB (10**6 bytes, like the Ultralytics exporter logs)."""
    return Path(path).stat().st_size / 1e6


def checkpoint_size_mb(model: nn.Module) -> float:
    """Return the size in MB of `model` saved as `YOLO.save` would (FP16), without writing a file."""
    buf = io.BytesIO()
    torch.save({"model": deepcopy(_unwrap(model)).half()}, buf)
    return buf.getbuffer().nbytes / 1e6


def _input_channels(module: nn.Module) -> int:
    """Return the number of input channels of a model."""
    yaml = getattr(module, "yaml", None)
    if isinstance(yaml, dict) and "channels" in yaml:
        return int(yaml["channels"])
    first = next((p for p in module.parameters() if p.ndim == 4), None)
    return int(first.shape[1]) if first is not None else 3


def default_threads() -> int:
    """Return the CPU threads latency is measured with by default: every core this process may use.

    Explicit, because the ambient value depends on import order (importing ultralytics before torch sets
    `OMP_NUM_THREADS=1`) and Ultralytics' `select_device` resets it to `cpu_count - 1`.
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _stats(times_ms: list[float], threads: int, device: str) -> dict:
    """Summarise per-run timings."""
    arr = np.asarray(times_ms, dtype=float)
    return {
        "median_ms": float(statistics.median(times_ms)),
        "p10_ms": float(np.percentile(arr, 10)),
        "p90_ms": float(np.percentile(arr, 90)),
        "runs": len(times_ms),
        "threads": int(threads),
        "device": device,
    }


def fused_inference_copy(model: Any, imgsz: int, batch: int, device: torch.device) -> tuple[nn.Module, torch.Tensor]:
    """A fused FP32 eval copy of ``model`` (module, YOLO or checkpoint) on ``device``, and a random input for it."""
    src = _unwrap(load_yolo(model)) if isinstance(model, (str, Path)) else _unwrap(model)
    module = deepcopy(src).float().eval()
    if hasattr(module, "fuse"):
        module = module.fuse(verbose=False)
    module = module.to(device)
    return module, torch.rand(batch, _input_channels(module), imgsz, imgsz, device=device)


def torch_runner(model: Any, imgsz: int, batch: int, device: torch.device, threads: int) -> Callable[[], None]:
    """Return a callable that runs one eager PyTorch inference of a fused copy of ``model`` on ``device``.

    Each call sets ``threads`` intra-op threads for itself (restoring the caller's afterwards) and, on CUDA, waits for
    the GPU, so a call's wall time is the inference's.
    """
    module, x = fused_inference_copy(model, imgsz, batch, device)
    cuda = device.type == "cuda"

    def run() -> None:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                module(x)
            if cuda:
                torch.cuda.synchronize(device)
        finally:
            torch.set_num_threads(before)

    return run


def interleaved_times(
    runners: dict[Any, Callable[[], None]], rounds: int = 50, warmup: int = 10
) -> dict[Any, list[float]]:
    """Run every runner once per round, in order on even rounds and in reverse on odd ones; return ms per run.

    Args:
        runners: ``{key: callable}``; each call is one inference.
        rounds: Timed rounds (each runner is timed once per round).
        warmup: Untimed rounds first.

    Returns:
        ``{key: [ms of round 0, ms of round 1, ...]}``.
    """
    keys = list(runners)
    times: dict[Any, list[float]] = {k: [] for k in keys}
    for i in range(max(0, int(warmup)) + max(1, int(rounds))):
        for k in keys if i % 2 == 0 else keys[::-1]:
            t0 = time.perf_counter()
            runners[k]()
            if i >= warmup:
                times[k].append((time.perf_counter() - t0) * 1e3)
    return times


def time_runs(run: Callable[[], Any], warmup: int = 10, runs: int = 50) -> list[float]:
    """Call ``run`` ``warmup`` times untimed, then ``runs`` times; return the timed calls in ms (`interleaved_times`
    with one runner)."""
    return interleaved_times({0: run}, runs, warmup)[0]


def measure_torch_latency(
    model: Any,
    imgsz: int = 640,
    batch: int = 1,
    device: str = "cpu",
    warmup: int = 10,
    runs: int = 50,
    threads: int | None = None,
) -> dict:
    """Time eager PyTorch inference of a fused copy of the model (`torch_runner`).

    Args:
        model (nn.Module | YOLO | str | Path): Model or checkpoint.
        imgsz (int): Square input size.
        batch (int): Batch size.
        device (str): Ultralytics device string (`cpu`, `0`, `cuda:0`, ...).
        warmup (int): Untimed runs first.
        runs (int): Timed runs.
        threads (int, optional): CPU threads for the run (restored afterwards); `default_threads()` when None.

    Returns:
        (dict): `median_ms`, `p10_ms`, `p90_ms`, `runs`, `threads`, `device` (ms per batch).
    """
    from ultralytics.utils.torch_utils import select_device

    threads = int(threads or default_threads())
    previous = torch.get_num_threads()
    dev = select_device(device, verbose=False)
    torch.set_num_threads(previous)  # select_device changes it process-wide
    times = time_runs(torch_runner(model, imgsz, batch, dev, threads), warmup, runs)
    return _stats(times, threads, str(dev))


def _export_copy(
    model_or_ckpt: Any,
    out_dir: str | Path | None,
    name: str | None,
    suffix: str | None,
    export_device: str = "cpu",
    **export: Any,
) -> Path:
    """Export with the Ultralytics exporter from a scratch copy inside ``out_dir``; move only the result out.

    The exporter writes beside the ``.pt`` it was loaded from, so the model is first copied (or, for a module, saved)
    into a scratch folder inside ``out_dir``. Its result (a file or a model folder) becomes ``out_dir/<name><suffix>``
    (``suffix=None``: the exporter's own name), replacing an earlier one of that name.
    """
    from ultralytics import YOLO

    if out_dir is None:
        raise ValueError("exports need out_dir= (e.g. a tempfile.TemporaryDirectory you remove afterwards)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    is_path = isinstance(model_or_ckpt, (str, Path))
    stem = name or (Path(model_or_ckpt).stem if is_path else "model")
    scratch = Path(tempfile.mkdtemp(prefix=".export_", dir=out))
    try:
        copy = scratch / f"{stem}.pt"
        if is_path:
            shutil.copyfile(model_or_ckpt, copy)
        else:
            _save_module(model_or_ckpt, copy)
        f = YOLO(str(copy)).export(device=export_device, **export)
        if not f or not Path(f).exists():
            raise RuntimeError(f"{export.get('format')} export produced nothing (exporter returned {f!r})")
        dest = out / (Path(f).name if suffix is None else f"{stem}{suffix}")
        if dest.is_file():
            dest.unlink()
        elif dest.is_dir():
            shutil.rmtree(dest)
        return Path(shutil.move(f, dest))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def export_onnx(
    model_or_ckpt: Any, imgsz: int = 640, batch: int = 1, out_dir: str | Path | None = None, name: str | None = None
) -> Path:
    """Export to ONNX with the Ultralytics exporter, writing only inside `out_dir`.

    The exporter writes the `.onnx` beside the `.pt` it was loaded from, so the model is first copied (or, for a
    module, saved) into a scratch folder inside `out_dir`, and only the `.onnx` is moved out of it. The user's
    checkpoint, and any other file in `out_dir` except `<name>.onnx`, is never touched.

    Args:
        model_or_ckpt (str | Path | YOLO | nn.Module): Checkpoint path, YOLO object or module.
        imgsz (int): Square input size (static).
        batch (int): Batch size (static).
        out_dir (str | Path): Output folder (required: the caller owns the file and the folder, so nothing is left in
            a temporary folder nobody removes).
        name (str, optional): File stem; defaults to the checkpoint stem or `model`.

    Returns:
        (Path): Path of the exported `.onnx` file.

    Raises:
        ValueError: Without ``out_dir``.
    """
    return _export_copy(model_or_ckpt, out_dir, name, ".onnx", format="onnx", imgsz=imgsz, batch=batch, simplify=True)


def require_openvino() -> Any:
    """Import and return the ``openvino`` package, or raise a one-line `BackendUnavailableError` naming the pip package.

    Returns:
        (module): The ``openvino`` module.

    Raises:
        BackendUnavailableError: If OpenVINO is not installed.
    """
    try:
        import openvino
    except ImportError as e:
        raise BackendUnavailableError(OPENVINO_MISSING) from e
    return openvino


def export_openvino(
    model_or_ckpt: Any, imgsz: int = 640, batch: int = 1, out_dir: str | Path | None = None, name: str | None = None
) -> Path:
    """Export to OpenVINO IR (FP32) with the Ultralytics exporter, writing only inside `out_dir` (as `export_onnx`).

    Args:
        model_or_ckpt (str | Path | YOLO | nn.Module): Checkpoint path, YOLO object or module.
        imgsz (int): Square input size (static).
        batch (int): Batch size (static).
        out_dir (str | Path): Output folder (required).
        name (str, optional): Folder stem; defaults to the checkpoint stem or `model`.

    Returns:
        (Path): The model folder ``out_dir/<name>_openvino_model`` (``.xml``, ``.bin`` and ``metadata.yaml``).

    Raises:
        BackendUnavailableError: If OpenVINO is not installed.
        ValueError: Without ``out_dir``.
    """
    require_openvino()
    return _export_copy(model_or_ckpt, out_dir, name, "_openvino_model", format="openvino", imgsz=imgsz, batch=batch)


def _openvino_xml(model: str | Path) -> Path:
    """Return the ``.xml`` of an OpenVINO model given as the file or its folder."""
    path = Path(model)
    if path.is_dir():
        found = sorted(path.glob("*.xml"))
        if not found:
            raise FileNotFoundError(f"no OpenVINO .xml model in '{path}'")
        return found[0]
    return path


def openvino_size_mb(model: str | Path) -> float:
    """Return the size in MB of an OpenVINO model's weights (its ``.bin`` files), given as the folder or the ``.xml``.

    Args:
        model (str | Path): Model folder or ``.xml`` file.

    Returns:
        (float): Size of the ``.bin`` weights in MB (10**6 bytes).
    """
    xml = _openvino_xml(model)
    return sum(file_size_mb(p) for p in xml.parent.glob("*.bin"))


def openvino_runner(
    model: str | Path, imgsz: int, batch: int, threads: int, device: str = "CPU"
) -> tuple[Callable[[], Any], str]:
    """Compile an OpenVINO model for latency and return ``(one synchronous inference, compiled precision)``.

    The model is compiled with ``PERFORMANCE_HINT=LATENCY``, ``INFERENCE_NUM_THREADS=threads`` and
    ``INFERENCE_PRECISION_HINT=f32``: floating-point layers run in FP32 on every CPU (some CPUs would otherwise pick
    bf16), while the INT8 layers of a quantized model still run in INT8.

    Raises:
        BackendUnavailableError: If OpenVINO is not installed.
    """
    ov = require_openvino()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    compiled = ov.Core().compile_model(str(_openvino_xml(model)), device.upper(), config)
    request = compiled.create_infer_request()
    shape = compiled.input(0).get_partial_shape()
    channels = shape[1].get_length() if shape.rank.get_length() == 4 and shape[1].is_static else 3
    x = np.random.default_rng(0).random((batch, channels, imgsz, imgsz), dtype=np.float32)
    precision = compiled.get_property("INFERENCE_PRECISION_HINT")
    return (lambda: request.infer({0: x})), precision.to_string() if hasattr(precision, "to_string") else str(precision)


def measure_openvino_latency(
    model: str | Path,
    imgsz: int = 640,
    batch: int = 1,
    warmup: int = 10,
    runs: int = 50,
    threads: int | None = None,
    device: str = "CPU",
) -> dict:
    """Time an OpenVINO model (FP32 or INT8 IR) with the OpenVINO runtime, one synchronous request at a time
    (`openvino_runner`).

    Args:
        model (str | Path): Model folder (as exported) or its ``.xml``.
        imgsz (int): Square input size (must match a static export).
        batch (int): Batch size (must match a static export).
        warmup (int): Untimed runs first.
        runs (int): Timed runs.
        threads (int, optional): Inference threads; `default_threads()` when None (the same default as torch).
        device (str): OpenVINO device name (``CPU``).

    Returns:
        (dict): Same keys as `measure_torch_latency`, plus ``precision`` (the compiled inference precision).

    Raises:
        BackendUnavailableError: If OpenVINO is not installed.
    """
    threads = int(threads or default_threads())
    run, precision = openvino_runner(model, imgsz, batch, threads, device)
    return {**_stats(time_runs(run, warmup, runs), threads, device.lower()), "precision": precision}


def require_onnxruntime() -> Any:
    """Import and return ``onnxruntime``, or raise a one-line `BackendUnavailableError` naming the pip package."""
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendUnavailableError("onnxruntime is not installed (pip install onnxruntime)") from e
    return onnxruntime


def onnx_runner(onnx_path: str | Path, imgsz: int, batch: int, threads: int, device: str = "cpu") -> Callable[[], Any]:
    """Open an ONNX Runtime session (``threads`` intra-op threads) and return one inference of it on a random input.

    Raises:
        BackendUnavailableError: If onnxruntime (or its CUDA provider, for ``device`` other than ``cpu``) is missing.
    """
    ort = require_onnxruntime()
    provider = "CPUExecutionProvider" if str(device).lower() in {"cpu", ""} else "CUDAExecutionProvider"
    if provider not in ort.get_available_providers():
        raise BackendUnavailableError(f"{provider} not available in onnxruntime (for CUDA: onnxruntime-gpu)")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=[provider])
    inp = session.get_inputs()[0]
    channels = inp.shape[1] if isinstance(inp.shape[1], int) else 3
    feed = {inp.name: np.random.default_rng(0).random((batch, channels, imgsz, imgsz), dtype=np.float32)}
    return lambda: session.run(None, feed)


def measure_onnx_latency(
    onnx_path: str | Path,
    imgsz: int = 640,
    batch: int = 1,
    warmup: int = 10,
    runs: int = 50,
    threads: int | None = None,
    device: str = "cpu",
) -> dict:
    """Time an ONNX model with ONNX Runtime (`onnx_runner`).

    Args:
        onnx_path (str | Path): Exported model.
        imgsz (int): Square input size (must match a static export).
        batch (int): Batch size (must match a static export).
        warmup (int): Untimed runs first.
        runs (int): Timed runs.
        threads (int, optional): Intra-op threads; `default_threads()` when None (the same default as torch).
        device (str): `cpu` for CPUExecutionProvider, `cuda` (or a GPU index) for CUDAExecutionProvider.

    Returns:
        (dict): Same keys as `measure_torch_latency`.

    Raises:
        BackendUnavailableError: If onnxruntime (or its CUDA provider) is missing.
    """
    threads = int(threads or default_threads())
    run = onnx_runner(onnx_path, imgsz, batch, threads, device)
    return _stats(time_runs(run, warmup, runs), threads, "cpu" if str(device).lower() in {"cpu", ""} else "cuda")


def validate(
    model_or_ckpt: Any, data: str, imgsz: int = 640, batch: int = 16, device: str = "cpu", **kwargs: Any
) -> dict:
    """Run the Ultralytics validator (the model's task's own) and return its mAP.

    ``map50_95`` and ``map50`` are always the box mAP, the main metric of every report and of ``max_map_drop`` (for
    an obb model the rotated-box mAP). A segment model adds ``map50_95_mask``/``map50_mask``, a pose model
    ``map50_95_pose``/``map50_pose`` (see ``yolo_prune.rules.tasks.TASKS``).

    Args:
        model_or_ckpt (str | Path | YOLO | nn.Module): Model to validate.
        data (str): Dataset yaml, or a built-in name such as ``shapes-seg.yaml`` (see
            `yolo_prune.data.builtin.resolve_data`).
        imgsz (int): Validation image size.
        batch (int): Validation batch size.
        device (str): Ultralytics device string.
        **kwargs (Any): Extra `YOLO.val` arguments (e.g. `project`, `name`, `half`).

    Returns:
        (dict): `{"map50_95": float, "map50": float}`, plus the task's keys.
    """
    from ..data.builtin import resolve_data

    data = resolve_data(data)

    # the validator fuses the module it is given in place: hand it a fresh load or a copy
    yolo = load_yolo(model_or_ckpt if isinstance(model_or_ckpt, (str, Path)) else _unwrap(model_or_ckpt))
    args = {"plots": False, "verbose": False, **kwargs}
    previous = torch.get_num_threads()
    try:
        metrics = yolo.val(data=str(data), imgsz=imgsz, batch=batch, device=device, **args)
    finally:
        torch.set_num_threads(previous)  # the validator's select_device changes it process-wide
    return metrics_row(metrics, getattr(yolo, "task", None))


def metrics_row(metrics: Any, task: str | None) -> dict:
    """Return the report keys of an Ultralytics validator result: box ``map50_95``/``map50`` plus the task's keys.

    Args:
        metrics (Any): What ``YOLO.val`` returned.
        task (str, optional): The model's task (``detect`` when None).

    Returns:
        (dict): ``{"map50_95": float, "map50": float}`` and, for segment or pose, the mask or pose mAP keys.
    """
    from ..rules.tasks import TASKS

    result = {"map50_95": float(metrics.box.map), "map50": float(metrics.box.map50)}
    spec = TASKS.get(task or "detect")
    for key, (group, name) in (spec.metrics if spec else {}).items():
        result[key] = float(getattr(getattr(metrics, group), name))
    return result


def _is_gpu(device: Any) -> bool:
    """Return True for a CUDA device request (`0`, `0,1`, `cuda`, `cuda:1`)."""
    d = str(device).strip().lower()
    return d not in {"", "cpu", "mps", "none"} and not d.startswith("mps")


def resolve_backends(backends: Iterable[str] | str, device: str = "cpu") -> tuple[list[str], dict[str, str]]:
    """Turn requested backends into row labels.

    `torch` means PyTorch on `device` (`torch_cpu` or `torch_cuda`); `onnx` means `onnx_cpu`, plus `onnx_cuda` when
    `device` is a GPU; `openvino` means `openvino_cpu` (OpenVINO on the CPU, whatever `device` is). Explicit labels are
    accepted as well. OpenVINO is optional: when it is not installed, `openvino` gets an error naming the pip package.

    Args:
        backends (Iterable[str] | str): Names, or one comma-separated string.
        device (str): Ultralytics device string.

    Returns:
        (tuple[list[str], dict[str, str]]): Ordered unique labels, and errors for unknown names.
    """
    names, errors = check_backend_names(backends)
    gpu = _is_gpu(device)
    labels = []
    for b in names:
        if b == "torch":
            new = ["torch_cuda" if gpu else "torch_cpu"]
        elif b == "onnx":
            new = ["onnx_cpu", "onnx_cuda"] if gpu else ["onnx_cpu"]
        else:
            new = ["openvino_cpu"] if b == "openvino" else [b]
        labels += [x for x in new if x not in labels]
    return labels, errors


def _error(e: BaseException) -> str:
    """Format an exception for a report row."""
    return f"{type(e).__name__}: {e}".strip()


def new_row(name: str, path: str | None = None, **extra: Any) -> dict:
    """Return an empty report row: the shared format of `prune` and `bench` reports.

    Args:
        name (str): Row label (e.g. `baseline`, `step1`, `final`, or a file stem).
        path (str, optional): Checkpoint path.
        **extra (Any): Additional keys (e.g. `imgsz`, `stage`).

    Returns:
        (dict): Keys `name`, `path`, `params`, `gflops`, `size_mb`, `map50_95`, `map50` (box mAP, also for
            segment/pose/obb models), `latency_ms` ({backend: median ms}), `latency_detail` ({backend: stats dict}),
            `errors` ({backend_or_stage: message}). `validate` adds the task's own mAP keys (`map50_95_mask`,
            `map50_mask`, `map50_95_pose`, `map50_pose`) to the rows of segment and pose models.
    """
    row = {
        "name": name,
        "path": path,
        "params": None,
        "gflops": None,
        "size_mb": None,
        "map50_95": None,
        "map50": None,
        "latency_ms": {},
        "latency_detail": {},
        "errors": {},
    }
    row.update(extra)
    return row


def measure_model(
    ckpt_path: Any,
    data: str | None = None,
    imgsz: int = 640,
    batch: int = 1,
    device: str = "cpu",
    backends: Iterable[str] | str = ("torch", "onnx"),
    runs: int = 50,
    warmup: int = 10,
    out_dir: str | Path | None = None,
    name: str | None = None,
    val_batch: int = 16,
    threads: int | None = None,
) -> dict:
    """Measure one model into a report row; failures are recorded in `row["errors"]`, never raised.

    Args:
        ckpt_path (str | Path | YOLO | nn.Module): Checkpoint (or an in-memory model).
        data (str, optional): Dataset yaml for mAP; mAP stays None without it.
        imgsz (int): Image size for GFLOPs, latency and validation.
        batch (int): Latency batch size.
        device (str): Ultralytics device string; a GPU adds CUDA backends.
        backends (Iterable[str] | str): `torch`, `onnx`, `openvino` or explicit labels (see `resolve_backends`).
        runs (int): Timed runs per backend.
        warmup (int): Untimed runs per backend.
        out_dir (str | Path, optional): Where the ONNX/OpenVINO exports and validation output go (temporary when None).
        name (str, optional): Row label; defaults to the file stem.
        val_batch (int): Validation batch size.
        threads (int, optional): CPU threads for every latency backend; `default_threads()` when None.

    Returns:
        (dict): A row as described in `new_row`, plus `imgsz`, `batch`, `device`, and `onnx_path` / `openvino_path`
            when exported into ``out_dir``.
    """
    is_path = isinstance(ckpt_path, (str, Path))
    name = name or (Path(ckpt_path).stem if is_path else "model")
    row = new_row(name, str(ckpt_path) if is_path else None, imgsz=imgsz, batch=batch, device=str(device))
    try:
        yolo = load_yolo(ckpt_path)
        module = _unwrap(yolo)
    except Exception as e:
        row["errors"]["load"] = _error(e)
        return row
    row["params"] = count_params(module)
    try:
        row["gflops"] = count_gflops(module, imgsz)
    except Exception as e:
        row["errors"]["gflops"] = _error(e)
    row["size_mb"] = file_size_mb(ckpt_path) if is_path else checkpoint_size_mb(module)

    with tempfile.TemporaryDirectory(prefix="yolo_prune_measure_") as tmp:
        work = Path(out_dir) if out_dir is not None else Path(tmp)
        if data:
            try:
                val_dir = work / "val"
                row.update(
                    validate(
                        ckpt_path if is_path else module,
                        data,
                        imgsz=imgsz,
                        batch=val_batch,
                        device=device,
                        project=str(val_dir.absolute()),  # relative: Ultralytics would use runs/detect/<project>
                        name=name,
                        exist_ok=True,
                    )
                )
            except Exception as e:
                row["errors"]["val"] = _error(e)

        labels, errors = resolve_backends(backends, device)
        row["errors"].update(errors)
        onnx_path, export_error = None, None
        for label in labels:
            try:
                if label.startswith("torch"):
                    dev = "cpu" if label == "torch_cpu" else (device if _is_gpu(device) else "0")
                    stats = measure_torch_latency(module, imgsz, batch, dev, warmup, runs, threads)
                elif label.startswith("openvino"):
                    ov_dir = export_openvino(ckpt_path if is_path else module, imgsz, batch, work / "openvino", name)
                    row["openvino_path"] = str(ov_dir) if out_dir is not None else None
                    stats = measure_openvino_latency(ov_dir, imgsz, batch, warmup, runs, threads)
                else:
                    if onnx_path is None and export_error is None:
                        try:
                            onnx_path = export_onnx(ckpt_path if is_path else module, imgsz, batch, work / "onnx", name)
                            row["onnx_path"] = str(onnx_path) if out_dir is not None else None
                        except Exception as e:
                            export_error = _error(e)
                    if export_error:
                        raise RuntimeError(f"ONNX export failed: {export_error}")
                    ort_dev = "cuda" if label == "onnx_cuda" else "cpu"
                    stats = measure_onnx_latency(onnx_path, imgsz, batch, warmup, runs, threads, ort_dev)
                row["latency_ms"][label] = stats["median_ms"]
                row["latency_detail"][label] = stats
            except Exception as e:
                row["errors"][label] = _error(e)
    return row
