"""Several operating points from one command: ``target_latency=0.7,0.5,0.35`` (or ``target_macs=``/``ratio=``).

A sweep scans the model's sensitivity once, then runs `yolo_prune.integration.pipeline.run_prune` once per target into
a subfolder of one run folder (``<run>/target_latency-0.7/weights/best.pt``, ...), each allocating from the same scan.
At the end the input model and every target's final model are timed side by side
(`yolo_prune.measurement.side_by_side`) and written as one report: ``report.md``/``.json``, ``results.csv`` and
``pareto.png`` (mAP50-95 against measured speed-up, with the 10-90 % ranges as error bars). ``sweep.json`` records
the targets; running the same command again with the same ``name=`` continues the sweep, skipping finished targets.

Examples:
    yolo-prune prune model=best.pt data=data.yaml target_latency=0.7,0.5,0.35 name=sweep
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["SWEEP_KEYS", "run_sweep", "sweep_targets"]

SWEEP_KEYS = ("target_latency", "target_macs", "ratio")


def sweep_targets(overrides: dict[str, Any]) -> tuple[str, list[float]] | None:
    """Return ``(key, targets)`` when one of `SWEEP_KEYS` holds several values (``"0.7,0.5"`` or a list), else None.

    Raises:
        ValueError: On a value that is not a number, a repeated value, or two keys swept at once.
    """
    swept = []
    for key in SWEEP_KEYS:
        value = overrides.get(key)
        if isinstance(value, str) and "," in value:
            items: list[Any] = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            continue
        try:
            numbers = [float(v) for v in items]
        except (TypeError, ValueError):
            raise ValueError(
                f"{key}={value!r}: a sweep takes numbers separated by commas, e.g. {key}=0.7,0.5"
            ) from None
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"{key}={value!r} repeats a target")
        swept.append((key, numbers))
    if len(swept) > 1:
        raise ValueError(f"sweep one of {', '.join(SWEEP_KEYS)} at a time, not {swept[0][0]}= and {swept[1][0]}=")
    return swept[0] if swept else None


def _tag(key: str, value: float) -> str:
    """Subfolder name of one target: ``target_latency-0.5``."""
    return f"{key}-{value:g}"


def _set_aside(folder: Path) -> None:
    """Move an unfinished subfolder of an interrupted sweep out of the way (``<name>.interrupted``, never deleted)."""
    from ultralytics.utils.files import increment_path

    if folder.exists():
        folder.rename(increment_path(folder.with_name(f"{folder.name}.interrupted")))


def run_sweep(command: str | None = None, **kwargs: Any) -> Path:
    """Prune the model once per target of a sweep (see the module docstring) and return the sweep's run folder.

    Args:
        command: The command line, recorded in the reports.
        **kwargs: `run_prune` arguments, one of `SWEEP_KEYS` holding several targets.

    Raises:
        ValueError: On bad arguments (every target is checked before any work).
    """
    from ultralytics.utils import LOGGER, colorstr
    from ultralytics.utils.files import increment_path

    from ..config.checks import check_output_folder
    from ..measurement.measure import new_row
    from ..measurement.report import format_table, write_report
    from .checkpoint import load_yolo
    from .engine import parse_prune_args
    from .pipeline import run_prune
    from .stages import sensitivity_curves, time_side_by_side

    prefix = colorstr("sweep: ")
    found = sweep_targets(kwargs)
    if found is None:
        raise ValueError(f"a sweep needs several values of one of {', '.join(SWEEP_KEYS)}, e.g. target_latency=0.7,0.5")
    key, targets = found
    per_target = {t: parse_prune_args({**kwargs, key: t}) for t in targets}  # every target checked before any work
    args = per_target[targets[0]]
    check_output_folder(args["project"])
    record = {"model": args["model"], "data": args["data"], "key": key, "targets": targets}
    folder = Path(args["project"]) / args["name"]
    sweep_file = folder / "sweep.json"
    earlier = json.loads(sweep_file.read_text()) if sweep_file.is_file() else {}
    if not earlier.get("finished") and {k: v for k, v in earlier.items() if k in record} == record:
        run_dir = folder  # the same sweep, interrupted: continue it
        LOGGER.info(f"{prefix}continuing {run_dir}: finished targets are skipped")
    else:
        run_dir = increment_path(folder, mkdir=True)
        sweep_file = run_dir / "sweep.json"
        sweep_file.write_text(json.dumps({**record, "command": command}, indent=1))
    LOGGER.info(
        f"{prefix}{args['model']} -> {colorstr('bold', run_dir)}: {key} = {', '.join(f'{t:g}' for t in targets)}"
    )

    common = {k: v for k, v in kwargs.items() if k not in (key, "project", "name")}
    if args["allocation"] == "sensitivity" and args["sensitivity"] is None:
        if not (run_dir / "sensitivity" / "sensitivity.json").is_file():
            _set_aside(run_dir / "sensitivity")
            sensitivity_curves(load_yolo(args["model"]), run_dir, args)  # one scan for every target
        common["sensitivity"] = str(run_dir / "sensitivity")
    outs: dict[float, Path] = {}
    failed: dict[float, str] = {}
    for i, t in enumerate(targets, 1):
        tag = _tag(key, t)
        if (run_dir / tag / "report.json").is_file():
            LOGGER.info(f"{prefix}({i}/{len(targets)}) {key}={t:g}: finished earlier, skipped")
            outs[t] = run_dir / tag
            continue
        _set_aside(run_dir / tag)
        LOGGER.info(f"{prefix}({i}/{len(targets)}) {key}={t:g}")
        try:
            outs[t] = run_prune(command=command, **common, **{key: t}, project=str(run_dir), name=tag)
        except ValueError as e:  # e.g. a target out of reach of the scan: keep the other targets, report this one
            LOGGER.warning(f"{prefix}{key}={t:g} failed: {e}")
            failed[t] = str(e)

    if not outs:
        raise ValueError(f"no target of the sweep could be pruned: {next(iter(failed.values()))}")
    reports = {t: json.loads((d / "report.json").read_text()) for t, d in outs.items()}
    first = reports[next(iter(outs))]["rows"]
    rows = [{k: v for k, v in first[0].items() if k not in ("vs_baseline", "speedup_detail")}]
    rows[0].update(latency_ms={}, latency_detail={}, errors={})
    models = {rows[0]["name"]: args["model"]}  # row name -> what is timed for it
    for t in targets:
        if t in failed:  # a row that says why, so the command exits with 1 (cli.unmeasured)
            rows.append(new_row(f"{key}={t:g}", errors={"prune": failed[t]}))
            continue
        final = next(r for r in reports[t]["rows"] if r["name"] == "final")
        row = {k: v for k, v in final.items() if k not in ("vs_baseline", "speedup_detail")}
        row.update(name=f"{key}={t:g}", latency_ms={}, latency_detail={}, errors={})
        rows.append(row)
        models[row["name"]] = str(outs[t] / "weights" / "best.pt")
    timing = time_side_by_side(rows, models, args, run_dir)
    notes = [f"{key}={t:g}: {outs[t].name}/weights/best.pt (its own report in {outs[t].name}/)" for t in outs]
    notes += [f"{key}={t:g} failed: {why}" for t, why in failed.items()]
    if "sensitivity" in common:
        notes.append(f"every target allocated from one sensitivity scan: {common['sensitivity']}")
    notes += timing
    files = write_report(rows, run_dir, title="yolo-prune prune sweep", command=command, notes=notes)
    if not failed:  # a sweep with a failed target stays open: the same command retries that target
        sweep_file.write_text(json.dumps({**json.loads(sweep_file.read_text()), "finished": True}, indent=1))
    LOGGER.info(f"{prefix}results (first row is the input model):\n{format_table(rows)}")
    LOGGER.info(f"{prefix}report: {', '.join(p.name for p in files.values())} in {colorstr('bold', run_dir)}")
    return run_dir
