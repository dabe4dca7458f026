"""Small helpers for checking ``key=value`` arguments, shared by the CLI and the commands it runs."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ..config.checks import did_you_mean, is_none, resolve_device

__all__ = [
    "RenamedArgumentWarning",
    "did_you_mean",
    "is_none",
    "rename_args",
    "renamed_kwargs",
    "resolve_device",
    "torch_device",
]

F = TypeVar("F", bound=Callable[..., Any])


class RenamedArgumentWarning(FutureWarning):
    """An argument was given under its old name: it still works, mapped to the new one, until a future release."""


def torch_device(device: Any, default: Any) -> Any:
    """The ``torch.device`` for an Ultralytics-style ``device`` (``"0"`` is ``cuda:0``), or ``default`` when None.

    Examples:
        >>> torch_device("0", "cpu")
        device(type='cuda', index=0)
    """
    import torch

    if device is None:
        return default
    return torch.device(f"cuda:{device}" if str(device).isdigit() else device)


def rename_args(args: Mapping[str, Any], renames: Mapping[str, str], where: str) -> dict[str, Any]:
    """Return a copy of ``args`` with each old key of ``renames`` moved to its new name, warning once per old key.

    The warning is one line, logged through Ultralytics' ``LOGGER.warning`` and raised as a `RenamedArgumentWarning`
    (a ``FutureWarning``) for Python callers.

    Args:
        args (Mapping[str, Any]): Arguments as given (keyword arguments or CLI ``key=value`` pairs).
        renames (Mapping[str, str]): ``{old name: new name}``.
        where (str): What the arguments are for, for the messages (e.g. ``"prune()"``, ``"bench"``).

    Returns:
        (dict[str, Any]): The arguments under their new names.

    Raises:
        ValueError: When an old name and its new name are both given.

    Examples:
        >>> rename_args({"val_batch": 8}, {"val_batch": "batch"}, "bench")  # warns
        {'batch': 8}
    """
    out = dict(args)
    for old, new in renames.items():
        if old not in out:
            continue
        if new in out:
            raise ValueError(f"{where}: '{old}' is the deprecated name of '{new}': give only '{new}'")
        out[new] = out.pop(old)
        message = f"{where}: '{old}' is deprecated and will be removed in a future release; use '{new}' instead"
        from ultralytics.utils import LOGGER

        LOGGER.warning(message)
        warnings.warn(message, RenamedArgumentWarning, stacklevel=3)
    return out


def renamed_kwargs(**renames: str) -> Callable[[F], F]:
    """Decorate a function so that its renamed keyword arguments still work under their old names (see `rename_args`).

    Examples:
        >>> @renamed_kwargs(latency_runs="runs")
        ... def f(*, runs: int = 30) -> int:
        ...     return runs
        >>> f(latency_runs=5)  # warns, returns 5
        5
    """

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return func(*args, **rename_args(kwargs, renames, f"{func.__name__}()"))

        return wrapper  # type: ignore[return-value]

    return decorate
