"""Accuracy study v2: does pruning a *converged* YOLOv8n keep its accuracy at 2x and 3x fewer MACs?

Every pruned row runs the product itself (``yolo_prune.integration.pipeline.run_prune``, the code behind ``yolo-prune
prune``) on one converged baseline, with the same fine-tuning budget ``E`` for every row. Controls get the same budget:

- ``ft``: the unpruned baseline fine-tuned ``E`` more epochs (the fair control for the extra epochs);
- ``lowres-Nx``: the unpruned baseline fine-tuned ``E`` epochs at a lower input size (the cheapest alternative users
  try first); sizes must be multiples of the stride 32, so 96 px (1.78x fewer MACs) stands for 2x and 64 px (4x) for 3x;
- ``scratch-Nx`` / ``scratch-Nx-distill``: ``yolov8n.yaml`` at a smaller width with at least N x fewer MACs, trained
  from scratch for the baseline's epochs + ``E``, without and with the same distillation teacher.

Rows are listed in `ROWS` (name -> recipe) and run in `PLAN` order, one (row, seed) at a time; a result that exists
is skipped, so an interrupted study resumes. Results: ``--out``/``results.json`` and a Markdown table (``--table``).

Usage:
    python benchmarks/accuracy_study.py --out runs/study2                      # every row, in ROWS order
    python benchmarks/accuracy_study.py --out runs/study2 --rows sens-2x ft    # some rows
    python benchmarks/accuracy_study.py --out runs/study2 --report-only --results benchmarks/results/accuracy
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's yolo_prune
sys.path.insert(0, str(Path(__file__).resolve().parent))  # helpers shared with study.py

import study  # noqa: E402
import torch  # noqa: E402

DATA = "shapes.yaml"
IMGSZ = 128
E = 6  # fine-tuning budget (epochs) of every row
# Converged baseline: study.py's from-scratch recipe (AdamW lr0=0.003, nbs=16, no mosaic, cached images) run until
# validation mAP plateaus (linear LR decay to lrf over 50 epochs, early stopping with patience 10).
BASELINE_RECIPE: dict[str, Any] = {**study.BASELINE_RECIPE, "imgsz": IMGSZ, "epochs": 50, "patience": 10}
# Shared by every fine-tuning row (pruned or not); the optimizer, lr0 and warm-up are yolo-prune's own defaults
# (yolo_prune.integration.pipeline.FINETUNE_DEFAULTS) unless a row says otherwise.
COMMON = {k: BASELINE_RECIPE[k] for k in ("batch", "nbs", "mosaic", "close_mosaic", "cache", "workers", "amp", "plots")}
COMMON.update(device="cpu", deterministic=False, round_to=8)  # the 0.2 default every row below was measured with

# name -> (kind, settings). kind: prune (run_prune arguments), ft (fine-tune unpruned), lowres, scratch.
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "ft": ("ft", {}),
    "sens-2x": ("prune", {"target_macs": 0.5, "allocation": "sensitivity"}),
    "uniform-2x": ("prune", {"target_macs": 0.5, "allocation": "uniform"}),
    "sens-2x-distill": ("prune", {"target_macs": 0.5, "allocation": "sensitivity", "distill": True, "dis": 1.0}),
    "lowres-2x": ("lowres", {"imgsz": 96}),
    "sens-3x": ("prune", {"target_macs": 1 / 3, "allocation": "sensitivity"}),
    "uniform-3x": ("prune", {"target_macs": 1 / 3, "allocation": "uniform"}),
    "lowres-3x": ("lowres", {"imgsz": 64}),
    "scratch-2x": ("scratch", {"target": 2.0}),
    # the 0.3 default (round_to=auto: 16 on an AVX-512 CPU), with its own scan at that rounding
    "default-2x-r16": (
        "prune",
        {"target_macs": 0.5, "allocation": "sensitivity", "distill": True, "dis": 1.0, "round_to": 16},
    ),
    # uniform pruning at the 0.4 defaults: what the sensitivity allocation is worth at round_to=16
    "uniform-2x-r16": (
        "prune",
        {"target_macs": 0.5, "allocation": "uniform", "distill": True, "dis": 1.0, "round_to": 16},
    ),
    # a latency target on the same r16 scan, at the latency the MACs default above measured (same seed): does pricing
    # time instead of MACs keep the accuracy at equal speed? (ONNX Runtime, 1 thread, the study's imgsz)
    "latency-r16-match": (
        "prune",
        {
            "target_latency": "match:default-2x-r16",
            "backend": "onnx",
            "threads": 1,
            "allocation": "sensitivity",
            "distill": True,
            "dis": 1.0,
            "round_to": 16,
        },
    ),
    "sens-2x-distill6": ("prune", {"target_macs": 0.5, "allocation": "sensitivity", "distill": True, "dis": 6.0}),
    "uniform-2x-distill": ("prune", {"target_macs": 0.5, "allocation": "uniform", "distill": True, "dis": 1.0}),
    "sens-2x-steps3": ("prune", {"target_macs": 0.5, "allocation": "sensitivity", "steps": 3, "epochs": E // 3}),
    "sens-2x-sparse": (
        "prune",
        {"target_macs": 0.5, "allocation": "sensitivity", "sparse_epochs": 2, "sparsity": 1e-4, "epochs": E - 2},
    ),
    "global-2x": ("prune", {"target_macs": 0.5, "allocation": "global"}),
    # Ultralytics' own training defaults instead of yolo-prune's fine-tuning defaults (FINETUNE_DEFAULTS)
    "sens-2x-ultralytics-recipe": (
        "prune",
        {
            "target_macs": 0.5,
            "allocation": "sensitivity",
            "optimizer": "auto",
            "lr0": 0.01,
            "warmup_epochs": 3.0,
            "warmup_bias_lr": 0.1,
        },
    ),
    "scratch-2x-distill": ("scratch", {"target": 2.0, "distill": True}),
    "sens-3x-distill": ("prune", {"target_macs": 1 / 3, "allocation": "sensitivity", "distill": True, "dis": 1.0}),
    "scratch-3x": ("scratch", {"target": 3.0}),
}

# (row, seed) in the order they run: one seed of the main rows and controls first, then second seeds of the 2x rows,
# then the variants. An interrupted study resumes where it stopped.
PLAN: list[tuple[str, int]] = [
    *[(r, 0) for r in ("ft", "sens-2x", "uniform-2x", "sens-2x-distill", "lowres-2x", "sens-3x", "lowres-3x")],
    *[(r, 0) for r in ("uniform-3x", "scratch-2x")],
    *[(r, 1) for r in ("ft", "sens-2x", "uniform-2x", "sens-2x-distill", "lowres-2x")],
    *[(r, 0) for r in ("sens-2x-ultralytics-recipe", "sens-2x-distill6", "scratch-3x", "scratch-2x-distill")],
    *[(r, 0) for r in ("sens-3x-distill", "sens-2x-steps3", "global-2x", "sens-2x-sparse", "uniform-2x-distill")],
    ("scratch-2x", 1),
    *[(r, 1) for r in ("sens-3x-distill", "scratch-3x")],  # the 3x rows that came out close
    *[(r, s) for s in (0, 1) for r in ("default-2x-r16", "latency-r16-match", "uniform-2x-r16")],
]


def log(msg: str) -> None:
    """Print a progress line with the wall-clock time."""
    print(f"[accuracy-study {datetime.now():%H:%M:%S}] {msg}", flush=True)


def baseline(out: Path) -> tuple[Path, dict]:
    """Train the converged baseline (or reuse ``out/models/baseline.pt``); return it and its record."""
    from study import train

    from yolo_prune.data.builtin import resolve_data

    path = out / "models" / "baseline.pt"
    record_file = out / "baseline.json"
    if path.is_file() and record_file.is_file():
        return path, json.loads(record_file.read_text())
    record = train("yolov8n.yaml", resolve_data(DATA), BASELINE_RECIPE, out, "baseline")
    record["recipe"] = BASELINE_RECIPE
    record_file.write_text(json.dumps(record, indent=1))
    return path, record


def scan(out: Path, base: Path) -> Path:
    """Run the sensitivity scan once (the same one `run_prune` would run) and return its folder for reuse."""
    from yolo_prune.policy.sensitivity import run_sensitivity

    folder = out / "sensitivity"
    if (folder / "sensitivity.json").is_file():
        return folder
    start = time.perf_counter()
    made = run_sensitivity(
        str(base), DATA, imgsz=IMGSZ, batch=16, round_to=8, project=out, name="sensitivity-tmp", verbose=True
    )
    shutil.move(str(made), str(folder))
    (folder / "seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
    return folder


def validate(path: Path, imgsz: int = IMGSZ) -> dict:
    """mAP50-95 and mAP50 on the full validation split."""
    from yolo_prune.data.builtin import resolve_data
    from yolo_prune.measurement.measure import validate as val

    return val(str(path), resolve_data(DATA), imgsz=imgsz, batch=16, device="cpu")


def macs_ratio(path: Path, base: Path, imgsz: int = IMGSZ) -> float:
    """Baseline MACs at ``IMGSZ`` divided by the model's MACs at ``imgsz`` (how many times fewer)."""
    from yolo_prune.measurement.measure import count_gflops, load_yolo

    return count_gflops(load_yolo(str(base)).model, IMGSZ) / count_gflops(load_yolo(str(path)).model, imgsz)


