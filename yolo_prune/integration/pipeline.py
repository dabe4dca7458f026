"""`yolo-prune prune`: validate, prune (in one or more steps), fine-tune, measure and report in one run folder.

Everything a run writes goes into ``project/name`` (incremented: ``exp``, ``exp-2``, ...); the input model is only
read. Layout of a run folder::

    exp/
        weights/pruned.pt           pruned, not fine-tuned, FP32 (written before any training)
        weights/step<k>-pruned.pt   per-step pruned models when steps > 1
        weights/best.pt, last.pt    the final fine-tuned model (copies of the chosen step's trainer output)
        weights/input.pt            the input model, FP32, when a sparse-training stage runs first
        sensitivity/                the per-layer sensitivity scan (allocation=sensitivity): reusable with
                                    sensitivity=<run>/sensitivity for the same model
        sparse/                     the sparse-training run (sparse_epochs > 0)
        step<k>/                    the Ultralytics trainer's own run for step k (weights/last.pt saved every epoch)
        measure/                    validation and ONNX/OpenVINO exports of the measured models
        measure/int8/               with int8=<format>: the INT8 exports of the baseline and the final model
        qat/                        with qat=True: the quantization-aware training run (its checkpoints need ModelOpt)
        report.json, report.md, results.csv, pareto.png

Resuming: an interrupted fine-tune leaves ``exp/step<k>/weights/last.pt`` (and always ``weights/pruned.pt``). Resume
the fine-tune with the pruned trainer (the stock one would rebuild the unpruned network)::

    from ultralytics import YOLO
    from yolo_prune.integration.trainer import PrunedDetectionTrainer

    YOLO("runs/prune/exp/step1/weights/last.pt").train(resume=True, trainer=PrunedDetectionTrainer)

Examples:
    >>> from yolo_prune.integration.pipeline import run_prune
    >>> run_dir = run_prune(model="best.pt", data="data.yaml", target_macs=0.5, epochs=10, imgsz=320, distill=True)
    >>> (run_dir / "weights" / "best.pt").is_file()
    True
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .args import did_you_mean, is_none, resolve_device

__all__ = [
    "ALLOCATIONS",
    "FINETUNE_DEFAULTS",
    "PRUNE_DEFAULTS",
    "PruneInterrupted",
    "budget_exceeded",
    "check_dataset_matches",
    "check_output_folder",
    "parse_prune_args",
    "run_prune",
    "step_ratio",
]

PRUNE_DEFAULTS: dict[str, Any] = {
    "model": None,  # required: local .pt checkpoint (or a model yaml for a randomly initialised net)
    "data": None,  # required: dataset yaml, or a built-in name (shapes.yaml, shapes-tiny.yaml)
    "target_macs": 0.5,  # keep at most this fraction of the MACs (0.5: 2x fewer); unused when ratio is given
    "ratio": None,  # or: the MACs that uniform pruning of this fraction of the channels keeps, in [0, 1)
    "target_latency": None,  # or: keep at most this fraction of the latency on `backend` (a per-conv latency model)
    "backend": "onnx",  # deployment backend: the latency target's and round_to=auto's (torch, onnx, openvino)
    "allocation": "sensitivity",  # how layers share the cut: sensitivity (measured), uniform, global
    "sensitivity": None,  # reuse a sensitivity.json (or its folder) from an earlier run of the same model
    "scan_ratios": (0.3, 0.5, 0.7),  # ratios each layer is pruned at, alone, by the sensitivity scan
    "scan_images": 200,  # validation images used by the sensitivity scan (None = all)
    "steps": 1,  # pruning rounds toward the target, each followed by `epochs` of fine-tuning
    "epochs": None,  # fine-tuning epochs per step; None = 10, more on a small set (min_images); 0 = prune only
    "min_images": 4500,  # with epochs unset: fine-tuning sees at least this many training images per step
    "distill": True,  # fine-tune with knowledge distillation from the unpruned input .pt (off for a yaml input)
    "distill_model": None,  # another teacher checkpoint for distillation (implies distill=True)
    "distill_projector": "random",  # distillation projectors: random (Ultralytics) or fit (least squares, 4 batches)
    "sparse_epochs": 0,  # train the model this many epochs with a sparsity penalty before pruning
    "sparsity": 1e-4,  # strength of that penalty
    "sparse": "group",  # what it acts on: group (group lasso over each DepGraph channel group, BN scales included), bn
    "imgsz": 640,  # training, validation, GFLOPs and latency image size
    "batch": 16,  # training and validation batch size
    "device": None,  # None = as Ultralytics: the first GPU when there is one, else the CPU
    "method": "l2",  # channel importance (yolo_prune.policy.importance.IMPORTANCE_METHODS: l1, l2, bn, lamp, ...)
    "global_pruning": False,  # same as allocation=global (kept for compatibility)
    "round_to": "auto",  # kept widths are multiples of this; auto = the backend's channel block (16 on AVX-512)
    "attention": "heads",  # attention blocks (PSA, C2PSA, A2C2f): heads = remove whole heads, keep = leave intact
    "reconstruct": "ls",  # re-fit pruned convs to the unpruned ones on train images before training: ls, seq, bn, none
    "reconstruct_images": 256,  # training images for reconstruct
    "max_map_drop": None,  # stop the schedule once mAP50-95 is more than this below the baseline (absolute)
    "backends": "torch,onnx",  # latency backends: torch, onnx, openvino (comma-separated)
    "latency_imgsz": None,  # image size the report times at (the deployment size); None = imgsz
    "int8": False,  # also export baseline and final model to INT8: onnx, openvino (= True), or another INT8 format
    "qat": False,  # after fine-tuning, `qat_epochs` of quantization-aware training (ModelOpt) -> INT8 ONNX (Q/DQ)
    "qat_epochs": 3,  # epochs of quantization-aware training with qat=True
    "runs": 50,  # timed latency runs per backend
    "warmup": 10,  # untimed latency runs per backend
    "threads": None,  # CPU threads for latency; None = every usable core
    "seed": 0,  # pruning seed (random method) and trainer seed
    "project": "runs/prune",
    "name": "exp",
}
ALLOCATIONS = ("sensitivity", "uniform", "global")
SCAN_RECONSTRUCT_IMAGES = 64  # calibration images of the re-fit inside the sensitivity scan (one per scanned cut)
# The 0.4 fine-tuning recipe (one lr0 for every model), kept for the benchmarks that reproduce results measured with
# it; runs now derive theirs from the input checkpoint (`yolo_prune.integration.recipe.finetune_defaults`).
FINETUNE_DEFAULTS: dict[str, Any] = {
    "optimizer": "AdamW",
    "lr0": 0.002,
    "warmup_epochs": 0.5,
    "warmup_bias_lr": 0.0,
    "dis": 1.0,
}

# Ultralytics keys that the pipeline sets itself, or that would break it
RESERVED_TRAIN_KEYS = frozenset(
    {"model", "data", "epochs", "imgsz", "batch", "device", "project", "name", "exist_ok", "mode", "task"}
    | {"resume", "pretrained", "cfg", "save_dir"}
)
_INT_KEYS = {
    "steps": 1,
    "epochs": 0,
    "imgsz": 32,
    "batch": 1,
    "runs": 1,
    "warmup": 0,
    "seed": 0,
    "sparse_epochs": 0,
    "reconstruct_images": 1,
    "min_images": 0,
    "qat_epochs": 1,
}


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

    from ..measurement.hardware import resolve_round_to
    from ..measurement.measure import resolve_backends
    from ..policy.importance import IMPORTANCE_METHODS
    from ..policy.prune import check_ratio
    from ..policy.reconstruct import check_reconstruct
    from ..policy.targets import check_backend, check_target
    from ..rules.attention import check_attention

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
    given = [k for k in ("ratio", "target_macs", "target_latency") if not is_none(overrides.get(k))]
    if len(given) > 1:
        raise ValueError(f"give one of ratio=, target_macs= and target_latency=, not both {given[0]}= and {given[1]}=")
    args["ratio"] = None if is_none(args["ratio"]) else check_ratio(args["ratio"])
    args["target_latency"] = (
        None if is_none(args["target_latency"]) else check_target(args["target_latency"], "target_latency")
    )
    if args["ratio"] is None and args["target_latency"] is None:
        target = PRUNE_DEFAULTS["target_macs"] if is_none(args["target_macs"]) else args["target_macs"]
        args["target_macs"] = check_target(target, "target_macs")
    else:
        args["target_macs"] = None
    args["backend"] = check_backend(args["backend"])
    for key, minimum in _INT_KEYS.items():
        args[key] = None if key == "epochs" and is_none(args[key]) else _as_int(key, args[key], minimum)
    args["threads"] = None if is_none(args["threads"]) else _as_int("threads", args["threads"], 1)
    li = args["latency_imgsz"]
    args["latency_imgsz"] = args["imgsz"] if is_none(li) else _as_int("latency_imgsz", li, 32)
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
    args["attention"] = check_attention(args["attention"])
    args["reconstruct"] = check_reconstruct(args["reconstruct"])
    for key in ("global_pruning", "distill", "qat"):
        if not isinstance(args[key], bool):
            raise ValueError(f"{key}={args[key]!r} must be True or False")
    allocation = str(args["allocation"]).lower()
    if allocation not in ALLOCATIONS:
        raise ValueError(f"unknown allocation '{args['allocation']}'; choose one of {', '.join(ALLOCATIONS)}")
    args["allocation"] = "global" if args["global_pruning"] else allocation
    args["sensitivity"] = None if is_none(args["sensitivity"]) else str(args["sensitivity"])
    if args["sensitivity"] is not None and args["allocation"] != "sensitivity":
        raise ValueError(f"sensitivity= is used by allocation=sensitivity, not allocation={args['allocation']}")
    args["scan_ratios"] = _check_scan_ratios(args["scan_ratios"])
    args["scan_images"] = None if is_none(args["scan_images"]) else _as_int("scan_images", args["scan_images"], 1)
    args["distill_model"] = None if is_none(args["distill_model"]) else str(args["distill_model"])
    if args["distill_model"] is None and not args["model"].lower().endswith(".pt"):
        if overrides.get("distill") is True:
            raise ValueError(
                f"distill=True needs a trained teacher: model={args['model']} is not a checkpoint; give "
                "distill_model=teacher.pt or distill=False"
            )
        args["distill"] = False  # a model built from yaml is no teacher
    args["distill"] = args["distill"] or args["distill_model"] is not None
    from .distill import check_projector_init

    args["distill_projector"] = check_projector_init(args["distill_projector"])
    if "reconstruct" not in overrides and not args["model"].lower().endswith(".pt"):
        args["reconstruct"] = None  # an untrained model built from yaml has nothing to reconstruct
    from .callbacks import SPARSE_MODES

    args["sparse"] = str(args["sparse"]).lower()
    if args["sparse"] not in SPARSE_MODES:
        raise ValueError(f"unknown sparse mode '{args['sparse']}'; choose one of {', '.join(SPARSE_MODES)}")
    args["sparsity"] = _as_float("sparsity", args["sparsity"])
    if args["sparsity"] < 0:
        raise ValueError(f"sparsity={args['sparsity']} must be >= 0")
    args["device"] = resolve_device(args["device"])
    rounding = resolve_round_to(args["round_to"], args["backend"], args["device"])
    args["round_to"], args["round_to_reason"] = rounding.value, rounding.reason
    if args["target_latency"] is not None and args["steps"] > 1:
        raise ValueError("target_latency= prunes in one step: leave steps=1 (or use target_macs= with steps)")
    backends = args["backends"]
    backends = [b.strip() for b in backends.split(",")] if isinstance(backends, str) else [str(b) for b in backends]
    from ..measurement.quantize import check_int8_request

    args["int8"], backends = check_int8_request(args["int8"], backends, args["device"], qat=args["qat"])
    labels, errors = resolve_backends(backends, args["device"])
    if errors or not labels:
        raise ValueError(next(iter(errors.values()), "backends= must name at least one backend (torch, onnx)"))
    args["backends"] = tuple(b for b in backends if b)
    args["project"], args["name"] = str(args["project"]), str(args["name"])
    if not args["name"] or Path(args["name"]).name != args["name"]:
        raise ValueError(f"name={args['name']!r} must be a plain folder name (use project= for the parent folder)")
    args["train_args"] = train_args
    return args


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


def _check_scan_ratios(value: Any) -> tuple[float, ...]:
    """Return the sensitivity scan's ratios as a sorted tuple of numbers in (0, 1), or raise a one-line ValueError."""
    from ..policy.sensitivity import check_ratios

    try:
        return tuple(check_ratios(value))
    except ValueError:
        raise ValueError(f"scan_ratios={value!r} must be numbers in (0, 1), e.g. scan_ratios=0.3,0.5,0.7") from None


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


