"""The work of each stage of a pruning run (`yolo_prune.integration.engine.PruneRun`), as plain functions.

Loading the input model and the distillation teacher (each read once), checking the dataset against the model,
training a module in memory with the pruned trainer of its task, the sensitivity scan, measuring and timing the
report's rows, INT8 rows, and the step schedule (`step_ratio`, `budget_exceeded`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "PruneInterrupted",
    "budget_exceeded",
    "check_dataset_matches",
    "copy_atomic",
    "int8_rows",
    "latency_note",
    "load_teacher",
    "load_input",
    "measure_row",
    "resolve_teacher",
    "sensitivity_curves",
    "step_ratio",
    "time_side_by_side",
    "train_module",
]

SCAN_RECONSTRUCT_IMAGES = 64  # calibration images of the re-fit inside the sensitivity scan (one per scanned cut)


class PruneInterrupted(KeyboardInterrupt):
    """A ``KeyboardInterrupt`` during `run_prune` that knows the run folder and the last good model.

    Attributes:
        run_dir (Path): The run folder.
        last_good (Path | None): The most recent complete checkpoint written by the run (None before the first).
    """

    def __init__(self, run_dir: Path, last_good: Path | None, trainer: str = "PrunedDetectionTrainer"):
        """Store where the interrupted run was and what it left (``trainer``: the pruned trainer of its task)."""
        super().__init__(f"interrupted; last good model: {last_good or 'none yet'}")
        self.run_dir = run_dir
        self.last_good = last_good
        self.resume_hint = (
            f"resume the fine-tune with: YOLO('{last_good}').train(resume=True, trainer={trainer})"
            if last_good is not None and last_good.name == "last.pt" and last_good.parents[2] == run_dir
            else None
        )


def latency_note(target: dict) -> str:
    """Return the report line for a latency target: the goal, what the latency model predicted, what was measured."""
    line = (
        f"target_latency={target['target']:g} on {target.get('backend')} at imgsz {target.get('imgsz')}: "
        f"predicted {target['achieved']:.1%} of the unpruned latency"
    )
    timed = target.get("measured")
    if isinstance(timed, dict):
        lo, hi = timed["spread"]
        line += (
            f", measured {timed['ratio']:.1%} ({timed['pruned_ms']:.1f} / {timed['base_ms']:.1f} ms median of "
            f"{timed['rounds']} interleaved rounds, {timed['threads']} thread(s); per-round ratios 10-90 %: "
            f"{lo:.1%}-{hi:.1%}, the noise of this measurement)"
        )
    passes = target.get("calibration") or []
    if len(passes) > 1:
        line += "; allocation passes (goal of the latency model -> measured): " + ", ".join(
            f"{p['goal']:.1%} -> {p['measured']:.1%}" for p in passes
        )
    return line


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


def check_dataset_matches(data: str, nc: int | None, kpt_shape: list[int] | None = None) -> dict:
    """Load the dataset description and check that it has ``nc`` classes, before anything slow starts.

    Args:
        data (str): Dataset yaml (already resolved).
        nc (int | None): Number of classes of the model's head; None only loads and checks the dataset.
        kpt_shape (list[int], optional): Keypoints of a pose model's head; the dataset must have the same.

    Returns:
        (dict): The dataset description from ``check_det_dataset``.

    Raises:
        FileNotFoundError: If the dataset yaml or its images are missing.
        ValueError: If the class counts or keypoints differ or the yaml is not a detection dataset.
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
    if nc is not None and int(info["nc"]) != int(nc):
        raise ValueError(
            f"dataset '{data}' has {info['nc']} classes but the model has {nc}: a pruned model keeps its head, so "
            "fine-tune it on data with the same classes"
        )
    if kpt_shape is not None and list(info.get("kpt_shape") or []) != list(kpt_shape):
        raise ValueError(
            f"dataset '{data}' has kpt_shape={info.get('kpt_shape')} but the pose model has kpt_shape="
            f"{list(kpt_shape)}: fine-tune it on keypoint data of the same shape"
        )
    return info


def load_input(model: str, data: str) -> Any:
    """Load the input model; a model yaml is built with the dataset's classes, as ``yolo train`` does."""
    from .checkpoint import load_yolo

    if Path(model).suffix.lower() not in {".yaml", ".yml"}:
        return load_yolo(model)  # a checkpoint keeps its head: check_dataset_matches refuses other class counts
    info = check_dataset_matches(data, None)
    yolo = load_yolo(model, nc=int(info["nc"]), kpt_shape=info.get("kpt_shape"))  # a pose head takes the keypoints
    yolo.model.names = dict(info["names"])
    return yolo