def onnx_latency(path: Path, base: Path, rounds: int = 40) -> dict:
    """Latency of the model against the baseline on ONNX Runtime (1 thread, ``IMGSZ``), interleaved rounds."""
    from yolo_prune.measurement.hardware import compare_latency
    from yolo_prune.measurement.measure import load_yolo

    return compare_latency(load_yolo(str(base)).model, load_yolo(str(path)).model, "onnx", IMGSZ, 1, rounds=rounds)


def run_row(
    out: Path, name: str, seed: int, base: Path, base_record: dict, sens: Path, results: dict | None = None
) -> dict:
    """Run one row with one seed and return its record (mAP, MACs cut, ONNX Runtime latency ratio, epochs, seconds).

    ``results`` holds the rows already run (a ``match:`` latency target reads the latency of the row it names)."""
    results = results or {}
    from study import scaled_model_yaml, train, width_for_macs

    from yolo_prune.data.builtin import resolve_data
    from yolo_prune.integration.pipeline import FINETUNE_DEFAULTS, run_prune
    from yolo_prune.integration.trainer import PrunedDetectionTrainer

    kind, settings = ROWS[name]
    tag = f"{name}-s{seed}"
    start = time.perf_counter()
    record: dict[str, Any] = {"row": name, "seed": seed, "kind": kind, "settings": settings}
    if kind == "prune":
        args = {"epochs": E, "distill": False, **settings}  # distillation only where the row says so
        matched = str(args.get("target_latency", ""))
        if matched.startswith("match:"):  # the ONNX Runtime latency that row reached with the same seed
            args["target_latency"] = round(results[f"{matched[6:]}-s{seed}"]["onnx_latency"]["ratio"], 4)
            record["target_latency"] = args["target_latency"]
        scanned = args.get("allocation") == "sensitivity"
        own_scan = scanned and args.get("round_to", COMMON["round_to"]) != COMMON["round_to"]
        if own_scan and (out / "sensitivity-r16" / "sensitivity.json").is_file():
            args["sensitivity"] = str(out / "sensitivity-r16")  # the first seed's scan at this rounding
        elif scanned and not args.get("sparse_epochs") and not own_scan:
            args["sensitivity"] = str(sens)  # the shared scan of the baseline (a sparse model is scanned anew)
        shutil.rmtree(out / "prune" / tag, ignore_errors=True)
        run_dir = run_prune(
            model=str(base),
            data=DATA,
            imgsz=IMGSZ,
            seed=seed,
            project=str(out / "prune"),
            name=tag,
            runs=5,
            warmup=1,
            **{**COMMON, **args},
        )
        if own_scan and not (out / "sensitivity-r16").exists():
            shutil.copytree(run_dir / "sensitivity", out / "sensitivity-r16")
        report = json.loads((run_dir / "report.json").read_text())
        final = next(r for r in report["rows"] if r["name"] == "final")
        path = out / "models" / f"{tag}.pt"
        shutil.copyfile(run_dir / "weights" / "best.pt", path)
        record.update(map50_95=final["map50_95"], map50=final["map50"], macs_x=macs_ratio(path, base))
        meta = torch.load(run_dir / "weights" / "pruned.pt", map_location="cpu", weights_only=False)["yolo_prune"]
        record["layer_ratios"] = meta.get("layer_ratios")  # the last step's allocation
        record["epochs"] = args["epochs"] * args.get("steps", 1) + args.get("sparse_epochs", 0)
        record["onnx_latency"] = onnx_latency(path, base)
    elif kind in ("ft", "lowres"):
        imgsz = settings.get("imgsz", IMGSZ)
        recipe = {**COMMON, **FINETUNE_DEFAULTS, "epochs": E, "imgsz": imgsz, "seed": seed}
        result = train(base, resolve_data(DATA), recipe, out, tag, trainer=PrunedDetectionTrainer)
        path = Path(result["path"])
        record.update(validate(path, imgsz), macs_x=macs_ratio(path, base, imgsz), epochs=E, imgsz=imgsz)
    elif kind == "scratch":
        from yolo_prune.measurement.measure import load_yolo

        nc = int(load_yolo(str(base)).model.model[-1].nc)
        width, _ = width_for_macs(settings["target"], nc, IMGSZ)
        yaml_path = scaled_model_yaml(width, out / "yaml" / f"yolov8n-w{width:.4f}.yaml")
        epochs = int(base_record["epochs_run"]) + E
        recipe = {**BASELINE_RECIPE, "epochs": epochs, "patience": 0, "seed": seed}
        if settings.get("distill"):
            recipe.update(distill_model=str(base.resolve()), dis=1.0)
        result = train(yaml_path, resolve_data(DATA), recipe, out, tag)
        path = Path(result["path"])
        record.update(validate(path), macs_x=macs_ratio(path, base), epochs=epochs, width=width)
    else:
        raise ValueError(f"unknown row kind {kind}")
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record