def check_output_folder(project: str | Path) -> Path:
    """Return ``project`` as a folder path that can be created and written, or raise a one-line ``ValueError``.

    Checked before any work starts: the nearest existing folder on the way must be a writable folder (a file in the
    way, or a read-only folder or file system, is refused). Nothing is created.

    Args:
        project (str | Path): The parent folder of runs (``project=``).

    Returns:
        (Path): ``project`` as an absolute path.

    Raises:
        ValueError: If a file is in the way or the folder cannot be written.
    """
    folder = Path(project).expanduser().absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"project={project} cannot be used: '{existing}' is a file, not a folder; choose another one")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"project={project} cannot be written: no write permission in '{existing}' (read-only?)")
    return folder


def _load_baseline(model: str, data: str) -> Any:
    """Load the input model; a model yaml is built with the dataset's classes, as ``yolo train`` does."""
    from .checkpoint import load_yolo

    if Path(model).suffix.lower() not in {".yaml", ".yml"}:
        return load_yolo(model)  # a checkpoint keeps its head: check_dataset_matches refuses other class counts
    info = check_dataset_matches(data, None)
    yolo = load_yolo(model, nc=int(info["nc"]), kpt_shape=info.get("kpt_shape"))  # a pose head takes the keypoints
    yolo.model.names = dict(info["names"])
    return yolo


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
    """Measure one model (an in-memory module, so every row's size is the same FP16 ``YOLO.save`` convention); its
    latency is timed at the end of the run, beside every other row's (`_time_side_by_side`)."""
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


