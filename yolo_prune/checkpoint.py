"""Load YOLO detectors and save pruned ones as plain Ultralytics checkpoints.

A pruned checkpoint written by `save_checkpoint` has the same layout as one written by `YOLO.save()`: a dict whose
``"model"`` entry is the whole pickled module. It refers only to classes of ``torch``, ``ultralytics``, ``numpy`` and
the Python standard library, so stock Ultralytics loads, validates, predicts and exports it in a process that never
imports ``yolo_prune``.

Examples:
    >>> from yolo_prune.checkpoint import load_yolo, save_checkpoint
    >>> yolo = load_yolo("yolo11n.yaml")  # random init; a YOLO object or a local .pt are accepted too
    >>> save_checkpoint(yolo, "pruned.pt", yolo_prune={"ratio": 0.5, "method": "l2"})
"""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
import pickletools
import sys
import tempfile
import zipfile
from copy import deepcopy
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from ultralytics import YOLO, __version__
from ultralytics.engine.model import Model
from ultralytics.nn.modules import Detect
from ultralytics.nn.tasks import DetectionModel, guess_model_task
from ultralytics.utils import DEFAULT_CFG_KEYS, LOGGER, SETTINGS, colorstr
from ultralytics.utils.torch_utils import qat_state, strip_qat

__all__ = ["load_yolo", "save_checkpoint"]

PREFIX = colorstr("yolo-prune: ")
SUPPORTED_TASKS = ("detect",)
ACCEPTED = "expected an ultralytics YOLO object, a local '.pt' checkpoint or a model yaml such as 'yolo11n.yaml'"

# Top-level packages a checkpoint may refer to and still load in a plain Ultralytics environment
STOCK_ROOTS = frozenset({"torch", "ultralytics", "numpy", "__builtin__", "copy_reg"}) | (
    frozenset(sys.stdlib_module_names) - {"__main__"}
)
# Keys written by save_checkpoint itself; **extra may not replace them
RESERVED_KEYS = frozenset(
    {"model", "ema", "epoch", "best_fitness", "updates", "optimizer", "scaler", "modelopt", "train_args"}
    | {"date", "version", "license", "docs"}
)
# Keys of a trained source checkpoint that describe the unpruned model's training run; a pruned model drops them
SOURCE_RUN_KEYS = frozenset({"train_metrics", "train_results", "stopper"})


def load_yolo(model: YOLO | str | Path) -> YOLO:
    """Return an Ultralytics ``YOLO`` detector from a YOLO object, a local ``.pt`` checkpoint or a model yaml.

    A ``YOLO`` object is returned as is (the pruner works on a deep copy, so the caller's object is never changed).
    A ``.pt`` path must exist locally: nothing is downloaded. A yaml name builds a randomly initialised model. The
    input file is only read.

    Args:
        model (YOLO | str | Path): ``YOLO`` object, path to a ``.pt`` checkpoint, or model yaml name or path.

    Returns:
        (YOLO): The loaded detection model.

    Raises:
        ValueError: If the file is missing, is not a YOLO checkpoint, the yaml is unknown, the input type is not
            supported, or the model is not a detection model.

    Examples:
        >>> yolo = load_yolo("yolov5nu.yaml")
        >>> yolo = load_yolo("runs/detect/train/weights/best.pt")
    """
    if isinstance(model, Model):
        return _check_detector(model, "the given YOLO object")
    if not isinstance(model, (str, Path)):
        raise ValueError(f"cannot load a model from a {type(model).__name__}: {ACCEPTED}")
    name = str(model).strip()
    suffix = Path(name).suffix.lower()
    if suffix in {".yaml", ".yml"}:
        return _check_detector(_yolo_from_yaml(name), f"'{name}'")
    if suffix == ".pt":
        return _check_detector(_yolo_from_checkpoint(name), f"'{name}'")
    raise ValueError(f"unsupported model '{name}': {ACCEPTED}")


