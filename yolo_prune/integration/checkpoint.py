"""Load YOLO models (detect, segment, pose, obb) and save pruned ones as plain Ultralytics checkpoints.

A pruned checkpoint written by `save_checkpoint` has the same layout as one written by `YOLO.save()`: a dict whose
``"model"`` entry is the whole pickled module. It refers only to classes of ``torch``, ``ultralytics``, ``numpy`` and
the Python standard library, so stock Ultralytics loads, validates, predicts and exports it in a process that never
imports ``yolo_prune``.

Examples:
    >>> from yolo_prune.integration.checkpoint import load_yolo, save_checkpoint
    >>> yolo = load_yolo("yolo11n.yaml")  # random init; a YOLO object or a local .pt are accepted too
    >>> save_checkpoint(yolo, "pruned.pt", yolo_prune={"ratio": 0.5, "method": "l2"})

Over 400 lines: loading, checking (task, plain classes, a forward pass under this Ultralytics) and atomic saving share
the checks of what a plain checkpoint may hold.
"""

from __future__ import annotations

import io
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
from ultralytics.nn.tasks import DetectionModel, PoseModel, guess_model_task
from ultralytics.utils import DEFAULT_CFG_KEYS, LOGGER, SETTINGS, colorstr
from ultralytics.utils.torch_utils import is_qat, qat_state, strip_qat

from ..config.checks import installed
from .compat import migrate_layouts

__all__ = ["check_forward_pass", "load_yolo", "save_checkpoint"]

PREFIX = colorstr("yolo-prune: ")
SUPPORTED_TASKS = ("detect", "segment", "pose", "obb")  # the tasks of yolo_prune.rules.tasks.TASKS
EXPECTED_PT = "expected a .pt from YOLO.save(), training (best.pt/last.pt) or yolo_prune.save_checkpoint"
ZIP_MAGIC = b"PK\x03\x04"
LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)  # first record of a legacy (non-zip) torch.save file
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


def load_yolo(
    model: YOLO | str | Path | torch.nn.Module, *, nc: int | None = None, kpt_shape: list[int] | None = None
) -> YOLO:
    """Return an Ultralytics ``YOLO`` model from a YOLO object, a local ``.pt`` checkpoint or a model yaml.

    Detect, segment, pose and obb models are accepted (``SUPPORTED_TASKS``); a classify model or another task is
    refused in one line.

    This is the package's one checkpoint reader. A ``YOLO`` object is returned as is (the pruner works on a deep copy,
    so the caller's object is never changed). A bare detection module is loaded back through a temporary FP32
    checkpoint, so the returned object owns a copy. A ``.pt`` path must exist locally: nothing is downloaded; its
    format is checked before anything is unpickled, so every damaged file (empty, truncated, random bytes, bad zip or
    CRC, pickle garbage, wrong object, missing modules) is refused with a one-line ``ValueError``. A model saved in an
    older Ultralytics layout is migrated (see `yolo_prune.integration.compat`), and the model must run one forward at a
    small size. A yaml name builds a randomly initialised model. The input file is only read.

    Args:
        model (YOLO | str | Path | nn.Module): ``YOLO`` object, path to a ``.pt`` checkpoint, model yaml name or path,
            or an Ultralytics detection module.
        nc (int, optional): For a model yaml, build the head with this many classes (as ``yolo train
            model=x.yaml data=...`` does); checkpoints and objects keep their own head.
        kpt_shape (list[int], optional): For a pose model yaml, build the head with these keypoints (the dataset's
            ``kpt_shape``, as ``yolo train`` does).

    Returns:
        (YOLO): The loaded model.

    Raises:
        ValueError: If the file is missing, is not a YOLO checkpoint, the yaml is unknown, the input type is not
            supported, or the model's task is not one of ``SUPPORTED_TASKS``.

    Examples:
        >>> yolo = load_yolo("yolov5nu.yaml")
        >>> yolo = load_yolo("runs/detect/train/weights/best.pt")
    """
    if isinstance(model, Model):
        return _check_detector(model, "the given YOLO object")
    if isinstance(model, torch.nn.Module):
        return _check_detector(_yolo_from_module(model), f"the given {type(model).__name__}")
    if not isinstance(model, (str, Path)):
        raise ValueError(f"cannot load a model from a {type(model).__name__}: {ACCEPTED}")
    name = str(model).strip()
    suffix = Path(name).suffix.lower()
    if suffix in {".yaml", ".yml"}:
        return _check_detector(_yolo_from_yaml(name, nc, kpt_shape), f"'{name}'")
    if suffix == ".pt":
        return check_forward_pass(_check_detector(_yolo_from_checkpoint(name), f"'{name}'"), f"'{name}'")
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


