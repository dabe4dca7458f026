"""The ``yolo-prune`` command: Ultralytics-style ``key=value`` arguments, one-line errors.

Examples:
    yolo-prune prune model=best.pt data=data.yaml target_macs=0.5 epochs=10 imgsz=640
    yolo-prune bench models=best.pt,runs/prune/exp/weights/best.pt data=data.yaml imgsz=640
    yolo-prune demo
    yolo-prune help

Errors are printed as one line on stderr (``yolo-prune: error: ...``) with exit code 2 for bad input and 1 for
failures while running; set ``YOLO_PRUNE_DEBUG=1`` to get the full traceback instead. Ctrl-C exits with 130 and says
where the last good model is.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config.checks import did_you_mean
from .args import RenamedArgumentWarning

__all__ = ["COMMANDS", "entrypoint", "parse_key_values", "unmeasured"]

DEBUG_ENV = "YOLO_PRUNE_DEBUG"
PROG = "yolo-prune"


class UsageError(ValueError):
    """Bad command-line input (exit code 2)."""


class CommandUnavailable(RuntimeError):
    """A subcommand that this installation does not provide (exit code 1)."""


def parse_key_values(tokens: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` tokens the way the ``yolo`` command does (values through ``smart_value``).

    Args:
        tokens (list[str]): Command-line tokens after the subcommand.

    Returns:
        (dict[str, Any]): Parsed arguments (``"0.5"`` -> 0.5, ``"True"`` -> True, ``"a.pt"`` -> ``"a.pt"``).

    Raises:
        UsageError: On a token that is not ``key=value`` or a key given twice.

    Examples:
        >>> parse_key_values(["ratio=0.5", "model=best.pt", "fast=True"])
        {'ratio': 0.5, 'model': 'best.pt', 'fast': True}
    """
    from ultralytics.cfg import smart_value

    out: dict[str, Any] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            raise UsageError(f"expected key=value, got '{token}' (e.g. ratio=0.5); see '{PROG} help'")
        if key in out:
            raise UsageError(f"argument '{key}' given twice")
        out[key] = smart_value(value.strip())
    return out


def _check_keys(args: dict[str, Any], valid: dict[str, Any], command: str) -> None:
    """Raise a UsageError naming the closest valid key for any key not in ``valid``."""
    for key in args:
        if key not in valid:
            raise UsageError(f"unknown {command} argument '{key}'{did_you_mean(key, valid)}; valid: {', '.join(valid)}")


def _command_line(argv: list[str]) -> str:
    """Return the command line as one shell-quoted string for reports."""
    return " ".join([PROG, *(shlex.quote(a) for a in argv)])


def _prune(args: dict[str, Any], command: str) -> Path:
    """Run ``yolo-prune prune``."""
    from .pipeline import parse_prune_args, run_prune
    from .sweep import run_sweep, sweep_targets

    try:
        sweep = sweep_targets(args)
        if sweep is None:
            parse_prune_args(args)  # fail on bad input before loading anything
        else:
            for target in sweep[1]:
                parse_prune_args({**args, sweep[0]: target})
    except ValueError as e:
        raise UsageError(str(e)) from None
    return run_prune(command=command, **args) if sweep is None else run_sweep(command=command, **args)


def _resume(args: dict[str, Any], command: str) -> Path:
    """Run ``yolo-prune resume``: continue an interrupted ``yolo-prune prune`` run in its folder, by stage."""
    from .engine import PruneRun

    _check_keys(args, {"run": None}, "resume")
    if "run" not in args:
        raise UsageError("resume needs run=<the run folder>, e.g. 'yolo-prune resume run=runs/prune/exp'")
    try:
        run = PruneRun.resume(str(args["run"]))
    except ValueError as e:
        raise UsageError(str(e)) from None
    return run.run()


def _bench(args: dict[str, Any], command: str) -> Path:
    """Run ``yolo-prune bench``."""
    from ..measurement.bench import parse_bench_args, run_bench

    try:
        parsed = parse_bench_args(args)
    except ValueError as e:
        raise UsageError(str(e)) from None
    missing = [m for m in parsed["models"] if not Path(m).is_file()]
    if missing:
        raise UsageError(f"model file '{missing[0]}' not found")
    return run_bench(**parsed, command=command)


