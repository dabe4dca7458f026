"""The options of a pruning run (``yolo-prune prune``, `run_prune`, `PruneRun`), declared once and checked once.

`PRUNE_OPTIONS` holds every key with its default, a one-line meaning (the CLI help) and the longer one README's key
table shows (``python -m yolo_prune.config.options`` prints that table; a test keeps README and the help in step with
it). `check_prune_args` checks a run's arguments against it in one pass: types, ranges, allowed values (with a
did-you-mean for a typo), conflicts (two targets, ``steps`` with a latency target, ``qat`` with another INT8 format)
and whether the optional toolchains a value needs are installed. Any Ultralytics training argument is accepted too
(checked by Ultralytics' own ``check_cfg``) and returned under ``train_args``.

Examples:
    >>> args = check_prune_args({"model": "best.pt", "data": "data.yaml", "ratio": 0.3, "lr0": 0.002})
    >>> args["ratio"], args["target_macs"], args["train_args"]
    (0.3, None, {'lr0': 0.002})

Over 400 lines: the option table is one declaration that carries each option's README meaning; the code is the last
150 lines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checks import (
    ALLOCATIONS,
    SPARSE_MODES,
    check_attention,
    check_backend,
    check_backend_names,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_method,
    check_projector_init,
    check_ratio,
    check_ratios,
    check_reconstruct,
    check_round_to,
    check_target,
    did_you_mean,
    is_none,
    resolve_device,
)
from .int8 import check_int8_request

__all__ = ["PRUNE_DEFAULTS", "PRUNE_OPTIONS", "RESERVED_TRAIN_KEYS", "Option", "check_prune_args", "options_table"]


@dataclass(frozen=True)
class Option:
    """One option of a pruning run.

    Attributes:
        default: The value when the option is not given.
        help: One line for ``yolo-prune help prune``.
        doc: The meaning in README's key table (defaults to ``help``).
        check: ``check(value, key) -> value`` for an option checked on its own (None: checked in `check_prune_args`
            with the options it depends on).
        optional: None (and ``none``/``null``) is accepted and stays None.
        shown: How README shows the default, when the value alone would mislead (e.g. ``10, more on a small set``).
    """

    default: Any
    help: str
    doc: str | None = None
    check: Callable[[Any, str], Any] | None = None
    optional: bool = False
    shown: str | None = None


def _int(minimum: int) -> Callable[[Any, str], int]:
    """A check for an integer >= ``minimum``."""
    return lambda value, key: check_int(value, key, minimum)


def _bool(value: Any, key: str) -> bool:
    return check_bool(value, key)


def _str(value: Any, key: str) -> str:
    return str(value)


def _choice(choices: tuple[str, ...], what: str | None = None) -> Callable[[Any, str], str]:
    """A check for one of ``choices`` (case-insensitive)."""
    return lambda value, key: check_choice(value, key, choices, what)


def _name(value: Any, key: str) -> str:
    name = str(value)
    if not name or Path(name).name != name:
        raise ValueError(f"name={value!r} must be a plain folder name (use project= for the parent folder)")
    return name


# The run's options, in the order of the CLI help and README's key table.
PRUNE_OPTIONS: dict[str, Option] = {
    "model": Option(
        None,
        "required: local .pt checkpoint (or a model yaml for a randomly initialised net)",
        doc=(
            "required: the model to prune, a local `.pt` checkpoint (or a model yaml for a randomly initialised "
            "net); only read"
        ),
    ),
    "data": Option(
        None,
        "required: dataset yaml, or a built-in name (shapes.yaml, shapes-tiny.yaml)",
        doc=(
            "required: dataset yaml with the model's classes, or a built-in name (`shapes.yaml`, `shapes-v3.yaml`, ...)"
        ),
    ),
    "target_macs": Option(
        0.5,
        "keep at most this fraction of the MACs (0.5: 2x fewer); unused when ratio is given",
        doc="keep at most this fraction of the MACs (0.5 = 2x fewer), measured",
    ),
    "ratio": Option(
        None,
        "or: the MACs that uniform pruning of this fraction of the channels keeps, in [0, 1)",
        doc="instead of `target_macs`: the MACs that removing this fraction of every layer's channels would keep",
    ),
    "target_latency": Option(
        None,
        "or: keep at most this fraction of the latency on `backend` (a per-conv latency model)",
        doc=(
            "instead of `target_macs`: keep at most this fraction of the latency on `backend`, predicted by a "
            "per-conv latency table of the backend (cached in `<run>/latency/`), then measured against the "
            "unpruned model in interleaved rounds and re-allocated (up to 3 passes) when the measurement misses "
            "the target by more than its noise; the report states prediction, measurement and noise"
        ),
    ),
    "backend": Option(
        "onnx",
        "deployment backend: the latency target's and round_to=auto's (torch, onnx, openvino)",
        doc="deployment backend for `target_latency` and `round_to=auto`: `onnx` (ONNX Runtime), `torch`, `openvino`",
        check=lambda value, key: check_backend(value),
    ),
    "allocation": Option(
        "sensitivity",
        "how layers share the cut: sensitivity (measured), uniform, global",
        doc=(
            "how layers share the cut: `sensitivity` (measured per-layer curves), `uniform` (same fraction "
            "everywhere), `global` (rank channels across layers)"
        ),
        check=_choice(ALLOCATIONS),
    ),
    "sensitivity": Option(
        None,
        "reuse a sensitivity.json (or its folder) from an earlier run of the same model",
        doc="reuse the scan of an earlier run of the same model (`<run>/sensitivity`); checked against the model",
        check=_str,
        optional=True,
    ),
    "scan_ratios": Option(
        (0.3, 0.5, 0.7),
        "ratios each layer is pruned at, alone, by the sensitivity scan",
        doc="ratios each layer is pruned at, alone, by the scan (the largest is the most any layer loses)",
        check=lambda value, key: tuple(check_ratios(value, key)),
    ),
    "scan_images": Option(
        200,
        "validation images used by the sensitivity scan (None = all)",
        doc="validation images the scan uses (all: `scan_images=None`)",
        check=_int(1),
        optional=True,
    ),
    "steps": Option(
        1,
        "pruning rounds toward the target, each followed by `epochs` of fine-tuning",
        doc=(
            "pruning rounds toward the target, each followed by `epochs` of fine-tuning (`PruneCallback`'s "
            "default is 3: it prunes progressively during one training run, see "
            "[docs/callbacks.md](docs/callbacks.md))"
        ),
        check=_int(1),
        shown="`1` (one-shot)",
    ),
    "epochs": Option(
        None,
        "fine-tuning epochs per step; None = 10, more on a small set (min_images); 0 = prune only",
        doc=(
            "fine-tuning epochs per round; unset, 10 raised until a round sees `min_images` training images (30 "
            "epochs for 150 images); `0` prunes only"
        ),
        check=_int(0),
        optional=True,
        shown="`10`, more on a small set",
    ),
    "min_images": Option(
        4500,
        "with epochs unset: fine-tuning sees at least this many training images per step",
        doc=(
            "with `epochs` unset: training images each fine-tuning round sees at least (epochs mislead on small "
            "sets: 10 epochs of 150 images are 1,500 images)"
        ),
        check=_int(0),
    ),
    "distill": Option(
        True,
        "fine-tune with knowledge distillation from the unpruned input .pt (off for a yaml input)",
        doc=(
            "fine-tune with Ultralytics' knowledge distillation from the unpruned input checkpoint, `dis=1.0` "
            "(off for a yaml input)"
        ),
        check=_bool,
    ),
    "distill_model": Option(
        None,
        "another teacher checkpoint for distillation (implies distill=True)",
        doc="another teacher checkpoint (same classes and feature levels), e.g. a larger model",
        check=_str,
        optional=True,
    ),
    "distill_projector": Option(
        "random",
        "distillation projectors: random (Ultralytics) or fit (least squares, 4 batches)",
        doc=(
            "the distillation projectors (student -> teacher features): `random` as Ultralytics initialises them,"
            " or `fit`: least squares on four training batches before the first step, so the distillation loss "
            "starts from the fit's residual"
        ),
        check=lambda value, key: check_projector_init(value),
    ),
    "sparse_epochs": Option(
        0,
        "train the model this many epochs with a sparsity penalty before pruning",
        doc="train this many epochs with a sparsity penalty (`sparse`, `sparsity`) before pruning",
        check=_int(0),
    ),
    "sparsity": Option(
        1e-4,
        "strength of that penalty",
        doc="strength of the sparsity penalty",
        check=lambda value, key: check_float(value, key, low=0.0),
    ),
    "sparse": Option(
        "group",
        "what it acts on: group (group lasso over each DepGraph channel group, BN scales included), bn",
        doc=(
            "what the sparsity penalty acts on: `group` (group lasso over each DepGraph channel group, BN scales "
            "included) or `bn` (L1 on BN scales)"
        ),
        check=_choice(SPARSE_MODES, "sparse mode"),
    ),
    "imgsz": Option(
        640,
        "training, validation, GFLOPs and latency image size",
        doc="training, validation, GFLOPs and latency image size",
        check=_int(32),
    ),
    "batch": Option(16, "training and validation batch size", check=_int(1)),
    "device": Option(
        None,
        "None = as Ultralytics: the first GPU when there is one, else the CPU",
        doc="as in Ultralytics (`cpu`, `0`); unset: the first GPU when there is one, else the CPU",
        check=lambda value, key: resolve_device(value),
        shown="first GPU, else `cpu`",
    ),
    "method": Option(
        "l2",
        "channel importance (yolo_prune.policy.importance.IMPORTANCE_METHODS: l1, l2, bn, lamp, ...)",
        doc="channel importance inside a layer: `l1`, `l2`, `bn`, `lamp`, `fpgm`, `taylor`, `hessian`, `random`",
        check=lambda value, key: check_method(value),
    ),
    "global_pruning": Option(
        False,
        "same as allocation=global (kept for compatibility)",
        doc="the same as `allocation=global` (kept for compatibility)",
        check=_bool,
    ),
    "round_to": Option(
        "auto",
        "kept widths are multiples of this; auto = the backend's channel block (16 on AVX-512)",
        doc=(
            "kept widths are multiples of this; `auto` = the channel block of the deployment hardware (16 on a "
            "CPU with AVX-512, 8 on other CPUs and on GPUs), logged and written in the report. The MACs target "
            "counts MACs with widths padded to that block (the work a blocked kernel executes)"
        ),
        check=lambda value, key: check_round_to(value),
    ),
    "attention": Option(
        "heads",
        "attention blocks (PSA, C2PSA, A2C2f): heads = remove whole heads, keep = leave intact",
        doc=(
            "attention blocks (PSA, C2PSA, C3k2 attn, A2C2f): `heads` removes whole heads at the layer's ratio "
            "and prunes the stream around them, `keep` leaves them intact"
        ),
        check=lambda value, key: check_attention(value),
    ),
    "reconstruct": Option(
        "ls",
        "re-fit pruned convs to the unpruned ones on train images before training: ls, seq, bn, none",
        doc=(
            "before any training, re-fit the pruned network to the unpruned one on `reconstruct_images` training "
            "images: `ls` fits each conv's kept weights and an offset by least squares to reproduce the unpruned "
            "conv's output (stock shapes: the offset goes into the BatchNorm mean), `seq` does it conv after conv"
            " on the pruned network's own inputs (slower, and worse on the real COCO model), `bn` re-estimates "
            "BatchNorm statistics only, `none` skips it (the default for a yaml input)"
        ),
        check=lambda value, key: check_reconstruct(value),
    ),
    "reconstruct_images": Option(
        256, "training images for reconstruct", check=_int(1), doc="training images for `reconstruct`"
    ),
    "max_map_drop": Option(
        None,
        "stop the schedule once mAP50-95 is more than this below the baseline (absolute)",
        doc=(
            "stop the schedule once mAP50-95 falls more than this below the baseline; keep the last model within budget"
        ),
        check=lambda value, key: check_float(value, key, low=0.0, high=1.0),
        optional=True,
    ),
    "backends": Option(
        "torch,onnx",
        "latency backends: torch, onnx, openvino (comma-separated)",
        doc=(
            "latency backends in the report: `torch`, `onnx`, `openvino` (CPU; `pip install "
            '"yolo-prune[openvino]"`); every row timed side by side in `runs` interleaved rounds after `warmup` '
            "ones, on `threads` threads"
        ),
    ),
    "latency_imgsz": Option(
        None,
        "image size the report times at (the deployment size); None = imgsz",
        doc=(
            "image size the report times at, when you deploy at another size than you train (e.g. train at 320, "
            "time at 640)"
        ),
        check=_int(32),
        optional=True,
        shown="`imgsz`",
    ),
    "int8": Option(
        False,
        "also export baseline and final model to INT8: onnx, openvino (= True), or another INT8 format",
        doc=(
            "INT8 as the last step: quantize the baseline and the final model to this INT8 format through "
            "Ultralytics' exporter (calibrated on up to 300 train images) and add the rows `baseline+int8` and "
            "`final+int8`: `onnx` (ONNX Runtime static INT8, Q/DQ), `openvino` or `True` (NNCF), or any other "
            "INT8 format of the installed exporter (`engine`, `litert`, `rknn`, `coreml`, `mnn`, `imx`, ...). "
            "`onnx` and `openvino` rows are validated and timed beside the FP32 rows on their runtime (added to "
            "`backends`); the others are exported with their size, not timed here. An unknown format or a missing"
            " toolchain is refused in one line before any work; a failed INT8 step exits with 1"
        ),
    ),
    "qat": Option(
        False,
        "after fine-tuning, `qat_epochs` of quantization-aware training (ModelOpt) -> INT8 ONNX (Q/DQ)",
        doc=(
            "after fine-tuning, train the final model `qat_epochs` more with quantization-aware training "
            '(Ultralytics `quantize=8`: NVIDIA ModelOpt fake quantization, `pip install "yolo-prune[qat]"`, runs '
            "on the CPU too) and add the row `final+qat` (its INT8 ONNX, Q/DQ from the trained ranges); implies "
            "`int8=onnx`. `weights/best.pt` stays the plain FP32 model; the QAT checkpoint is "
            "`qat/weights/best.pt`"
        ),
        check=_bool,
    ),
    "qat_epochs": Option(
        3,
        "epochs of quantization-aware training with qat=True",
        doc="epochs of quantization-aware training with `qat=True`",
        check=_int(1),
    ),
    "runs": Option(50, "timed latency runs per backend", doc="timed latency rounds per backend", check=_int(1)),
    "warmup": Option(10, "untimed latency runs per backend", doc="untimed latency rounds per backend", check=_int(0)),
    "threads": Option(
        None,
        "CPU threads for latency; None = every usable core",
        doc="CPU threads for latency (1 is steadier on a shared machine); unset: every usable core",
        check=_int(1),
        optional=True,
        shown="all cores",
    ),
    "seed": Option(0, "pruning seed (random method) and trainer seed", check=_int(0)),
    "project": Option(
        "runs/prune", "parent folder of the run folders", doc="parent folder of the run folders", check=_str
    ),
    "name": Option(
        "exp",
        "run folder name (incremented: exp, exp-2, ...)",
        doc="run folder name, incremented when it exists (`exp`, `exp-2`, ...): nothing is overwritten",
        check=_name,
    ),
}
PRUNE_DEFAULTS: dict[str, Any] = {key: option.default for key, option in PRUNE_OPTIONS.items()}

# Ultralytics keys that the pipeline sets itself, or that would break it
RESERVED_TRAIN_KEYS = frozenset(
    {"model", "data", "epochs", "imgsz", "batch", "device", "project", "name", "exist_ok", "mode", "task"}
    | {"resume", "pretrained", "cfg", "save_dir"}
)
TARGET_KEYS = ("ratio", "target_macs", "target_latency")


def check_prune_args(overrides: dict[str, Any]) -> dict[str, Any]:
    """Check a pruning run's arguments in one pass and return them merged with `PRUNE_DEFAULTS`.

    Keys are `PRUNE_OPTIONS` plus any Ultralytics training argument (``lr0``, ``workers``, ``patience``, ...; checked
    against ``ultralytics.cfg.DEFAULT_CFG_DICT`` and its type rules); the latter are returned under ``train_args``.
    ``round_to`` stays ``"auto"`` or an int: the hardware that resolves ``auto`` is known at the run's setup.

    Args:
        overrides (dict[str, Any]): User arguments (typed values, or strings as parsed by ``smart_value``).

    Returns:
        (dict[str, Any]): Every `PRUNE_OPTIONS` key with a checked value, plus ``train_args`` (dict).

    Raises:
        ValueError: One line: an unknown key (naming the closest valid one), a missing ``model``/``data``, a bad value,
            two targets, or a toolchain an option needs that is not installed.
    """
    from ultralytics.cfg import DEFAULT_CFG_DICT, check_cfg

    overrides = dict(overrides)
    train_args = {k: overrides.pop(k) for k in list(overrides) if k not in PRUNE_OPTIONS and k in DEFAULT_CFG_DICT}
    for key in overrides:
        if key not in PRUNE_OPTIONS:
            valid = [*PRUNE_OPTIONS, *(k for k in DEFAULT_CFG_DICT if k not in RESERVED_TRAIN_KEYS)]
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
    for key, option in PRUNE_OPTIONS.items():
        if option.optional and is_none(args[key]):
            args[key] = None
        elif option.check is not None:
            args[key] = option.check(args[key], key)
    _check_target(args, overrides)
    _check_distill(args, overrides)
    if "reconstruct" not in overrides and not args["model"].lower().endswith(".pt"):
        args["reconstruct"] = None  # an untrained model built from yaml has nothing to reconstruct
    args["allocation"] = "global" if args["global_pruning"] else args["allocation"]
    if args["sensitivity"] is not None and args["allocation"] != "sensitivity":
        raise ValueError(f"sensitivity= is used by allocation=sensitivity, not allocation={args['allocation']}")
    if args["latency_imgsz"] is None:
        args["latency_imgsz"] = args["imgsz"]
    names, errors = check_backend_names(args["backends"])
    args["int8"], names = check_int8_request(args["int8"], names, args["device"], qat=args["qat"])
    if errors or not names:
        raise ValueError(next(iter(errors.values()), "backends= must name at least one backend (torch, onnx)"))
    args["backends"] = tuple(names)
    args["train_args"] = train_args
    return args


def _check_target(args: dict[str, Any], overrides: dict[str, Any]) -> None:
    """One of ratio / target_macs / target_latency (target_macs=0.5 when none is given); latency prunes in one step."""
    given = [k for k in TARGET_KEYS if not is_none(overrides.get(k))]
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
    if args["target_latency"] is not None and args["steps"] > 1:
        raise ValueError("target_latency= prunes in one step: leave steps=1 (or use target_macs= with steps)")


def _check_distill(args: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Distillation needs a trained teacher: the input checkpoint, or ``distill_model``; off for a yaml input."""
    if args["distill_model"] is None and not args["model"].lower().endswith(".pt"):
        if overrides.get("distill") is True:
            raise ValueError(
                f"distill=True needs a trained teacher: model={args['model']} is not a checkpoint; give "
                "distill_model=teacher.pt or distill=False"
            )
        args["distill"] = False  # a model built from yaml is no teacher
    args["distill"] = args["distill"] or args["distill_model"] is not None


def _shown(key: str, option: Option) -> str:
    """The default as README's table and the CLI help show it."""
    if option.shown:
        return option.shown
    value = option.default
    if value is None:
        return "required" if key in ("model", "data") else "none"
    text = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
    return f"`{text}`"


def options_table() -> str:
    """README's key table of ``yolo-prune prune``, generated from `PRUNE_OPTIONS` (markdown, one row per option)."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{k}` | {_shown(k, o)} | {o.doc or o.help} |" for k, o in PRUNE_OPTIONS.items()]
    return "\n".join(lines)


def options_help(width: int = 118) -> str:
    """The ``yolo-prune help prune`` list of options: ``key=default`` and its one-line meaning (wrapped)."""
    import textwrap

    def text(key: str, value: Any) -> str:
        if value is None and key in ("model", "data"):
            return "..."
        return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)

    items = {f"{k}={text(k, o.default)}": o.help for k, o in PRUNE_OPTIONS.items()}
    pad = max(map(len, items)) + 6
    return "\n".join(
        textwrap.fill(meaning, width, initial_indent=f"    {item}".ljust(pad), subsequent_indent=" " * pad)
        for item, meaning in items.items()
    )


if __name__ == "__main__":
    print(options_table())