def _yolo_from_yaml(name: str, nc: int | None = None, kpt_shape: list[int] | None = None) -> YOLO:
    """Build a randomly initialised YOLO from a yaml name or path (with ``nc`` classes and, for a pose model,
    ``kpt_shape`` keypoints when given), turning build failures into ValueErrors."""
    try:
        yolo = YOLO(name)
        old = yolo.model
        head = old.model[-1] if isinstance(old, DetectionModel) else None
        kwargs = {}
        if nc is not None and head is not None and int(head.nc) != int(nc):
            kwargs["nc"] = int(nc)
        if kpt_shape is not None and isinstance(old, PoseModel) and list(head.kpt_shape) != list(kpt_shape):
            kwargs["data_kpt_shape"] = tuple(kpt_shape)
        if kwargs:
            yolo.model = type(old)(old.yaml, verbose=False, **{"nc": int(head.nc), **kwargs})
            yolo.model.args, yolo.model.task = old.args, getattr(old, "task", yolo.task)
        return yolo
    except FileNotFoundError as e:
        raise ValueError(
            f"unknown model yaml '{name}': no such file nor Ultralytics model config (e.g. 'yolo11n.yaml')"
        ) from e
    except NotImplementedError as e:  # e.g. rtdetr-l.yaml: the YOLO class has no such task
        raise ValueError(
            f"'{name}' is not a YOLO detection model yaml; supported tasks: {', '.join(SUPPORTED_TASKS)}"
        ) from e
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise ValueError(f"'{name}' is not a YOLO model yaml ({type(e).__name__}: {e}); {ACCEPTED}") from e


def _yolo_from_checkpoint(name: str, shown: str | None = None) -> YOLO:
    """Load a local YOLO checkpoint without letting Ultralytics download or auto-install anything.

    The file's format is checked before anything is unpickled (a torch zip archive with intact CRCs, or a legacy torch
    file), so damaged files are refused with one line instead of whatever the unpickler raises on garbage
    (``MemoryError``, ``OverflowError``, ``UnicodeDecodeError``, ...). A model saved in an older Ultralytics layout is
    migrated (`yolo_prune.integration.compat`), then run once at a small size.
    """
    shown = shown or f"'{name}'"
    file = Path(name).expanduser()
    if not file.is_file() and not file.is_absolute() and (Path(SETTINGS["weights_dir"]) / file).is_file():
        file = Path(SETTINGS["weights_dir"]) / file  # same local lookup as Ultralytics, minus the download
    if not file.is_file():
        raise ValueError(f"checkpoint {shown} not found: no such local file (nothing is downloaded); {ACCEPTED}")
    problem = _format_problem(file)
    if problem:
        raise ValueError(f"{shown} is not an Ultralytics YOLO checkpoint: {problem}; {EXPECTED_PT}")
    if zipfile.is_zipfile(file):
        missing = sorted(g for g in _pickle_globals(file) if not _importable(g.split(".")[0]))
        if missing:
            raise ValueError(
                f"{shown} needs classes from modules that are not installed ({', '.join(missing[:3])}); "
                "save pruned models with yolo_prune.save_checkpoint so that they hold only stock classes"
            )
    try:
        yolo = YOLO(str(file))
    except Exception as e:  # noqa: BLE001 - any failure of the unpickler means the same thing: not a usable file
        raise ValueError(f"{shown} is not an Ultralytics YOLO checkpoint: {_load_reason(e)}; {EXPECTED_PT}") from e
    student = getattr(yolo.model, "student_model", None)
    if isinstance(student, torch.nn.Module):  # a distillation run's mid-training checkpoint: its student is the model
        yolo.model = student
    if isinstance(yolo.model, torch.nn.Module):
        changed = migrate_layouts(yolo.model)
        if changed:
            LOGGER.info(
                f"{PREFIX}{shown} was saved by Ultralytics {_saved_version(yolo)}: migrated {len(changed)} module(s) "
                f"to the layout of {__version__} ({changed[0]}{', ...' if len(changed) > 1 else ''})"
            )
    return yolo


def check_forward_pass(yolo: YOLO, what: str) -> YOLO:
    """Return ``yolo`` if its model runs one eval forward at a small size, else raise a one-line ValueError.

    A checkpoint can unpickle and still fail in the installed Ultralytics (a module whose attributes changed between
    releases). The message names the error and both Ultralytics versions. Weights, BatchNorm statistics and the
    train/eval mode are left as they were.

    Args:
        yolo (YOLO): A loaded detector.
        what (str): How to name it in the message, e.g. ``"'best.pt'"``.

    Returns:
        (YOLO): ``yolo`` itself.

    Raises:
        ValueError: If the forward fails.
    """
    module = yolo.model
    stride = int(max(getattr(module, "stride", torch.tensor([32])).tolist()))
    p = next(module.parameters())
    x = torch.zeros(1, 3, 2 * stride, 2 * stride, device=p.device, dtype=p.dtype)
    was_training = module.training
    try:
        with torch.no_grad():
            module.eval()(x)
    except Exception as e:  # noqa: BLE001 - whatever breaks, the model cannot be pruned or used
        raise ValueError(
            f"{what} loads but does not run under the installed Ultralytics {__version__} (saved by Ultralytics "
            f"{_saved_version(yolo)}): {_first_line(e)}; re-export it with the Ultralytics that saved it, or install "
            "that version"
        ) from e
    finally:
        module.train(was_training)
    return yolo