def _demo(args: dict[str, Any], command: str) -> Path:
    """Run ``yolo-prune demo``."""
    from .demo import check_demo_args, run_demo

    try:
        check_demo_args(args)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return run_demo(command=command, **args)


def _sensitivity(args: dict[str, Any], command: str) -> Path:
    """Run ``yolo-prune sensitivity`` when `yolo_prune.policy.sensitivity` exists."""
    sensitivity = _load_sensitivity()
    if sensitivity is None:
        raise CommandUnavailable("the sensitivity command is not available in this version of yolo-prune")
    defaults = getattr(sensitivity, "SENSITIVITY_DEFAULTS", None)
    if isinstance(defaults, dict):
        _check_keys(args, defaults, "sensitivity")
    return sensitivity.run_sensitivity(**args)


def _load_sensitivity() -> Any:
    """Import `yolo_prune.policy.sensitivity`, or return None when the module is not there (errors inside it
    propagate)."""
    import importlib

    try:
        return importlib.import_module("yolo_prune.policy.sensitivity")
    except ModuleNotFoundError as e:
        if e.name == "yolo_prune.policy.sensitivity":
            return None
        raise


COMMANDS: dict[str, Callable[[dict[str, Any], str], Path]] = {
    "prune": _prune,
    "resume": _resume,
    "bench": _bench,
    "demo": _demo,
    "sensitivity": _sensitivity,
}


def _defaults_text(defaults: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    """Format defaults as wrapped ``key=value`` lines."""

    def show(key: str, value: Any) -> str:
        if value is None and key in ("model", "data", "models"):
            return "..."
        return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)

    items = [f"{k}={show(k, v)}" for k, v in defaults.items()]
    items = [i for i in items if i.split("=", 1)[0] not in skip]
    lines, line = [], "    "
    for item in items:
        if len(line) + len(item) > 100:
            lines.append(line.rstrip())
            line = "    "
        line += item + " "
    lines.append(line.rstrip())
    return "\n".join(lines)