def save_checkpoint(model: YOLO | torch.nn.Module, path: str | Path, /, **extra: Any) -> Path:
    """Save a (pruned) detector as a standard Ultralytics checkpoint with FP32 weights.

    The file has the keys ``YOLO.save()`` writes (``model`` as the whole pickled module, ``date``, ``version``,
    ``license``, ``docs``, ``train_args``, ...), with ``ema=None`` and no optimizer state, so it is a fine-tuning
    start point rather than a resumable run. The source run's ``train_metrics``, ``train_results`` and ``stopper``
    are dropped: they describe the model before pruning. Unlike ``YOLO.save()`` the weights stay FP32. The file is
    written to a temporary file in the same folder, then moved into place with ``os.replace``, so readers never see a
    partial file.

    Overwrite rule: an existing file at ``path`` is replaced, except the checkpoint the model was loaded from
    (``YOLO.ckpt_path`` or the module's ``pt_path``), which is refused with a ``ValueError``: inputs are never
    overwritten.

    Args:
        model (YOLO | torch.nn.Module): ``YOLO`` object or Ultralytics model module (e.g. ``DetectionModel``).
        path (str | Path): Destination file; must end with ``.pt``.
        **extra (Any): Extra top-level keys, e.g. ``yolo_prune={"ratio": 0.5}``. Values must be plain data
            (dict, list, tuple, str, int, float, bool, None) so that stock Ultralytics can unpickle them.

    Returns:
        (Path): The path written.

    Raises:
        ValueError: If the model is not a PyTorch module, the path is not a ``.pt`` file or is the model's own source
            checkpoint, an extra key is reserved or holds non-plain data, or the model refers to classes outside
            torch/ultralytics (custom modules, hooks).

    Examples:
        >>> yolo = load_yolo("yolov5nu.yaml")
        >>> save_checkpoint(yolo, "pruned.pt", yolo_prune={"ratio": 0.5, "method": "l2"})
        PosixPath('pruned.pt')
    """
    yolo = model if isinstance(model, Model) else None
    module = yolo.model if yolo is not None else model
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"cannot save a {type(module).__name__}: expected a YOLO object or a PyTorch model module")
    path = Path(path)
    if path.suffix.lower() != ".pt":
        raise ValueError(f"checkpoint path '{path}' must end with '.pt' (Ultralytics loads only .pt checkpoints)")
    for source in (getattr(yolo, "ckpt_path", None), getattr(module, "pt_path", None)):
        if source and path.resolve() == Path(source).resolve():
            raise ValueError(f"refusing to overwrite '{path}': the model was loaded from it; save to a new file")
    for key, value in extra.items():
        if key in RESERVED_KEYS:
            raise ValueError(f"extra key '{key}' is reserved for the checkpoint itself; use another name")
        _check_plain(value, key)

    base = dict(yolo.ckpt) if yolo is not None and isinstance(yolo.ckpt, dict) else {}
    base = {k: v for k, v in base.items() if k not in SOURCE_RUN_KEYS}  # metrics of the source run, not of this model
    ckpt = {
        **base,
        "epoch": -1,
        "best_fitness": None,
        "model": _fp32_copy(module),
        "ema": None,
        "updates": None,
        "optimizer": None,  # optimizer state of another architecture would not fit a pruned model
        "scaler": None,
        "modelopt": qat_state(module),
        "train_args": _train_args(module, base),
        "date": datetime.now().astimezone().isoformat(),
        "version": __version__,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        **extra,
    }
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    data = buffer.getvalue()
    foreign = sorted(g for g in _pickle_globals(io.BytesIO(data)) if g.split(".")[0] not in STOCK_ROOTS)
    if foreign:
        raise ValueError(
            f"cannot save '{path}': the model refers to {', '.join(foreign[:3])}, which stock Ultralytics cannot "
            "load; convert custom modules back to stock classes and remove hooks before saving"
        )
    _write_atomic(path, data)
    LOGGER.info(f"{PREFIX}saved {path} ({sum(p.numel() for p in module.parameters()):,} parameters, FP32)")
    return path


def _yolo_from_yaml(name: str) -> YOLO:
    """Build a randomly initialised YOLO from a yaml name or path, turning build failures into ValueErrors."""
    try:
        return YOLO(name)
    except FileNotFoundError as e:
        raise ValueError(
            f"unknown model yaml '{name}': no such file nor Ultralytics model config (e.g. 'yolo11n.yaml')"
        ) from e
    except NotImplementedError as e:  # e.g. rtdetr-l.yaml: the YOLO class has no such task
        raise ValueError(
            f"'{name}' is not a YOLO detection model yaml; only detection models (task 'detect') are supported"
        ) from e
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise ValueError(f"'{name}' is not a YOLO model yaml ({type(e).__name__}: {e}); {ACCEPTED}") from e


