"""Every check of a yolo-prune option value, in one place: one-line ``ValueError`` messages that name the option.

This module is the bottom floor of the package: it imports nothing from ``yolo_prune`` (only the standard library,
and ``torch``/``ultralytics`` lazily), so every other module can use it without an import circle. The option table of
``yolo-prune prune`` (`yolo_prune.config.options`) and the functions that take the same arguments (``prune()``,
``PruneCallback``, ``run_sensitivity``, ``bench``) all check through these functions.

Examples:
    >>> check_ratio(0.5)
    0.5
    >>> check_choice("Uniform", "allocation", ALLOCATIONS)
    'uniform'
    >>> did_you_mean("ratoi", ["ratio", "steps"])
    " (did you mean 'ratio'?)"
"""

from __future__ import annotations

import difflib
import importlib.util
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "ACCEPTED_BACKENDS",
    "ALLOCATIONS",
    "ATTENTION_MODES",
    "GRADIENT_METHODS",
    "IMPORTANCE_NAMES",
    "LATENCY_BACKENDS",
    "OPENVINO_MISSING",
    "PROJECTOR_INITS",
    "RECONSTRUCT_METHODS",
    "SPARSE_MODES",
    "SPARSE_SCHEDULES",
    "check_attention",
    "check_backend",
    "check_backend_names",
    "check_bool",
    "check_callback_settings",
    "check_choice",
    "check_float",
    "check_fraction",
    "check_int",
    "check_layer_ratios",
    "check_max_ratio",
    "check_method",
    "check_output_folder",
    "check_prune_call",
    "check_projector_init",
    "check_ratio",
    "check_ratios",
    "check_reconstruct",
    "check_round_to",
    "check_stages",
    "check_target",
    "did_you_mean",
    "installed",
    "is_none",
    "resolve_device",
]

ALLOCATIONS = ("sensitivity", "uniform", "global")  # how layers share the cut
ATTENTION_MODES = ("heads", "keep")  # attention blocks: remove whole heads, or leave them intact
LATENCY_BACKENDS = ("torch", "onnx", "openvino")  # backends a latency target (and round_to=auto) can be priced on
ACCEPTED_BACKENDS = (*LATENCY_BACKENDS, "torch_cpu", "torch_cuda", "onnx_cpu", "onnx_cuda", "openvino_cpu")
OPENVINO_MISSING = "the openvino backend needs OpenVINO: pip install openvino"
PROJECTOR_INITS = ("fit", "random")  # distill_projector=: least-squares fit before training, or Ultralytics' random
RECONSTRUCT_METHODS = ("ls", "seq", "bn")  # re-fit after pruning: least squares, sequential least squares, BN only
SPARSE_MODES = ("bn", "group")  # what the sparsity penalty acts on
SPARSE_SCHEDULES = ("constant", "linear", "ramp")  # how PruneCallback's penalty changes over the sparse epochs
# channel importance criteria (yolo_prune.policy.importance.IMPORTANCE_METHODS implements one per name)
IMPORTANCE_NAMES = ("l1", "l2", "bn", "lamp", "fpgm", "taylor", "hessian", "random")
GRADIENT_METHODS = frozenset({"taylor", "hessian"})  # criteria that read param.grad: they need data= to compute it


def did_you_mean(key: str, valid: Iterable[str]) -> str:
    """Return `` (did you mean 'x'?)`` for the closest name in ``valid``, or an empty string."""
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def is_none(value: Any) -> bool:
    """True for None and the strings a user types for it (``''``, ``none``, ``null``)."""
    return value is None or (isinstance(value, str) and value.strip().lower() in {"", "none", "null"})


def resolve_device(device: Any) -> str:
    """Return the device string to use: ``device`` itself, or for None what Ultralytics picks by default.

    Ultralytics trains and validates on the first CUDA GPU when there is one and ``device`` is not given, so the
    commands that default to ``device=None`` do the same (``"0"``), else the CPU.

    Examples:
        >>> resolve_device("cpu")
        'cpu'
        >>> resolve_device(None)  # on a machine without a GPU
        'cpu'
    """
    if is_none(device):
        import torch

        return "0" if torch.cuda.is_available() else "cpu"
    return str(device).strip()


def check_int(value: Any, name: str, minimum: int = 0) -> int:
    """Return ``value`` as an int >= ``minimum`` (``"3"`` and ``3.0`` count), or raise a one-line ``ValueError``."""
    message = f"{name}={value!r} must be an integer >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(message)
    try:
        number = float(value)
    except ValueError:
        raise ValueError(message) from None
    if not number.is_integer() or number < minimum:
        raise ValueError(message)
    return int(number)


