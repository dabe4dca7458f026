"""`yolo-prune prune`: validate, prune (in one or more steps), fine-tune, measure and report in one run folder.

Everything a run writes goes into ``project/name`` (incremented: ``exp``, ``exp-2``, ...); the input model is only
read. Layout of a run folder::

    exp/
        weights/pruned.pt           pruned, not fine-tuned, FP32 (written before any training)
        weights/step<k>-pruned.pt   per-step pruned models when steps > 1
        weights/best.pt, last.pt    the final fine-tuned model (copies of the chosen step's trainer output)
        step<k>/                    the Ultralytics trainer's own run for step k (weights/last.pt saved every epoch)
        measure/                    validation and ONNX exports of the measured models
        report.json, report.md, results.csv, pareto.png

Resuming: an interrupted fine-tune leaves ``exp/step<k>/weights/last.pt`` (and always ``weights/pruned.pt``). Resume
the fine-tune with the pruned trainer (the stock one would rebuild the unpruned network)::

    from ultralytics import YOLO
    from yolo_prune.trainer import PrunedDetectionTrainer

    YOLO("runs/prune/exp/step1/weights/last.pt").train(resume=True, trainer=PrunedDetectionTrainer)

Examples:
    >>> from yolo_prune.pipeline import run_prune
    >>> run_dir = run_prune(model="best.pt", data="data.yaml", ratio=0.5, steps=2, epochs=10, imgsz=320)
    >>> (run_dir / "weights" / "best.pt").is_file()
    True
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .args import did_you_mean, is_none, resolve_device

__all__ = [
    "PRUNE_DEFAULTS",
    "PruneInterrupted",
    "budget_exceeded",
    "check_dataset_matches",
    "parse_prune_args",
    "run_prune",
    "step_ratio",
]

PRUNE_DEFAULTS: dict[str, Any] = {
    "model": None,  # required: local .pt checkpoint (or a model yaml for a randomly initialised net)
    "data": None,  # required: dataset yaml, or a built-in name (shapes.yaml, shapes-tiny.yaml)
    "ratio": 0.5,  # final fraction of the original prunable channels removed, in [0, 1)
    "steps": 1,  # pruning rounds toward ratio, each followed by `epochs` of fine-tuning
    "epochs": 10,  # fine-tuning epochs per step; 0 = prune only
    "imgsz": 640,  # training, validation, GFLOPs and latency image size
    "batch": 16,  # training and validation batch size
    "device": None,  # None = as Ultralytics: the first GPU when there is one, else the CPU
    "method": "l2",  # channel importance (yolo_prune.importance.IMPORTANCE_METHODS: l1, l2, bn, lamp, taylor, ...)
    "global_pruning": False,  # rank channels across layers instead of removing `ratio` of every layer
    "round_to": 8,  # kept widths are multiples of this
    "max_map_drop": None,  # stop the schedule once mAP50-95 is more than this below the baseline (absolute)
    "backends": "torch",  # latency backends: torch, onnx (comma-separated)
    "runs": 50,  # timed latency runs per backend
    "warmup": 10,  # untimed latency runs per backend
    "threads": None,  # CPU threads for latency; None = every usable core
    "seed": 0,  # pruning seed (random method) and trainer seed
    "project": "runs/prune",
    "name": "exp",
}

# Ultralytics keys that the pipeline sets itself, or that would break it
RESERVED_TRAIN_KEYS = frozenset(
    {"model", "data", "epochs", "imgsz", "batch", "device", "project", "name", "exist_ok", "mode", "task"}
    | {"resume", "pretrained", "cfg", "save_dir"}
)
_INT_KEYS = {"steps": 1, "epochs": 0, "imgsz": 32, "batch": 1, "round_to": 1, "runs": 1, "warmup": 0, "seed": 0}


class PruneInterrupted(KeyboardInterrupt):
    """A ``KeyboardInterrupt`` during `run_prune` that knows the run folder and the last good model.

    Attributes:
        run_dir (Path): The run folder.
        last_good (Path | None): The most recent complete checkpoint written by the run (None before the first).
    """

    def __init__(self, run_dir: Path, last_good: Path | None):
        """Store where the interrupted run was and what it left."""
        super().__init__(f"interrupted; last good model: {last_good or 'none yet'}")
        self.run_dir = run_dir
        self.last_good = last_good
        self.resume_hint = (
            f"resume the fine-tune with: YOLO('{last_good}').train(resume=True, trainer=PrunedDetectionTrainer)"
            if last_good is not None and last_good.name == "last.pt" and last_good.parents[2] == run_dir
            else None
        )


def _as_int(key: str, value: Any, minimum: int) -> int:
    """Return ``value`` as an int >= ``minimum`` or raise a one-line ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{key}={value!r} must be an integer >= {minimum}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{key}={value!r} must be an integer >= {minimum}") from None
    if not number.is_integer() or number < minimum:
        raise ValueError(f"{key}={value!r} must be an integer >= {minimum}")
    return int(number)