def _time_side_by_side(rows: list[dict], models: dict[str, Any], args: dict, out_dir: Path) -> list[str]:
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


def _int8_rows(baseline: Any, base_row: dict, final: Path, final_row: dict, args: dict, out_dir: Path) -> list[dict]:
    """Quantize the baseline and the final model to INT8 (``args['int8']`` format) and validate both; they are timed
    with the other rows at the end (failures go to each row's ``errors``)."""
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
                runs=0,  # timed beside the other rows (`_time_side_by_side`)
                format=args["int8"],
                device=args["device"],
            )
        )
    return rows


def _qat_row(final: Path, final_row: dict, run_dir: Path, args: dict, train_args: dict, out_dir: Path) -> dict:
    """Quantization-aware training of the final model (``qat_epochs`` with Ultralytics' ``quantize=8``: ModelOpt fake
    quantization in the pruned trainer), exported to INT8 ONNX (Q/DQ nodes from the trained ranges) and validated.

    The QAT checkpoint (``qat/weights/best.pt``) needs ``nvidia-modelopt`` to load; ``weights/best.pt`` stays the
    plain FP32 model. Failures of the export or validation go to the row's ``errors``.
    """
    from ultralytics import YOLO
    from ultralytics.utils import LOGGER, colorstr

    from ..measurement.quantize import measure_int8

    LOGGER.info(f"{colorstr('prune: ')}QAT: {args['qat_epochs']} epoch(s) of quantization-aware training")
    distill_keys = ("distill_model", "dis", "distill_projector")
    plain = {k: v for k, v in train_args.items() if k not in distill_keys}  # the student alone is quantized
    best, _ = _train(YOLO(str(final)), run_dir, "qat", args, {**plain, "quantize": 8}, args["qat_epochs"])
    row = measure_int8(
        best, args["data"], args["imgsz"], out_dir, "final_qat", final_row, runs=0, format="onnx", qat=True
    )  # validated here, timed beside the other rows (`_time_side_by_side`)
    row.update(name="final+qat", path=str(best), int8_of="final", qat_epochs=args["qat_epochs"])
    return row