def check_float(value: Any, name: str, low: float | None = None, high: float | None = None) -> float:
    """Return ``value`` as a finite float in ``[low, high)`` (either bound optional), or raise a one-line error."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"{name}={value!r} must be a number")
    if (low is not None and number < low) or (high is not None and number >= high):
        interval = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'})"
        raise ValueError(f"{name}={number} must be in {interval}")
    return number


def check_bool(value: Any, name: str) -> bool:
    """Return ``value`` if it is True or False, else raise a one-line ``ValueError``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be True or False")
    return value


def check_choice(value: Any, name: str, choices: Iterable[str], what: str | None = None) -> str:
    """Return ``value`` lower-cased if it is one of ``choices``, else raise a one-line ``ValueError`` listing them."""
    choices = tuple(choices)
    text = str(value).lower()
    if text not in choices:
        raise ValueError(
            f"unknown {what or name} '{value}'{did_you_mean(text, choices)}; choose one of {', '.join(choices)}"
        )
    return text


def check_fraction(value: Any, name: str, meaning: str, zero_ok: bool, one_ok: bool) -> float:
    """Return ``value`` as a float in the interval ``[0|(0, 1]|1)``, or raise a one-line ``ValueError``.

    Args:
        value: The user's value.
        name: Argument name for the message.
        meaning: What the number means, for the message.
        zero_ok: Whether 0 is allowed.
        one_ok: Whether 1 is allowed.
    """
    interval = f"{'[' if zero_ok else '('}0, 1{']' if one_ok else ')'}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}") from None
    if not ((0.0 <= number if zero_ok else 0.0 < number) and (number <= 1.0 if one_ok else number < 1.0)):
        raise ValueError(f"{name} must be in {interval} ({meaning}), got {number}")
    return number


def check_ratio(ratio: Any, name: str = "ratio") -> float:
    """Return ``ratio`` (a fraction of prunable channels removed) as a float in [0, 1), or raise a one-line error."""
    return check_fraction(ratio, name, "the fraction of prunable channels removed", zero_ok=True, one_ok=False)


def check_target(value: Any, name: str) -> float:
    """Return a cost target (``target_macs``, ``target_latency``) as a float in (0, 1], or raise a one-line error."""
    return check_fraction(value, name, "the fraction of the unpruned cost to keep", zero_ok=False, one_ok=True)


def check_max_ratio(max_ratio: Any) -> float:
    """Return ``max_ratio`` (the largest fraction of one group removed) as a float in (0, 1]."""
    return check_fraction(
        max_ratio, "max_ratio", "the largest fraction of one group removed", zero_ok=False, one_ok=True
    )


def check_layer_ratios(layer_ratios: Mapping[int, float] | None) -> dict[int, float]:
    """Return ``{stage index: ratio}`` with checked values, or raise a one-line ``ValueError``."""
    if layer_ratios is None:
        return {}
    if not isinstance(layer_ratios, Mapping):
        raise ValueError(f"layer_ratios must be a dict {{layer index: ratio}}, got {type(layer_ratios).__name__}")
    out = {}
    for stage, value in layer_ratios.items():
        try:
            index = int(stage)
        except (TypeError, ValueError):
            raise ValueError(f"layer_ratios keys must be layer indices of model.model, got {stage!r}") from None
        out[index] = check_ratio(value)
    return out


def _numbers(value: Any, name: str, kind: type) -> list:
    """Parse a number, a sequence of numbers or a comma-separated string into a list, or raise ``ValueError``."""
    if isinstance(value, str):
        value = [v for v in value.replace("[", "").replace("]", "").replace("(", "").replace(")", "").split(",") if v]
    elif not isinstance(value, Iterable):
        value = [value]
    try:
        out = [kind(float(v)) if kind is int else kind(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a list of numbers, got {value!r}") from None
    if kind is int and any(float(a) != b for a, b in zip(value, out, strict=True)):
        raise ValueError(f"{name} must be whole numbers, got {value!r}")
    return out


def check_ratios(ratios: Any, name: str = "ratios") -> list[float]:
    """Return sorted unique ratios in (0, 1) (the sensitivity scan's), or raise ``ValueError``."""
    try:
        values = sorted(set(_numbers(ratios, name, float)))
    except ValueError:
        values = []
    if not values or any(not 0.0 < r < 1.0 for r in values):
        raise ValueError(f"{name}={ratios!r} must be numbers in (0, 1), e.g. {name}=0.3,0.5,0.7")
    return values


def check_stages(stages: Any, count: int) -> list[int]:
    """Return the layer indices to analyse (negative ones count from the end), or raise ``ValueError``."""
    if stages is None:
        return list(range(count))
    values = _numbers(stages, "stages", int)
    bad = [s for s in values if not -count <= s < count]
    if bad:
        raise ValueError(f"stages must be layer indices in [0, {count}), got {bad}")
    return sorted({s % count for s in values})


def check_method(method: Any) -> str:
    """Return the channel importance criterion (one of `IMPORTANCE_NAMES`) lower-cased, or raise a one-line error."""
    key = str(method).lower()
    if key not in IMPORTANCE_NAMES:
        raise ValueError(f"unknown importance method '{method}': choose one of {', '.join(IMPORTANCE_NAMES)}")
    return key


def check_attention(mode: Any) -> str:
    """Return the attention mode (``heads`` removes whole heads, ``keep`` leaves attention intact) lower-cased."""
    value = str(mode).strip().lower()
    if value not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_MODES)}, got {mode!r}")
    return value