def _as_float(key: str, value: Any) -> float:
    """Return ``value`` as a finite float or raise a one-line ValueError."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"{key}={value!r} must be a number")
    return number


def parse_prune_args(overrides: dict[str, Any]) -> dict[str, Any]:
    """Check `run_prune` arguments in one place and return them merged with `PRUNE_DEFAULTS`.

    Keys are `PRUNE_DEFAULTS` plus any Ultralytics training argument (``lr0``, ``workers``, ``patience``, ...; checked
    against ``ultralytics.cfg.DEFAULT_CFG_DICT`` and its type rules); the latter are returned under ``train_args``.

    Args:
        overrides (dict[str, Any]): User arguments (typed values, or strings as parsed by ``smart_value``).

    Returns:
        (dict[str, Any]): Every `PRUNE_DEFAULTS` key with a checked value, plus ``train_args`` (dict).

    Raises:
        ValueError: On an unknown key (naming the closest valid one), a missing ``model``/``data``, or a bad value.

    Examples:
        >>> parse_prune_args({"model": "best.pt", "data": "data.yaml", "ratio": 0.3, "lr0": 0.002})["train_args"]
        {'lr0': 0.002}
    """
    from ultralytics.cfg import DEFAULT_CFG_DICT, check_cfg

    from .importance import IMPORTANCE_METHODS
    from .measure import resolve_backends
    from .prune import check_ratio

    overrides = dict(overrides)
    train_args = {k: overrides.pop(k) for k in list(overrides) if k not in PRUNE_DEFAULTS and k in DEFAULT_CFG_DICT}
    for key in overrides:
        if key not in PRUNE_DEFAULTS:
            valid = [*PRUNE_DEFAULTS, *(k for k in DEFAULT_CFG_DICT if k not in RESERVED_TRAIN_KEYS)]
            raise ValueError(f"unknown argument '{key}'{did_you_mean(key, valid)}; see 'yolo-prune help'")
    bad = sorted(set(train_args) & RESERVED_TRAIN_KEYS)
    if bad:
        raise ValueError(f"argument '{bad[0]}' is not supported by yolo-prune prune (the pipeline sets it itself)")
    try:
        check_cfg(train_args, hard=True)
    except (TypeError, ValueError) as e:
        raise ValueError(str(e)) from None

    args = {**PRUNE_DEFAULTS, **overrides}
    for key in ("model", "data"):
        if is_none(args[key]):
            raise ValueError(
                f"missing required argument {key}=...; e.g. 'yolo-prune prune model=best.pt data=data.yaml'"
            )
        args[key] = str(args[key])
    args["ratio"] = check_ratio(args["ratio"])
    for key, minimum in _INT_KEYS.items():
        args[key] = _as_int(key, args[key], minimum)
    args["threads"] = None if is_none(args["threads"]) else _as_int("threads", args["threads"], 1)
    if is_none(args["max_map_drop"]):
        args["max_map_drop"] = None
    else:
        args["max_map_drop"] = _as_float("max_map_drop", args["max_map_drop"])
        if not 0.0 <= args["max_map_drop"] < 1.0:
            raise ValueError(f"max_map_drop={args['max_map_drop']} must be in [0, 1) (absolute mAP50-95 points)")
    method = str(args["method"]).lower()
    if method not in IMPORTANCE_METHODS:
        raise ValueError(f"unknown method '{args['method']}'; choose one of {', '.join(IMPORTANCE_METHODS)}")
    args["method"] = method
    if not isinstance(args["global_pruning"], bool):
        raise ValueError(f"global_pruning={args['global_pruning']!r} must be True or False")
    args["device"] = resolve_device(args["device"])
    backends = args["backends"]
    backends = [b.strip() for b in backends.split(",")] if isinstance(backends, str) else [str(b) for b in backends]
    labels, errors = resolve_backends(backends, args["device"])
    if errors or not labels:
        raise ValueError(next(iter(errors.values()), "backends= must name at least one backend (torch, onnx)"))
    args["backends"] = tuple(b for b in backends if b)
    args["project"], args["name"] = str(args["project"]), str(args["name"])
    if not args["name"] or Path(args["name"]).name != args["name"]:
        raise ValueError(f"name={args['name']!r} must be a plain folder name (use project= for the parent folder)")
    args["train_args"] = train_args
    return args


def step_ratio(ratio: float, steps: int) -> float:
    """Return the per-step ratio that removes ``ratio`` of the original channels after ``steps`` equal steps.

    Each step removes the same fraction of what is left: ``1 - (1 - ratio) ** (1 / steps)``.

    Args:
        ratio (float): Final fraction removed, in [0, 1).
        steps (int): Number of steps (>= 1).

    Returns:
        (float): The fraction to remove at each step.

    Examples:
        >>> round(step_ratio(0.75, 2), 6)
        0.5
    """
    return 1.0 - (1.0 - ratio) ** (1.0 / steps)


def budget_exceeded(baseline_map: float | None, map50_95: float | None, max_map_drop: float | None) -> bool:
    """Return True when ``map50_95`` is more than ``max_map_drop`` (absolute points) below ``baseline_map``.

    A missing budget never stops the schedule, and neither does a missing baseline (without one the budget cannot be
    applied; `run_prune` warns once). A missing measurement of the checked model (its validation failed) does.

    Args:
        baseline_map (float | None): Baseline mAP50-95.
        map50_95 (float | None): mAP50-95 of the model being checked.
        max_map_drop (float | None): Allowed drop; None = no budget.

    Returns:
        (bool): Whether the model is outside the budget.
    """
    if max_map_drop is None or baseline_map is None:
        return False
    if map50_95 is None:
        return True
    return baseline_map - map50_95 > max_map_drop + 1e-12


def check_dataset_matches(data: str, nc: int) -> dict:
    """Load the dataset description and check that it has ``nc`` classes, before anything slow starts.

    Args:
        data (str): Dataset yaml (already resolved).
        nc (int): Number of classes of the model's head.

    Returns:
        (dict): The dataset description from ``check_det_dataset``.

    Raises:
        FileNotFoundError: If the dataset yaml or its images are missing.
        ValueError: If the class counts differ or the yaml is not a detection dataset.
    """
    from ultralytics.data.utils import check_det_dataset

    if str(data).lower().endswith((".yaml", ".yml")) and os.sep in str(data) and not Path(data).is_file():
        raise FileNotFoundError(f"dataset file '{data}' not found")
    try:
        info = check_det_dataset(data)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"dataset '{data}' not found: {str(e).strip().splitlines()[0]}") from None
    except Exception as e:  # Ultralytics raises SyntaxError, KeyError, ConnectionError... on bad datasets
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot use dataset '{data}': {reason}") from None
    if int(info["nc"]) != int(nc):
        raise ValueError(
            f"dataset '{data}' has {info['nc']} classes but the model has {nc}: a pruned model keeps its head, so "
            "fine-tune it on data with the same classes"
        )
    return info


def _copy_atomic(src: Path, dst: Path) -> Path:
    """Copy ``src`` to ``dst`` through a temporary file in the destination folder and ``os.replace``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the copy the usual permissions
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst


