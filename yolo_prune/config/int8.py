"""Whether an INT8 format (``int8=``) and quantization-aware training (``qat=True``) can run here, checked before any
work: the format must be one of the installed Ultralytics exporter's INT8 formats and its toolchain importable.

Part of `yolo_prune.config` (it imports nothing from ``yolo_prune``); `yolo_prune.measurement.quantize` exports and
measures.

Examples:
    >>> resolve_int8(True)
    'openvino'
    >>> check_int8_request("onnx", ["torch"], "cpu")  # with onnxruntime installed
    ('onnx', ['torch', 'onnx'])
"""

from __future__ import annotations

import shutil
from typing import Any

from .checks import installed

__all__ = [
    "CPU_RUNTIMES",
    "DEFAULT_INT8",
    "QAT_REQUIREMENTS",
    "TOOLCHAINS",
    "check_int8_available",
    "check_int8_request",
    "check_qat_available",
    "int8_formats",
    "resolve_int8",
]

DEFAULT_INT8 = "openvino"  # what int8=True means (the only INT8 path before 0.6)
CPU_RUNTIMES = {"onnx": "onnx", "openvino": "openvino"}  # INT8 format -> backend that validates and times it here
# INT8 format -> (module, pip requirement) pairs its exporter needs, as Ultralytics' exporter checks them; a format
# missing here is left to the exporter (its failure lands in the INT8 row's errors).
TOOLCHAINS: dict[str, tuple[tuple[str, str], ...]] = {
    "onnx": (("onnx", "onnx"), ("onnxruntime", "onnxruntime")),
    "openvino": (("openvino", "openvino"), ("nncf", "nncf")),
    "engine": (("tensorrt", "tensorrt"), ("modelopt", "nvidia-modelopt[onnx]")),
    "coreml": (("coremltools", "coremltools"),),
    "saved_model": (("tensorflow", "tensorflow"), ("onnx2tf", "onnx2tf")),
    "edgetpu": (("tensorflow", "tensorflow"), ("onnx2tf", "onnx2tf")),
    "litert": (("litert_torch", "litert-torch"), ("ai_edge_litert", "ai-edge-litert")),
    "mnn": (("MNN", "MNN"),),
    "imx": (("model_compression_toolkit", "model-compression-toolkit"),),
    "rknn": (("rknn", "rknn-toolkit2"),),
    "axelera": (("axelera", "axelera-devkit"),),
    "deepx": (("dx_com", "dx_com"),),
    "hailo": (("hailo_sdk_client", "hailo_dataflow_compiler"),),
    "xilinx": (("quark", "amd-quark"),),
}
QAT_REQUIREMENTS = (("modelopt", "nvidia-modelopt"), ("huggingface_hub", "huggingface_hub"))  # Ultralytics' QAT
_KNOWN_INT8 = frozenset(TOOLCHAINS)  # used where the installed exporter does not list its INT8 formats


def int8_formats() -> list[str]:
    """Return the INT8 export formats of the installed Ultralytics exporter, sorted."""
    try:
        from ultralytics.engine.exporter import INT8_FORMATS
    except ImportError:  # an exporter without the table: the formats this module knows
        INT8_FORMATS = _KNOWN_INT8
    return sorted(INT8_FORMATS)


def resolve_int8(value: Any) -> str | None:
    """Turn an ``int8=`` value into an INT8 export format, or None for no INT8 step.

    Args:
        value: False / None / ``"false"`` / ``"none"`` (no INT8), True / ``"true"`` (``openvino``: the meaning it has
            always had), or a format name of `int8_formats` (case-insensitive).

    Returns:
        The format name, or None.

    Raises:
        ValueError: One line listing the valid formats when ``value`` is none of them.
    """
    if value is None or value is False:
        return None
    if value is True:
        return DEFAULT_INT8
    text = str(value).strip().lower()
    if text in ("", "false", "none", "0"):
        return None
    if text in ("true", "1"):
        return DEFAULT_INT8
    formats = int8_formats()
    if text not in formats:
        raise ValueError(
            f"int8={value!r} is not an INT8 format of the installed Ultralytics exporter; choose one of "
            f"{', '.join(formats)} (or True = openvino, False = none)"
        )
    return text