def _yolo_from_checkpoint(name: str) -> YOLO:
    """Load a local YOLO checkpoint without letting Ultralytics download or auto-install anything."""
    file = Path(name).expanduser()
    if not file.is_file() and not file.is_absolute() and (Path(SETTINGS["weights_dir"]) / file).is_file():
        file = Path(SETTINGS["weights_dir"]) / file  # same local lookup as Ultralytics, minus the download
    if not file.is_file():
        raise ValueError(f"checkpoint '{name}' not found: no such local file (nothing is downloaded); {ACCEPTED}")
    if zipfile.is_zipfile(file):
        missing = sorted(g for g in _pickle_globals(file) if not _importable(g.split(".")[0]))
        if missing:
            raise ValueError(
                f"'{name}' needs classes from modules that are not installed ({', '.join(missing[:3])}); "
                "save pruned models with yolo_prune.save_checkpoint so that they hold only stock classes"
            )
    try:
        return YOLO(str(file))
    except (TypeError, AttributeError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError, ImportError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "references types outside" in reason or isinstance(e, (AttributeError, KeyError)):
            reason = "it holds no YOLO model module (a plain state_dict?)"
        elif "not a loadable checkpoint" in reason or isinstance(e, (EOFError, pickle.UnpicklingError)):
            reason = "the file is empty, truncated or not a PyTorch file"
        raise ValueError(
            f"'{name}' is not an Ultralytics YOLO checkpoint: {reason}; expected a .pt from YOLO.save(), training "
            "(best.pt/last.pt) or yolo_prune.save_checkpoint"
        ) from e


def _check_detector(yolo: YOLO, what: str) -> YOLO:
    """Return ``yolo`` if it wraps a PyTorch detection model, else raise a ValueError naming the problem."""
    module = yolo.model
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"{what} is not a PyTorch model (exported formats cannot be pruned); {ACCEPTED}")
    task = yolo.task or guess_model_task(module)
    if task not in SUPPORTED_TASKS:
        raise ValueError(f"{what} is a '{task}' model; only detection models (task 'detect') are supported for now")
    head = module.model[-1] if isinstance(getattr(module, "model", None), torch.nn.Sequential) else None
    if not isinstance(module, DetectionModel) or not isinstance(head, Detect):
        raise ValueError(f"{what} is not a YOLO detection model (no Detect head); {ACCEPTED}")
    return yolo


def _fp32_copy(module: torch.nn.Module) -> torch.nn.Module:
    """Return a detached FP32 copy of ``module`` ready to pickle: no gradients, no criterion, no QAT wrappers."""
    copy = deepcopy(module).float().to(memory_format=torch.contiguous_format)
    for p in copy.parameters():
        p.grad = None
    if hasattr(copy, "criterion"):
        copy.criterion = None  # training-only state, rebuilt on demand
    strip_qat(copy)
    return copy


def _train_args(module: torch.nn.Module, base: dict) -> dict:
    """Merge the checkpoint's and the module's arguments, keeping only known Ultralytics configuration keys."""
    args = getattr(module, "args", None)
    args = vars(args) if hasattr(args, "__dict__") and not isinstance(args, dict) else (args or {})
    merged = {**(base.get("train_args") or {}), **args}
    return {k: v for k, v in merged.items() if k in DEFAULT_CFG_KEYS}


def _check_plain(value: Any, where: str) -> None:
    """Raise a ValueError if ``value`` is not built only from dict, list, tuple, str, int, float, bool and None."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain(k, where)
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    raise ValueError(f"extra value {where} is a {type(value).__name__}; store only plain dicts, lists, str and numbers")


def _pickle_globals(source: str | Path | io.BytesIO) -> set[str]:
    """Return the ``module.name`` globals referenced by the pickle inside a torch zip checkpoint (read, not run)."""
    with zipfile.ZipFile(source) as zf:
        names = [n for n in zf.namelist() if n.endswith("data.pkl")]
        data = zf.read(names[0]) if names else b""
    found = set()
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in {"GLOBAL", "INST"}:  # torch.save uses pickle protocol 2: globals are "module name"
            found.add(".".join(str(arg).split(" ", 1)))
    return found


def _importable(root: str) -> bool:
    """Return True if the top-level module ``root`` is stock or can be imported here, without importing it."""
    if root in STOCK_ROOTS:
        return True
    try:
        return importlib.util.find_spec(root) is not None
    except (ImportError, ValueError):
        return False


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the checkpoint the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