def _saved_version(yolo: YOLO) -> str:
    """Return the Ultralytics version recorded in the checkpoint ``yolo`` was loaded from, or ``"unknown"``."""
    ckpt = getattr(yolo, "ckpt", None)
    return str(ckpt.get("version") or "unknown") if isinstance(ckpt, dict) else "unknown"


def _yolo_from_module(module: torch.nn.Module) -> YOLO:
    """Load a copy of ``module`` as a ``YOLO`` object through a temporary FP32 checkpoint."""
    copy = _fp32_copy(module).cpu()
    with tempfile.TemporaryDirectory(prefix="yolo_prune_") as tmp:
        path = Path(tmp) / "model.pt"
        torch.save({"model": copy, "train_args": _train_args(copy, {})}, path)
        return _yolo_from_checkpoint(str(path), f"the given {type(module).__name__}")


def _format_problem(file: Path) -> str | None:
    """Return why ``file`` is not a readable PyTorch file (checked without unpickling), or None if it looks sound."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(len(LEGACY_MAGIC))
    except OSError as e:
        return f"it cannot be read ({e.strerror or type(e).__name__})"
    if size == 0:
        return "the file is empty (0 bytes)"
    if head.startswith(ZIP_MAGIC):
        return _zip_problem(file)
    if head == LEGACY_MAGIC:
        return None  # legacy (pre-zip) torch format: the unpickler's errors are caught by the caller
    if head[:1] in (b"{", b"[", b"#") or all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "it is a text file, not a PyTorch file"
    return "the file is not a PyTorch file (neither a torch zip archive nor a legacy torch file)"


def _zip_problem(file: Path) -> str | None:
    """Return why the zip archive ``file`` is not an intact torch checkpoint, or None (CRCs checked, nothing loaded)."""
    try:
        with zipfile.ZipFile(file) as zf:
            names = zf.namelist()
            if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
                return "it is a zip archive without the data.pkl record of a torch.save() file"
            bad = zf.testzip()
    except Exception as e:  # noqa: BLE001 - zipfile raises BadZipFile, EOFError, OSError, ValueError, ... on damage
        return f"the file is truncated or damaged (zip archive unreadable: {_first_line(e)})"
    if bad is not None:
        return f"the file is damaged (CRC check failed for record '{bad}')"
    return None


def _load_reason(e: BaseException) -> str:
    """Translate an exception raised while Ultralytics unpickled a checkpoint into a short reason."""
    reason = _first_line(e)
    if "Can't get attribute" in reason or isinstance(e, (ImportError, ModuleNotFoundError)):
        return f"it needs a class the installed Ultralytics {__version__} does not have ({reason})"
    if "references types outside" in reason or isinstance(e, (AttributeError, KeyError)):
        return "it holds no YOLO model module (a plain state_dict?)"
    if "not a loadable checkpoint" in reason or isinstance(e, (EOFError, pickle.UnpicklingError, MemoryError)):
        return "the file is empty, truncated or not a PyTorch file"
    return f"it could not be read ({reason})"


def _first_line(e: BaseException, limit: int = 160) -> str:
    """Return ``Type: first line of the message``, shortened to ``limit`` characters."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_detector(yolo: YOLO, what: str) -> YOLO:
    """Return ``yolo`` if it wraps a PyTorch model of a supported task, else raise a ValueError naming the problem."""
    module = yolo.model
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"{what} is not a PyTorch model (exported formats cannot be pruned); {ACCEPTED}")
    task = yolo.task or guess_model_task(module)
    if task not in SUPPORTED_TASKS:
        raise ValueError(f"{what} is a '{task}' model; supported tasks: {', '.join(SUPPORTED_TASKS)}")
    head = module.model[-1] if isinstance(getattr(module, "model", None), torch.nn.Sequential) else None
    if not isinstance(module, DetectionModel) or not isinstance(head, Detect):
        raise ValueError(f"{what} is not a YOLO detection model (no Detect head); {ACCEPTED}")
    if is_qat(module):
        raise ValueError(
            f"{what} is a quantization-aware (QAT) model: prune the FP32 model it was trained from, then add qat=True "
            "(its fixed quantization ranges do not survive removing channels)"
        )
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
    return root in STOCK_ROOTS or installed(root)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace`` (fsynced first)."""
    from ..measurement.report import write_atomic

    write_atomic(path, data)