def check_reconstruct(value: Any) -> str | None:
    """Return the reconstruction method (``ls``, ``seq``, ``bn``; True = ``ls``) or None for off (None, False,
    ``"none"``, ``"off"``); raise a one-line ``ValueError`` for anything else."""
    if value is None or value is False or str(value).lower() in ("none", "off", "false", "0"):
        return None
    if value is True or str(value).lower() == "true":
        return "ls"
    key = str(value).lower()
    if key not in RECONSTRUCT_METHODS:
        raise ValueError(f"reconstruct='{value}' is not valid: use one of {', '.join(RECONSTRUCT_METHODS)} or none")
    return key


def check_projector_init(value: Any) -> str:
    """Return ``distill_projector`` as one of `PROJECTOR_INITS`, or raise a one-line ``ValueError``."""
    text = str(value).strip().lower()
    if text not in PROJECTOR_INITS:
        raise ValueError(f"distill_projector={value!r}: choose one of {', '.join(PROJECTOR_INITS)}")
    return text


def check_round_to(round_to: Any) -> int | str:
    """Return ``"auto"`` or ``round_to`` as a positive int, or raise a one-line ``ValueError``.

    ``auto`` is resolved to the deployment hardware's channel block by
    `yolo_prune.measurement.hardware.resolve_round_to`, where the hardware is known.
    """
    if isinstance(round_to, str) and round_to.strip().lower() == "auto":
        return "auto"
    if isinstance(round_to, bool) or not isinstance(round_to, (int, float)) or round_to != int(round_to):
        raise ValueError(f"round_to must be 'auto' or a positive integer, got {round_to!r}")
    if int(round_to) < 1:
        raise ValueError(f"round_to must be 'auto' or a positive integer, got {round_to!r}")
    return int(round_to)


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (False also when it was made unimportable via ``sys.modules``: the
    ``ValueError`` of ``find_spec``); the one probe behind every "needs <package>" error."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_backend(backend: Any) -> str:
    """Return the latency backend of a target (`LATENCY_BACKENDS`), or raise a one-line ``ValueError`` (also when
    OpenVINO is not installed)."""
    key = str(backend).lower()
    if key not in LATENCY_BACKENDS:
        raise ValueError(f"unknown latency backend '{backend}': choose one of {', '.join(LATENCY_BACKENDS)}")
    if key == "openvino" and not installed("openvino"):
        raise ValueError(OPENVINO_MISSING)
    return key


def check_backend_names(backends: Iterable[str] | str) -> tuple[list[str], dict[str, str]]:
    """Split the report's latency backends (``"torch,onnx"`` or a list) into known names and one-line errors.

    Returns:
        ``(names, errors)``: the lower-cased names of `ACCEPTED_BACKENDS` in order, and ``{name: error}`` for unknown
        names and for OpenVINO when it is not installed.
    """
    items = backends.split(",") if isinstance(backends, str) else [str(b) for b in backends]
    names, errors = [], {}
    for raw in items:
        b = str(raw).strip().lower()
        if not b:
            continue
        if b not in ACCEPTED_BACKENDS:
            errors[b] = f"unknown backend '{b}', accepted: {', '.join(ACCEPTED_BACKENDS)}"
        elif b.startswith("openvino") and not installed("openvino"):
            errors[b] = OPENVINO_MISSING
        else:
            names.append(b)
    return names, errors


def check_output_folder(project: str | Path) -> Path:
    """Return ``project`` as a folder path that can be created and written, or raise a one-line ``ValueError``.

    Checked before any work starts: the nearest existing folder on the way must be a writable folder (a file in the
    way, or a read-only folder or file system, is refused). Nothing is created.
    """
    import os

    folder = Path(project).expanduser().absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"project={project} cannot be used: '{existing}' is a file, not a folder; choose another one")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"project={project} cannot be written: no write permission in '{existing}' (read-only?)")
    return folder