def _fine_tune(ckpt: Path, run_dir: Path, name: str, args: dict, train_args: dict) -> tuple[Path, Path, float | None]:
    """Train ``ckpt`` with the pruned trainer into ``run_dir/name``; return its (best, last) checkpoints and the
    mAP50-95 of ``ckpt`` before the first step (the trainer validates it, and best.pt stays it unless an epoch beats
    it)."""
    from ultralytics import YOLO

    yolo = YOLO(str(ckpt))
    best, last = _train(yolo, run_dir, name, args, train_args, args["epochs"])
    start = getattr(yolo.trainer, "start_metrics", None) or {}
    before = start.get("metrics/mAP50-95(B)")
    return best, last, None if before is None else float(before)


def _train(yolo: Any, run_dir: Path, name: str, args: dict, train_args: dict, epochs: int) -> tuple[Path, Path]:
    """Run ``yolo.train`` with the pruned trainer of the model's task (`PrunedDetectionTrainer`,
    `PrunedSegmentationTrainer`, ...) into ``run_dir/name``; return its (best, last) checkpoints."""
    from ..rules.tasks import trainer_for

    yolo.train(
        trainer=trainer_for(yolo.model),
        data=args["data"],
        epochs=epochs,
        imgsz=args["imgsz"],
        batch=args["batch"],
        device=args["device"],
        project=str(run_dir.resolve()),  # a relative project would land under runs/detect/<project>
        name=name,
        exist_ok=False,
        **train_args,
    )
    trainer = yolo.trainer
    last = Path(trainer.last)
    best = Path(trainer.best) if Path(trainer.best).is_file() else last
    if not last.is_file():
        raise RuntimeError(f"training run '{name}' wrote no checkpoint in {trainer.save_dir}")
    return best, last