def copy_atomic(src: Path, dst: Path) -> Path:
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


def resolve_teacher(args: dict, student: Any) -> str:
    """Return the absolute path of the distillation teacher (see `load_teacher`)."""
    return load_teacher(args, student)[0]


def load_teacher(args: dict, student: Any) -> tuple[str, Any]:
    """Return the absolute path of the distillation teacher and the teacher (``YOLO``), checked against the student,
    before any training.

    The teacher is ``distill_model`` when given, else the input model itself (the unpruned network is the natural
    teacher of its pruned self).

    Raises:
        ValueError: If the teacher is not a readable detection checkpoint, or its classes or feature levels differ.
    """
    from .checkpoint import load_yolo

    path = args["distill_model"] or args["model"]
    if not str(path).lower().endswith(".pt"):
        raise ValueError(
            f"distillation needs a trained teacher checkpoint (.pt), got '{path}': give distill_model=teacher.pt "
            "or distill=False"
        )
    if Path(path).resolve() == Path(args["model"]).resolve():
        teacher = student  # the input model, already loaded: not read again
    else:
        try:
            teacher = load_yolo(path)
        except ValueError as e:
            raise ValueError(f"cannot use distillation teacher '{path}': {e}") from None
    if teacher.task != student.task:
        raise ValueError(f"distillation teacher '{path}' is a '{teacher.task}' model but the model is '{student.task}'")
    head, own = teacher.model.model[-1], student.model.model[-1]
    if getattr(head, "nc", None) != own.nc:
        raise ValueError(
            f"distillation teacher '{path}' has nc={getattr(head, 'nc', None)} but the model has nc={own.nc}"
        )
    if len(getattr(head, "f", [])) != len(own.f):
        raise ValueError(
            f"distillation teacher '{path}' has {len(getattr(head, 'f', []))} detection levels but the model has "
            f"{len(own.f)}: Ultralytics distils feature level by level"
        )
    return str(Path(path).resolve()), teacher


def sensitivity_curves(model: Any, run_dir: Path, args: dict) -> list:
    """Return the layer curves for the allocator: from ``args['sensitivity']`` if it matches ``model``, else a scan.

    The scan is written to ``run_dir/sensitivity`` (``sensitivity.json``/``.md``/``.png``), so a later run of the same
    model can reuse it with ``sensitivity=<run>/sensitivity``.
    """
    from ultralytics.utils import LOGGER, colorstr

    from ..policy.allocate import curves_from_sensitivity, read_sensitivity
    from ..policy.sensitivity import model_fingerprint, run_sensitivity

    if args["sensitivity"] is not None:
        results = read_sensitivity(args["sensitivity"])
        if results.get("fingerprint") not in (None, model_fingerprint(model.model)):
            raise ValueError(
                f"sensitivity results '{args['sensitivity']}' were measured on another model (fingerprint "
                f"{results.get('fingerprint')}); run without sensitivity= to scan this one"
            )
        return curves_from_sensitivity(results)
    LOGGER.info(f"{colorstr('prune: ')}sensitivity scan: each layer pruned alone at {args['scan_ratios']}")
    scan_dir = run_sensitivity(
        model,
        args["data"],
        ratios=args["scan_ratios"],
        imgsz=args["imgsz"],
        batch=args["batch"],
        device=args["device"],
        method=args["method"],
        round_to=args["round_to"],
        attention=args["attention"],
        images=args["scan_images"],
        reconstruct=args["reconstruct"],  # the scan measures each cut as the pruned model will get it: re-fitted
        reconstruct_images=min(SCAN_RECONSTRUCT_IMAGES, args["reconstruct_images"]),
        project=run_dir,
        name="sensitivity",
        verbose=False,
    )
    return curves_from_sensitivity(scan_dir)


def measure_row(model: Any, name: str, path: Path | str | None, args: dict, out_dir: Path) -> dict:
    """Measure one model (an in-memory module, so every row's size is the same FP16 ``YOLO.save`` convention); its
    latency is timed at the end of the run, beside every other row's (`time_side_by_side`)."""
    from ..measurement.measure import measure_model

    row = measure_model(
        model,
        data=args["data"],
        imgsz=args["imgsz"],
        batch=1,
        device=args["device"],
        backends=[],
        runs=args["runs"],
        warmup=args["warmup"],
        out_dir=out_dir,
        name=name,
        val_batch=args["batch"],
        threads=args["threads"],
    )
    row["path"] = str(path) if path is not None else None
    return row