def summarize(results: dict, base_record: dict) -> str:
    """Markdown table: one line per row, mean and spread (min-max) over seeds."""
    lines = [
        f"Baseline (converged): mAP50-95 {base_record['map50_95']:.4f}, mAP50 {base_record['map50']:.4f} after "
        f"{base_record['epochs_run']} epochs. Every other row: the baseline's budget + E={E} epochs.",
        "",
        "| row | seeds | MACs cut | ORT latency | mAP50-95 mean | spread (min-max) | mAP50 mean | vs ft |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_row: dict[str, list[dict]] = {}
    for rec in results.values():
        by_row.setdefault(rec["row"], []).append(rec)
    ft = statistics.mean(r["map50_95"] for r in by_row.get("ft", [{"map50_95": float("nan")}]))
    for name in ROWS:
        recs = by_row.get(name)
        if not recs:
            continue
        maps = [r["map50_95"] for r in recs]
        mean = statistics.mean(maps)
        lat = [r["onnx_latency"]["ratio"] for r in recs if "onnx_latency" in r]
        latency = f"{statistics.mean(lat):.1%}" if lat else "-"
        lines.append(
            f"| {name} | {len(recs)} | {statistics.mean(r['macs_x'] for r in recs):.2f}x | {latency} | {mean:.4f} | "
            f"{min(maps):.4f}-{max(maps):.4f} | {statistics.mean(r['map50'] for r in recs):.4f} | "
            f"{(mean - ft) * 100:+.1f} pt |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the study (or only its report)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/study2"))
    parser.add_argument("--rows", nargs="*", default=None, help="row names (default: all, in ROWS order)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="copy results.json, baseline.json and the scan there and write table.md (benchmarks/results/accuracy)",
    )
    opts = parser.parse_args(argv)
    out = opts.out
    (out / "models").mkdir(parents=True, exist_ok=True)
    base, base_record = baseline(out)
    if "map50_95" not in base_record:
        from study import _curve

        base_record["curve"] = base_record.get("curve") or _curve(out / "train" / "baseline")
        base_record.update(validate(base), epochs_run=len(base_record["curve"]))
        (out / "baseline.json").write_text(json.dumps(base_record, indent=1))
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    if not opts.report_only:
        sens = scan(out, base)
        plan = [(r, s) for r, s in PLAN if opts.rows is None or r in opts.rows]
        for name, seed in plan:
            key = f"{name}-s{seed}"
            if key in results:
                continue
            log(f"row {key}")
            results[key] = run_row(out, name, seed, base, base_record, sens, results)
            results_file.write_text(json.dumps(results, indent=1))
            log(f"row {key}: mAP50-95 {results[key]['map50_95']:.4f} ({results[key]['seconds']:.0f} s)")
    table = summarize(results, base_record)
    print(table)
    if opts.results:
        opts.results.mkdir(parents=True, exist_ok=True)
        (opts.results / "table.md").write_text(table)
        for name in ("results.json", "baseline.json"):  # (layer_ratios.json was written by hand for this run)
            if (out / name).is_file():
                shutil.copyfile(out / name, opts.results / name)
        for name in ("sensitivity.json", "sensitivity.md", "sensitivity.png"):
            if (out / "sensitivity" / name).is_file():
                shutil.copyfile(out / "sensitivity" / name, opts.results / name)
        curves = opts.results / "curves"  # per-epoch training curves (losses incl. dis_loss, mAP) of every row
        curves.mkdir(exist_ok=True)
        for key in results:
            for csv_file in sorted((out / "prune" / key).glob("*/results.csv")) + [out / "train" / key / "results.csv"]:
                if csv_file.is_file():
                    stage = csv_file.parent.name
                    shutil.copyfile(csv_file, curves / (f"{key}.csv" if stage == key else f"{key}-{stage}.csv"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