def _sparse_train(baseline: Any, run_dir: Path, args: dict, train_args: dict) -> Path:
    """Train the baseline ``sparse_epochs`` epochs with the sparsity penalty (``sparse``); return its last.pt.

    The last epoch (strongest sparsity) is what gets pruned, not the best-fitness one. Distillation is not used here.
    """
    from ultralytics import YOLO

    from .callbacks import PruneCallback
    from .checkpoint import save_checkpoint

    source = save_checkpoint(baseline, run_dir / "weights" / "input.pt")
    yolo = YOLO(str(source))
    PruneCallback(
        ratio=0.0, sparsity=args["sparsity"], sparse=args["sparse"], sparse_epochs=args["sparse_epochs"]
    ).attach(yolo)
    plain = {k: v for k, v in train_args.items() if k not in ("distill_model", "dis")}
    _, last = _train(yolo, run_dir, "sparse", args, plain, args["sparse_epochs"])
    return last


def _sensitivity_curves(model: Any, run_dir: Path, args: dict) -> list:
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


def resolve_teacher(args: dict, student: Any) -> str:
    """Return the absolute path of the distillation teacher, checked against the student, before any training.

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
    return str(Path(path).resolve())


def run_prune(command: str | None = None, **kwargs: Any) -> Path:
    """Prune a YOLO detector toward ``ratio`` in ``steps`` rounds, fine-tune after each, measure and report.

    Arguments are those of `PRUNE_DEFAULTS` plus any Ultralytics training argument (see `parse_prune_args`). The
    steps: (1) measure the baseline (mAP50-95, mAP50, params, GFLOPs, size, latency); (2) for each step, prune the
    current model by `step_ratio` with ``yolo_prune.policy.prune.prune``, save ``weights/pruned.pt`` at once (FP32),
    then fine-tune it for ``epochs`` with the pruned trainer of its task (`PrunedDetectionTrainer`,
    `PrunedSegmentationTrainer`, `PrunedPoseTrainer`, `PrunedOBBTrainer`) and measure it; with ``max_map_drop`` the
    schedule stops at the first step whose mAP50-95 falls more than that below the baseline, and the last step within
    the budget becomes the final model; (3) copy the final model to ``weights/best.pt`` and ``weights/last.pt``; with
    ``int8=<format>`` (``onnx``, ``openvino`` = True, or another INT8 format of the exporter) quantize the baseline
    and the final model (`yolo_prune.measurement.quantize.measure_int8`) and add the rows ``baseline+int8`` and
    ``final+int8``; with ``qat=True`` train the final model ``qat_epochs`` more with fake quantization and add its INT8
    ONNX as ``final+qat``; (4) write
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

    from ..data.shapes import resolve_data
    from ..measurement.measure import count_gflops
    from ..measurement.report import format_table, write_report
    from ..policy.prune import prune
    from .checkpoint import load_yolo, save_checkpoint
    from .recipe import count_images, finetune_defaults, finetune_epochs

    prefix = colorstr("prune: ")
    args = parse_prune_args(kwargs)
    check_output_folder(args["project"])
    args["data"] = resolve_data(args["data"])
    baseline = _load_baseline(args["model"], args["data"])  # ValueError for a missing or unreadable model
    head = baseline.model.model[-1]
    info = check_dataset_matches(args["data"], int(head.nc), getattr(head, "kpt_shape", None))
    args["epochs"], budget_note = finetune_epochs(args["epochs"], count_images(info.get("train")), args["min_images"])

    teacher = resolve_teacher(args, baseline) if args["distill"] else None

    run_dir = increment_path(Path(args["project"]) / args["name"], mkdir=True)
    weights = run_dir / "weights"
    measure_dir = run_dir / "measure"
    per_step = step_ratio(args["ratio"], args["steps"]) if args["ratio"] is not None else None
    goal = next(f"{k}={args[k]}" for k in ("ratio", "target_latency", "target_macs") if args[k] is not None)
    LOGGER.info(
        f"{prefix}{args['model']} -> {colorstr('bold', run_dir)}: {goal} in {args['steps']} step(s), "
        f"allocation={args['allocation']}, {args['epochs']} fine-tuning epoch(s) each"
        f"{', distilled from ' + teacher if teacher else ''}, method={args['method']}"
    )
    recipe, recipe_reason = finetune_defaults((getattr(baseline, "ckpt", None) or {}).get("train_args"), int(head.nc))
    train_args = {**recipe, "seed": args["seed"], **args["train_args"]}
    if not {"optimizer", "lr0"} & set(args["train_args"]):
        LOGGER.info(f"{prefix}fine-tuning {recipe_reason}")
    if budget_note:
        LOGGER.info(f"{prefix}{budget_note}")
    if teacher:
        train_args["distill_model"] = teacher
        if args["distill_projector"] != "random":
            train_args["distill_projector"] = args["distill_projector"]
    last_good: Path | None = None
    step = 0  # the step in progress
    notes: list[str] = []
    try:
        LOGGER.info(f"{prefix}measuring the baseline")
        rows = [_measure(baseline.model, "baseline", args["model"], args, measure_dir)]
        models = {"baseline": baseline.model}  # row name -> module, timed side by side at the end
        base_map = rows[0].get("map50_95")
        LOGGER.info(f"{prefix}baseline mAP50-95={_f(base_map)} mAP50={_f(rows[0].get('map50'))}")
        base_macs = count_gflops(baseline.model, args["imgsz"])
        if args["max_map_drop"] is not None and base_map is None:
            msg = (
                f"max_map_drop={args['max_map_drop']} is not applied: the baseline could not be validated, so there "
                "is no mAP50-95 to measure the drop from; every step of the schedule runs"
            )
            LOGGER.warning(f"{prefix}{msg}")
            notes.append(msg)

        current = baseline
        if args["sparse_epochs"]:
            sparse_ckpt = _sparse_train(baseline, run_dir, args, train_args)
            current = load_yolo(str(sparse_ckpt))
            rows.append(_measure(current.model, "sparse", sparse_ckpt, args, measure_dir))
            models["sparse"] = current.model
            last_good = sparse_ckpt
        curves = _sensitivity_curves(current, run_dir, args) if args["allocation"] == "sensitivity" else None
        steps: list[dict] = []  # per finished step: row and checkpoints
        stopped_at = None
        for step in range(1, args["steps"] + 1):
            amount = {"ratio": per_step}
            if args["target_latency"] is not None:
                amount = {"target_latency": args["target_latency"]}
            elif per_step is None:  # cumulative MACs target after this step, relative to what `current` keeps now
                kept = count_gflops(current.model, args["imgsz"]) / base_macs
                amount = {"target_macs": min(1.0, args["target_macs"] ** (step / args["steps"]) / kept)}
            LOGGER.info(f"{prefix}step {step}/{args['steps']}: pruning the current model to {amount}")
            pruned = prune(
                current,
                **amount,
                method=args["method"],
                round_to=args["round_to"],
                attention=args["attention"],
                reconstruct=args["reconstruct"],
                reconstruct_images=args["reconstruct_images"],
                seed=args["seed"],
                global_pruning=args["allocation"] == "global",
                sensitivity=curves,
                data=args["data"],  # calibration images for gradient methods (taylor, hessian)
                device=args["device"],
                imgsz=args["imgsz"],
                backend=args["backend"],
                threads=args["threads"],
                latency_table=run_dir / "latency" / f"{args['backend']}-{args['imgsz']}-t{args['threads'] or 1}.json",
            )
            meta = {
                "ratio": args["ratio"],
                "target_macs": args["target_macs"],
                "target_latency": args["target_latency"],
                "backend": args["backend"],
                "allocation": args["allocation"],
                "layer_ratios": pruned.prune_info.get("layer_ratios"),
                "target": pruned.prune_info.get("target"),
                "distill_model": teacher,
                "step_ratio": per_step,
                "step": step,
                "steps": args["steps"],
                "method": args["method"],
                "round_to": args["round_to"],
                "attention": args["attention"],
                "source": str(args["model"]),
                "fine_tuned_epochs": 0,
            }
            pruned_path = save_checkpoint(pruned, weights / "pruned.pt", yolo_prune=meta)
            if args["target_latency"] is not None:
                notes.append(latency_note(pruned.prune_info["target"]))
            last_good = pruned_path
            if args["steps"] > 1:
                _copy_atomic(pruned_path, weights / f"step{step}-pruned.pt")
            before_ft = None
            if args["epochs"] > 0:
                best, last, before_ft = _fine_tune(
                    weights / f"step{step}-pruned.pt" if args["steps"] > 1 else pruned_path,
                    run_dir,
                    f"step{step}",
                    args,
                    train_args,
                )
                last_good = best
            else:
                best = last = weights / f"step{step}-pruned.pt" if args["steps"] > 1 else pruned_path
            current = load_yolo(str(best))
            row = _measure(current.model, f"step{step}", best, args, measure_dir)
            models[f"step{step}"] = current.model
            row["step"] = step
            if before_ft is not None:
                row["map50_95_before_ft"] = before_ft
            if "reconstruct" in pruned.prune_info:
                row["reconstruct"] = pruned.prune_info["reconstruct"]
            steps.append({"row": row, "best": best, "last": last})
            LOGGER.info(
                f"{prefix}step {step}: mAP50-95={_f(row.get('map50_95'))} (baseline {_f(base_map)}"
                + (f", {_f(before_ft)} before fine-tuning)" if before_ft is not None else ")")
            )
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
        final = {
            **copy.deepcopy(chosen["row"]),
            "name": "final",
            "path": str(best_out),
            "from_step": chosen["row"]["step"],
        }
        rows += [s["row"] for s in steps] if args["steps"] > 1 else []
        rows.append(final)
        models["final"] = models[f"step{chosen['row']['step']}"]
        if args["int8"]:
            rows += _int8_rows(baseline.model, rows[0], best_out, final, args, measure_dir / "int8")
        if args["qat"]:
            rows.append(_qat_row(best_out, final, run_dir, args, train_args, measure_dir / "int8"))
        notes += _time_side_by_side(rows, models, args, measure_dir)
    except KeyboardInterrupt as e:
        trainer_last = run_dir / f"step{step}" / "weights" / "last.pt"
        if step and trainer_last.is_file() and (last_good is None or last_good.name == "pruned.pt"):
            last_good = trainer_last  # a fine-tune was running: its last epoch is newer than the pruned model
        from ..rules.tasks import trainer_for

        raise PruneInterrupted(run_dir, last_good, trainer_for(baseline.model).__name__) from e

    notes.append(
        f"{goal} in {args['steps']} step(s), allocation={args['allocation']} ({args['method']}, round_to="
        f"{args['round_to']}: {args['round_to_reason']}), {args['epochs']} fine-tuning epoch(s) per step at "
        f"imgsz={args['imgsz']}"
        + (f", distilled from {teacher}" if teacher else "")
        + (
            f"; {args['sparse_epochs']} sparse epoch(s) first (sparsity={args['sparsity']:g})"
            if args["sparse_epochs"]
            else ""
        )
    )
    fine_tune = {k: v for k, v in train_args.items() if k != "distill_model"}
    notes.append(f"fine-tuning arguments: {', '.join(f'{k}={v}' for k, v in fine_tune.items())} ({recipe_reason})")
    if budget_note:
        notes.append(budget_note)
    if args["max_map_drop"] is not None:
        notes.append(f"max_map_drop={args['max_map_drop']} (absolute mAP50-95 below the baseline)")
    notes.append("size_mb: the model saved as YOLO.save() writes it (FP16); weights/pruned.pt is FP32")
    if args["int8"]:
        from ..measurement.quantize import int8_note

        notes.append(int8_note(args["int8"], args.get("qat_epochs") if args["qat"] else None))
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