def usage(command: str | None = None) -> str:
    """Return the help text, for every subcommand or just ``command``.

    Args:
        command (str, optional): A subcommand name; None for all.

    Returns:
        (str): Usage with examples and defaults.
    """
    from .. import __version__
    from ..config.options import options_help
    from ..measurement.bench import BENCH_DEFAULTS
    from .demo import DEMO_DEFAULTS

    sections = {
        "prune": (
            "Prune a YOLO detector, fine-tune it with the pruned trainer, measure and report (run folder "
            "project/name: weights/pruned.pt, weights/best.pt, report.md, pareto.png).\n"
            "  Any Ultralytics training argument is passed to the trainer (lr0=, workers=, patience=, optimizer=...).\n"
            "  By default: 2x fewer MACs (target_macs=0.5), shared between layers by a quick per-layer sensitivity "
            "scan (allocation=sensitivity; reuse it with sensitivity=<run>/sensitivity).\n"
            f"  example: {PROG} prune model=best.pt data=data.yaml target_macs=0.5 epochs=10 imgsz=640\n"
            f"  example: {PROG} prune model=best.pt data=data.yaml target_macs=0.33 distill=True epochs=10\n"
            f"  example: {PROG} prune model=best.pt data=data.yaml target_latency=0.5 backend=onnx threads=1\n"
            f"  example: {PROG} prune model=best.pt data=data.yaml ratio=0.6 steps=3 epochs=5 max_map_drop=0.02 "
            "allocation=uniform backends=torch,onnx\n"
            f"  sweep: {PROG} prune model=best.pt data=data.yaml target_latency=0.7,0.5,0.35 name=sweep  (one scan, "
            "one pruned model per target in its own subfolder, one table and one plot of mAP against measured "
            "speed-up; the same command continues an interrupted sweep)\n"
            f"  example: {PROG} prune model=best.pt data=data.yaml int8=onnx  (INT8 rows for baseline and final model: "
            "onnx = ONNX Runtime Q/DQ, openvino (= True) = NNCF, or any INT8 format of the Ultralytics exporter: "
            "engine, litert, rknn, coreml, ...; formats without a runtime here are exported, not timed)\n"
            f"  example: {PROG} prune model=best.pt data=data.yaml qat=True qat_epochs=3  (then quantization-aware "
            "training through Ultralytics quantize=8 -> INT8 ONNX row final+qat; pip install nvidia-modelopt)\n"
            "  steps=1 (default) is one-shot: prune once, then fine-tune; steps=k repeats prune + fine-tune k times "
            "(PruneCallback defaults to 3: it prunes progressively inside one training run).\n"
            "  attention=heads (default) removes whole heads from attention blocks (PSA, C2PSA, C3k2 attn, A2C2f of "
            "YOLOv10/11/12/26) at their layer's ratio and prunes the stream around them; attention=keep leaves them "
            "intact.\n"
            "  reconstruct=ls (default for a .pt) re-fits the pruned convs to the unpruned ones by least squares on "
            "reconstruct_images=256 training images before any training (bn: BatchNorm statistics only; none: off).\n"
            "  fine-tuning lr0 = 0.4 x the peak lr0 the input checkpoint was trained with (lr0= overrides); best.pt is "
            "the model before fine-tuning unless an epoch beats it; epochs unset = 10, raised on a small set until "
            "each round sees min_images=4500 training images.\n"
            "  every row of the report is timed side by side at the end (interleaved rounds); x = the median of the "
            "per-round speed-ups, with its 10-90 % range.\n"
            "  resume an interrupted fine-tune (Python): YOLO('<run>/step1/weights/last.pt').train(resume=True, "
            "trainer=PrunedDetectionTrainer)\n"
            f"  options (key=default, meaning):\n{options_help()}"
        ),
        "resume": (
            "Continue an interrupted 'yolo-prune prune' run in its own folder: finished stages (scan, pruning, "
            "fine-tuned steps, measured rows) are taken as they are, an interrupted fine-tune continues from its last "
            "epoch, the rest runs.\n"
            f"  example: {PROG} resume run=runs/prune/exp"
        ),
        "bench": (
            "Measure checkpoints side by side (params, GFLOPs, size, mAP, latency); the first is the baseline.\n"
            f"  example: {PROG} bench models=base.pt,runs/prune/exp/weights/best.pt data=data.yaml imgsz=640\n"
            f"  example: {PROG} bench models=base.pt,pruned.pt data=data.yaml int8=onnx  (INT8 rows beside FP32)\n"
            "  batch= is the validation batch (as in Ultralytics and prune); the latency input batch is "
            "latency_batch=. Before, batch= was the latency batch and val_batch= the validation one (val_batch= "
            "still works, deprecated).\n"
            f"  defaults:\n{_defaults_text(BENCH_DEFAULTS)}"
        ),
        "demo": (
            "Train (or reuse a cached) small baseline on the built-in shapes dataset, prune it to 2x fewer MACs, "
            "fine-tune and report. Offline; about 10 minutes on a 2-core CPU (fast=True: seconds, for tests).\n"
            f"  example: {PROG} demo\n  example: {PROG} demo fast=True project=/tmp/demo\n"
            f"  defaults (plus any prune argument):\n{_defaults_text(DEMO_DEFAULTS)}"
        ),
        "sensitivity": (
            "Prune each layer alone at a few ratios, validate, and write a table and plot of mAP drop per layer.\n"
            f"  example: {PROG} sensitivity model=best.pt data=data.yaml"
        ),
        "help": f"Show this help; '{PROG} help <command>' for one command.",
        "version": "Print the yolo-prune version.",
    }
    if command in sections:
        return f"{PROG} {command}: {sections[command]}"
    head = (
        f"{PROG} {__version__}: structured channel pruning for Ultralytics YOLO models (detect, segment, pose, obb)."
        "\n\n"
        f"usage: {PROG} <command> key=value ...\n"
        f"commands: {', '.join(sections)}\n"
        "Arguments are key=value like the 'yolo' command. Built-in datasets: data=shapes.yaml, shapes-tiny.yaml,\n"
        "shapes-v3.yaml, shapes-v3-small.yaml;\n"
        "for segment, pose and obb models data=shapes-seg.yaml, shapes-pose.yaml, shapes-obb.yaml.\n"
        f"Errors: one line on stderr, exit 2 (bad input) or 1 (failure); {DEBUG_ENV}=1 shows tracebacks.\n"
    )
    return head + "\n" + "\n\n".join(f"{PROG} {name}: {text}" for name, text in sections.items()) + "\n"