def check_prune_call(
    *,
    ratio: Any,
    target_macs: Any,
    target_latency: Any,
    layer_ratios: Mapping[int, float] | None,
    global_pruning: bool,
    sensitivity: Any,
    max_ratio: Any,
    method: Any,
    attention: Any,
    reconstruct: Any,
    backend: Any,
    device: Any,
    data: Any,
) -> dict[str, Any]:
    """Check the arguments of ``yolo_prune.prune()`` together; return them checked.

    Returns:
        ``ratio`` (float; 0.5, or 0 with ``layer_ratios``, when not given), ``target`` (``{"macs"|"latency": value}``
        or empty), ``layer_ratios`` (dict), ``max_ratio``, ``method``, ``attention``, ``reconstruct`` (or None),
        ``backend`` and ``device`` (resolved).

    Raises:
        ValueError: One line: a bad value, two targets, a ratio with a target, ``layer_ratios`` with a target,
            ``global_pruning`` or ``sensitivity``, or a re-fit or gradient method without ``data``.
    """
    given = {k: v for k, v in (("macs", target_macs), ("latency", target_latency)) if v is not None}
    if len(given) > 1:
        raise ValueError("give at most one of target_macs and target_latency")
    if given and ratio is not None:
        raise ValueError(f"ratio and target_{next(iter(given))} are mutually exclusive: give one of them")
    if given and layer_ratios:
        raise ValueError("layer_ratios sets the ratio of each layer, so it cannot be combined with a target")
    target = {kind: check_target(value, f"target_{kind}") for kind, value in given.items()}
    layers = check_layer_ratios(layer_ratios)
    if global_pruning and layers:
        raise ValueError("layer_ratios sets the ratio of each layer, so it cannot be combined with global_pruning")
    if sensitivity is not None and (layers or global_pruning):
        raise ValueError(
            "sensitivity allocates the ratio of every layer: do not combine it with layer_ratios or global_pruning"
        )
    method = check_method(method)
    refit = check_reconstruct(reconstruct)
    if refit and data is None:
        raise ValueError(f"reconstruct='{refit}' re-fits the pruned model on training images: give data=")
    if method in GRADIENT_METHODS and data is None:
        raise ValueError(
            f"method='{method}' scores channels from gradients: give data= (a dataset yaml) to compute them"
        )
    return {
        "ratio": check_ratio((0.0 if layers else 0.5) if ratio is None else ratio),
        "target": target,
        "layer_ratios": layers,
        "max_ratio": check_max_ratio(max_ratio),
        "method": method,
        "attention": check_attention(attention),
        "reconstruct": refit,
        "backend": check_backend(backend),
        "device": resolve_device(device),
    }


def check_callback_settings(
    *,
    ratio: Any,
    start_epoch: Any,
    end_epoch: Any,
    steps: Any,
    method: Any,
    sparsity: Any,
    sparse: Any,
    sparse_schedule: Any,
    sparse_epochs: Any,
    round_to: Any,
) -> dict[str, Any]:
    """Check `PruneCallback`'s settings together; return them checked (``round_to`` still ``"auto"`` or an int).

    Raises:
        ValueError: One line: a bad value, or ``start_epoch`` after ``end_epoch``.
    """
    start = check_int(start_epoch, "start_epoch")
    end = start if end_epoch is None else check_int(end_epoch, "end_epoch")
    if start > end:
        raise ValueError(f"start_epoch ({start}) must not be after end_epoch ({end})")
    count = check_int(steps, "steps")
    if count < 1:
        raise ValueError("steps must be at least 1")
    try:
        strength = float(sparsity)
    except (TypeError, ValueError):
        raise ValueError(f"sparsity must be a number >= 0, got {sparsity!r}") from None
    if not (strength >= 0.0 and math.isfinite(strength)):
        raise ValueError(f"sparsity must be a finite number >= 0, got {sparsity!r}")
    return {
        "ratio": check_ratio(ratio),
        "start_epoch": start,
        "end_epoch": end,
        "steps": count,
        "method": check_choice(method, "method", IMPORTANCE_NAMES),
        "sparsity": strength,
        "sparse": check_choice(sparse, "sparse", SPARSE_MODES, "sparse mode"),
        "sparse_schedule": check_choice(sparse_schedule, "sparse_schedule", SPARSE_SCHEDULES),
        "sparse_epochs": None if sparse_epochs is None else check_int(sparse_epochs, "sparse_epochs"),
        "round_to": check_round_to(round_to),
    }