def _measure(model: Any, name: str, path: Path | str | None, args: dict, out_dir: Path) -> dict:
    """Measure one model (an in-memory module, so every row's size is the same FP16 ``YOLO.save`` convention)."""
    from .measure import measure_model

    row = measure_model(
        model,
        data=args["data"],
        imgsz=args["imgsz"],
        batch=1,
        device=args["device"],
        backends=args["backends"],
        runs=args["runs"],
        warmup=args["warmup"],
        out_dir=out_dir,
        name=name,
        val_batch=args["batch"],
        threads=args["threads"],
    )
    row["path"] = str(path) if path is not None else None
    return row


def _fine_tune(ckpt: Path, run_dir: Path, step: int, args: dict) -> tuple[Path, Path]:
    """Fine-tune ``ckpt`` with the pruned trainer into ``run_dir/step<k>``; return its (best, last) checkpoints."""
    from ultralytics import YOLO

    from .trainer import PrunedDetectionTrainer

    yolo = YOLO(str(ckpt))
    train_args = {"seed": args["seed"], **args["train_args"]}
    yolo.train(
        trainer=PrunedDetectionTrainer,
        data=args["data"],
        epochs=args["epochs"],
        imgsz=args["imgsz"],
        batch=args["batch"],
        device=args["device"],
        project=str(run_dir),
        name=f"step{step}",
        exist_ok=False,
        **train_args,
    )
    trainer = yolo.trainer
    last = Path(trainer.last)
    best = Path(trainer.best) if Path(trainer.best).is_file() else last
    if not last.is_file():
        raise RuntimeError(f"fine-tuning step {step} wrote no checkpoint in {trainer.save_dir}")
    return best, last