def unmeasured(run_dir: Path, command: str) -> str | None:
    """Return one line saying what could not be validated or measured in a finished run, or None if all was.

    Read from the run's ``report.json``: the ``final`` row (and the INT8 rows of ``int8=True``) for ``prune``/``demo``,
    every row for ``bench`` and for a sweep of ``prune``.

    Args:
        run_dir (Path): The run folder returned by the command.
        command (str): ``prune``, ``demo`` or ``bench``.

    Returns:
        (str | None): The failure line (exit code 1), or None.
    """
    report = Path(run_dir) / "report.json"
    try:
        rows = json.loads(report.read_text())["rows"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"the run finished without a readable report ({report})"
    sweep = (Path(run_dir) / "sweep.json").is_file()  # a sweep's report: the input model, then one row per target
    checked = rows if command == "bench" or sweep else [r for r in rows if r.get("name") == "final"]
    if not checked:
        return f"the report {report} has no final model row"
    if command != "bench":
        checked += [r for r in rows if r.get("int8_of")]  # int8=True: the INT8 step was asked for, so it must work
    failed = [f"{r.get('name')} [{k}]" for r in checked for k in (r.get("errors") or {})]
    if not failed:
        return None
    what = "some models" if command == "bench" or len(checked) > 1 else "the final model"
    return (
        f"{what} could not be validated or measured: {', '.join(failed[:4])}{', ...' if len(failed) > 4 else ''}; "
        f"{report.with_name('report.md')} says why"
    )


def _error(message: str, code: int) -> int:
    """Print a one-line error on stderr and return ``code``."""
    first = " ".join(str(message).split()) or "unknown error"
    print(f"{PROG}: error: {first}", file=sys.stderr)
    return code


MEASURED_COMMANDS = ("prune", "resume", "demo", "bench")  # a run whose final model was not measured exits with 1


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code (0 ok, 1 failure, 2 bad input, 130 interrupted).

    Args:
        argv (list[str], optional): Arguments after the program name; ``sys.argv[1:]`` when None.

    Returns:
        (int): Exit code.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get(DEBUG_ENV, "").lower() not in {"", "0", "false", "no"}
    if not argv or argv[0] in {"help", "-h", "--help"}:
        topic = argv[1] if len(argv) > 1 else None
        print(usage(topic))
        return 0
    if argv[0] in {"version", "-v", "--version"}:
        from .. import __version__

        print(__version__)
        return 0
    command, tokens = argv[0], argv[1:]
    if command not in COMMANDS:
        hint = did_you_mean(command, [*COMMANDS, "help", "version"])
        return _error(f"unknown command '{command}'{hint}; commands: {', '.join(COMMANDS)}, help, version", 2)
    if any(t in {"-h", "--help", "help"} for t in tokens):
        print(usage(command))
        return 0
    try:
        if os.environ.get("YOLO_OFFLINE"):
            from ..data.shapes import ensure_offline_font

            ensure_offline_font()
        args = parse_key_values(tokens)
        result = COMMANDS[command](args, _command_line(argv))
        failed = unmeasured(result, command) if command in MEASURED_COMMANDS else None
        return _error(failed, 1) if failed else 0
    except KeyboardInterrupt as e:
        last = getattr(e, "last_good", None)
        where = f"; last good model: {last}" if last else ""
        run_dir = getattr(e, "run_dir", None)
        print(f"\n{PROG}: interrupted{where}" + (f" (run folder {run_dir})" if run_dir else ""), file=sys.stderr)
        if getattr(e, "resume_hint", None):
            print(f"{PROG}: {e.resume_hint}", file=sys.stderr)
        if run_dir and (Path(run_dir) / "state.json").is_file():
            print(f"{PROG}: continue the whole run with: {PROG} resume run={run_dir}", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        if isinstance(e, (ValueError, FileNotFoundError)):  # bad input: arguments, files, dataset
            return _error(str(e), 2)
        if isinstance(e, CommandUnavailable):
            return _error(str(e), 1)
        return _error(f"{type(e).__name__}: {e} (set {DEBUG_ENV}=1 for the traceback)", 1)


def entrypoint() -> None:
    """Console-script entry point of ``yolo-prune``: run `main` and exit with its code."""
    # A renamed argument is reported once, by LOGGER.warning; the same message as a Python warning would repeat it.
    warnings.filterwarnings("ignore", category=RenamedArgumentWarning)
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