def time_side_by_side(rows: list[dict], models: dict[str, Any], args: dict, out_dir: Path) -> list[str]:
    """Time every row on every backend in interleaved rounds (`yolo_prune.measurement.side_by_side`); return the
    report notes on how, and a warning when the timings were noisy.

    ``models`` maps row names to their in-memory modules; INT8 rows are timed from their exports, on their runtime.
    """
    from ultralytics.utils import LOGGER, colorstr

    from ..measurement.measure import resolve_backends
    from ..measurement.quantize import int8_timing_source
    from ..measurement.side_by_side import time_rows, timing_notes

    labels, errors = resolve_backends(args["backends"], args["device"])
    for row in rows:
        row["errors"].update(errors)
    sources = []
    for row in rows:
        if row["name"] in models:
            sources.append(dict.fromkeys(labels, models[row["name"]]))
        else:
            sources.append(int8_timing_source(row, labels))  # INT8 rows: their export, on its runtime; else nothing
    LOGGER.info(
        f"{colorstr('prune: ')}timing {sum(bool(s) for s in sources)} models side by side on {', '.join(labels)} "
        f"({args['runs']} interleaved rounds)"
    )
    threads, size = args["threads"], args["latency_imgsz"]
    time_rows(rows, sources, labels, size, 1, threads, args["device"], args["runs"], args["warmup"], out_dir)
    return timing_notes(rows, labels, size, threads)


def int8_rows(baseline: Any, base_row: dict, final: Any, final_row: dict, args: dict, out_dir: Path) -> list[dict]:
    """Quantize the baseline and the final model (in-memory modules) to INT8 (``args['int8']`` format) and validate
    both; they are timed with the other rows at the end (failures go to each row's ``errors``)."""
    from ultralytics.utils import LOGGER, colorstr

    from ..measurement.quantize import measure_int8

    rows = []
    for model, row in ((baseline, base_row), (final, final_row)):
        LOGGER.info(f"{colorstr('prune: ')}INT8 ({args['int8']}): quantizing and validating the {row['name']} model")
        rows.append(
            measure_int8(
                model,
                args["data"],
                imgsz=args["imgsz"],
                out_dir=out_dir,
                name=row["name"],
                source_row=row,
                runs=0,  # timed beside the other rows (`time_side_by_side`)
                format=args["int8"],
                device=args["device"],
            )
        )
    return rows


def train_module(
    module: Any,
    source: Path,
    run_dir: Path,
    name: str,
    args: dict,
    train_args: dict,
    epochs: int,
    callbacks: dict | None = None,
    teacher: Any = None,
) -> Any:
    """Train the in-memory ``module`` with the pruned trainer of its task into ``run_dir/name`` and return the trainer.

    The module is handed to the trainer as ``trainer.model`` (trained in place, not read again from disk);
    ``source`` is the checkpoint it was saved as, recorded as the run's ``model`` (the file a resume starts from is
    the run's own ``weights/last.pt``). ``callbacks`` maps trainer events to extra functions (e.g. `PruneCallback`'s);
    ``teacher`` is the distillation teacher module (``train_args['distill_model']`` is then not read again).

    Raises:
        RuntimeError: If the run wrote no checkpoint.
    """
    from ..rules.tasks import trainer_for

    overrides = {
        "model": str(source),
        "data": args["data"],
        "epochs": epochs,
        "imgsz": args["imgsz"],
        "batch": args["batch"],
        "device": args["device"],
        "project": str(run_dir.resolve()),  # a relative project would land under runs/detect/<project>
        "name": name,
        "exist_ok": False,
        **train_args,
    }
    trainer = trainer_for(module)(overrides=overrides)
    for event, functions in (callbacks or {}).items():
        for function in functions:
            trainer.add_callback(event, function)
    trainer.model = module
    trainer.teacher = teacher
    trainer.train()
    if not Path(trainer.last).is_file():
        raise RuntimeError(f"training run '{name}' wrote no checkpoint in {trainer.save_dir}")
    return trainer


def trained_checkpoints(trainer: Any) -> tuple[Path, Path]:
    """The (best, last) checkpoints of a finished training run (best is last when no best.pt was written)."""
    last = Path(trainer.last)
    return (Path(trainer.best) if Path(trainer.best).is_file() else last), last
