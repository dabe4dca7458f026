"""Small helpers for checking ``key=value`` arguments, shared by the CLI and the commands it runs."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

__all__ = ["did_you_mean", "is_none", "resolve_device"]


def did_you_mean(key: str, valid: Iterable[str]) -> str:
    """Return `` (did you mean 'x'?)`` for the closest name in ``valid``, or an empty string.

    Examples:
        >>> did_you_mean("ratoi", ["ratio", "steps"])
        " (did you mean 'ratio'?)"
    """
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