def _missing(requirements: tuple[tuple[str, str], ...]) -> list[str]:
    """The pip names of the requirements whose module cannot be imported."""
    return [pip_name for module, pip_name in requirements if not installed(module)]


def check_int8_available(format: str = DEFAULT_INT8, device: str | None = "cpu") -> None:
    """Raise a one-line ``ValueError`` naming the pip packages when the toolchain of an INT8 format is missing.

    Args:
        format: An INT8 export format (see `resolve_int8`).
        device: The run's device: ``engine`` (TensorRT) builds on an NVIDIA GPU only.

    Raises:
        ValueError: If a module the format's exporter needs cannot be imported, or TensorRT is asked on a CPU.
    """
    missing = _missing(TOOLCHAINS.get(format, ()))
    if missing:
        raise ValueError(f"int8={format} needs {' and '.join(missing)}: pip install {' '.join(missing)}")
    if format == "engine" and str(device or "cpu").lower() in ("cpu", "mps"):
        raise ValueError("int8=engine (TensorRT) builds on an NVIDIA GPU: give device=0")
    if format == "edgetpu" and shutil.which("edgetpu_compiler") is None:
        raise ValueError(
            "int8=edgetpu needs the Edge TPU compiler (edgetpu_compiler, https://coral.ai/docs/edgetpu/compiler)"
        )


def check_qat_available() -> None:
    """Raise a one-line ``ValueError`` naming the pip packages when quantization-aware training cannot run.

    Ultralytics' QAT (``train(quantize=8)``) inserts fake quantization with NVIDIA ModelOpt, which runs on the CPU too.

    Raises:
        ValueError: If ``nvidia-modelopt`` (or ``huggingface_hub``, which it imports) is missing.
    """
    missing = _missing(QAT_REQUIREMENTS)
    if missing:
        raise ValueError(f"qat=True needs {' and '.join(missing)}: pip install {' '.join(missing)}")


def check_int8_request(
    value: Any, backends: list[str] | tuple[str, ...], device: str | None = "cpu", qat: bool = False
) -> tuple[str | None, list[str]]:
    """Check a run's ``int8=`` (and ``qat=``) before any work; return the INT8 format and the backends to time.

    The format's runtime (``onnx``, ``openvino``) is added to ``backends`` so that every FP32 row is timed where its
    INT8 row is. ``qat=True`` exports INT8 ONNX (Q/DQ): with ``int8`` unset it means ``int8=onnx``.

    Args:
        value: The ``int8=`` value (see `resolve_int8`).
        backends: The requested latency backends (names).
        device: The run's device.
        qat: Whether quantization-aware training was asked for.

    Returns:
        ``(format or None, backends)``.

    Raises:
        ValueError: One line: an unknown format (listing the valid ones), a missing toolchain or ModelOpt (naming the
            pip packages), or ``qat=True`` with an INT8 format other than ``onnx``.
    """
    fmt = resolve_int8(value)
    if qat:
        if fmt not in (None, "onnx"):
            raise ValueError(f"qat=True exports INT8 ONNX (Q/DQ from the trained ranges): use int8=onnx, not {fmt!r}")
        check_qat_available()
        fmt = "onnx"
    backends = [str(b).strip() for b in backends if str(b).strip()]
    if fmt is None:
        return None, backends
    check_int8_available(fmt, device)
    runtime = CPU_RUNTIMES.get(fmt)
    if runtime and not any(b.lower().startswith(runtime) for b in backends):
        backends.append(runtime)  # every row is timed where the INT8 rows are
    return fmt, backends