def run_prune(command: str | None = None, **kwargs: Any) -> Path:
    """Prune a YOLO detector toward ``ratio`` in ``steps`` rounds, fine-tune after each, measure and report.

    Arguments are those of `PRUNE_DEFAULTS` plus any Ultralytics training argument (see `parse_prune_args`). The
    steps: (1) measure the baseline (mAP50-95, mAP50, params, GFLOPs, size, latency); (2) for each step, prune the
    current model by `step_ratio` with ``yolo_prune.prune.prune``, save ``weights/pruned.pt`` at once (FP32), then
    fine-tune it for ``epochs`` with `PrunedDetectionTrainer` and measure it; with ``max_map_drop`` the schedule stops
    at the first step whose mAP50-95 falls more than that below the baseline, and the last step within the budget
    becomes the final model; (3) copy the final model to ``weights/best.pt`` and ``weights/last.pt``; (4) write
    ``report.json``/``report.md``/``results.csv``/``pareto.png`` and log the table.

    Args:
        command (str, optional): The command line, recorded in the report.
        **kwargs (Any): ``model``, ``data`` (required) and any other `PRUNE_DEFAULTS` or Ultralytics training key.

    Returns:
        (Path): The run folder.

    Raises:
        ValueError: On bad arguments, an unreadable model, or a dataset whose classes differ from the model's.
        FileNotFoundError: If the dataset is missing.
        PruneInterrupted: On Ctrl-C, with the last good checkpoint written so far.

    Examples:
        >>> run_prune(model="best.pt", data="shapes.yaml", ratio=0.5, epochs=3, imgsz=160, lr0=0.002)
        PosixPath('runs/prune/exp')
    """
    from ultralytics.utils import LOGGER, colorstr
    from ultralytics.utils.files import increment_path

    from .checkpoint import load_yolo, save_checkpoint
    from .data import resolve_data
    from .prune import prune
    from .report import format_table, write_report

    prefix = colorstr("prune: ")
    args = parse_prune_args(kwargs)
    args["data"] = resolve_data(args["data"])
    baseline = load_yolo(args["model"])  # ValueError for a missing or unreadable model; the file is only read
    nc = int(baseline.model.model[-1].nc)
    check_dataset_matches(args["data"], nc)

    run_dir = increment_path(Path(args["project"]) / args["name"], mkdir=True)
    weights = run_dir / "weights"
    measure_dir = run_dir / "measure"
    per_step = step_ratio(args["ratio"], args["steps"])
    LOGGER.info(
        f"{prefix}{args['model']} -> {colorstr('bold', run_dir)}: ratio={args['ratio']} in {args['steps']} step(s) "
        f"of {per_step:.4f}, {args['epochs']} fine-tuning epoch(s) each, method={args['method']}"
    )
    last_good: Path | None = None
    step = 0  # the step in progress
    notes: list[str] = []
    try:
        LOGGER.info(f"{prefix}measuring the baseline")
        rows = [_measure(baseline.model, "baseline", args["model"], args, measure_dir)]
        base_map = rows[0].get("map50_95")
        LOGGER.info(f"{prefix}baseline mAP50-95={_f(base_map)} mAP50={_f(rows[0].get('map50'))}")
        if args["max_map_drop"] is not None and base_map is None:
            msg = (
                f"max_map_drop={args['max_map_drop']} is not applied: the baseline could not be validated, so there "
                "is no mAP50-95 to measure the drop from; every step of the schedule runs"
            )
            LOGGER.warning(f"{prefix}{msg}")
            notes.append(msg)

        current = baseline
        steps: list[dict] = []  # per finished step: row and checkpoints
        stopped_at = None
        for step in range(1, args["steps"] + 1):
            LOGGER.info(f"{prefix}step {step}/{args['steps']}: pruning {per_step:.4f} of the remaining channels")
            pruned = prune(
                current,
                per_step,
                method=args["method"],
                round_to=args["round_to"],
                seed=args["seed"],
                global_pruning=args["global_pruning"],
                data=args["data"],  # calibration images for gradient methods (taylor, hessian)
                device=args["device"],
                imgsz=args["imgsz"],
            )
            meta = {
                "ratio": args["ratio"],
                "step_ratio": per_step,
                "step": step,
                "steps": args["steps"],
                "method": args["method"],
                "global_pruning": args["global_pruning"],
                "round_to": args["round_to"],
                "source": str(args["model"]),
                "fine_tuned_epochs": 0,
            }
            pruned_path = save_checkpoint(pruned, weights / "pruned.pt", yolo_prune=meta)
            last_good = pruned_path
            if args["steps"] > 1:
                _copy_atomic(pruned_path, weights / f"step{step}-pruned.pt")
            if args["epochs"] > 0:
                best, last = _fine_tune(
                    weights / f"step{step}-pruned.pt" if args["steps"] > 1 else pruned_path, run_dir, step, args
                )
                last_good = best
            else:
                best = last = weights / f"step{step}-pruned.pt" if args["steps"] > 1 else pruned_path
            current = load_yolo(str(best))
            row = _measure(current.model, f"step{step}", best, args, measure_dir)
            row["step"] = step
            steps.append({"row": row, "best": best, "last": last})
            LOGGER.info(f"{prefix}step {step}: mAP50-95={_f(row.get('map50_95'))} (baseline {_f(base_map)})")
            if budget_exceeded(base_map, row.get("map50_95"), args["max_map_drop"]):
                stopped_at = step
                break

        chosen = steps[-1]
        if stopped_at is not None:
            within = [s for s in steps if not budget_exceeded(base_map, s["row"].get("map50_95"), args["max_map_drop"])]
            if within:
                chosen = within[-1]
                msg = (
                    f"stopped after step {stopped_at}: mAP50-95 {_f(steps[-1]['row'].get('map50_95'))} is more than "
                    f"max_map_drop={args['max_map_drop']} below the baseline {_f(base_map)}; the final model is "
                    f"step {chosen['row']['step']}, the last one within the budget"
                )
            else:
                msg = (
                    f"step 1 already drops mAP50-95 more than max_map_drop={args['max_map_drop']} below the baseline "
                    f"({_f(steps[0]['row'].get('map50_95'))} vs {_f(base_map)}); the final model is step 1, the least "
                    "pruned one; try a smaller ratio, more steps or more epochs"
                )
            LOGGER.warning(f"{prefix}{msg}")
            notes.append(msg)

        best_out = _copy_atomic(chosen["best"], weights / "best.pt")
        _copy_atomic(chosen["last"], weights / "last.pt")
        last_good = best_out
        final = {**chosen["row"], "name": "final", "path": str(best_out), "from_step": chosen["row"]["step"]}
        rows += [s["row"] for s in steps] if args["steps"] > 1 else []
        rows.append(final)
    except KeyboardInterrupt as e:
        trainer_last = run_dir / f"step{step}" / "weights" / "last.pt"
        if step and trainer_last.is_file() and (last_good is None or last_good.name == "pruned.pt"):
            last_good = trainer_last  # a fine-tune was running: its last epoch is newer than the pruned model
        raise PruneInterrupted(run_dir, last_good) from e

    notes.append(
        f"ratio={args['ratio']} in {args['steps']} step(s) of {per_step:.4f} ({args['method']}, round_to="
        f"{args['round_to']}), {args['epochs']} fine-tuning epoch(s) per step at imgsz={args['imgsz']}"
    )
    if args["max_map_drop"] is not None:
        notes.append(f"max_map_drop={args['max_map_drop']} (absolute mAP50-95 below the baseline)")
    notes.append("size_mb: the model saved as YOLO.save() writes it (FP16); weights/pruned.pt is FP32")
    files = write_report(rows, run_dir, title="yolo-prune prune", command=command, notes=notes)
    LOGGER.info(f"{prefix}results (first row is the baseline):\n{format_table(rows)}")
    LOGGER.info(
        f"{prefix}final model {colorstr('bold', weights / 'best.pt')}; report: "
        f"{', '.join(str(p.relative_to(run_dir)) for p in files.values())} in {run_dir}"
    )
    return run_dir


def _f(x: Any) -> str:
    """Format an mAP value for the log."""
    return "-" if x is None else f"{float(x):.4f}"
