"""Compare importance criteria at the same MACs budget, before and after the same short fine-tuning.

Usage:
    python benchmarks/methods.py                                   # defaults: yolov8n, shapes.yaml, imgsz 128
    python benchmarks/methods.py --baseline runs/detect/train/weights/best.pt --ft-epochs 5
    python benchmarks/methods.py --methods l2 taylor --target-macs 0.5 --global-pruning

Steps: train (or reuse) a baseline, then for every method prune it with ``prune(target_macs=...)``, validate, fine-tune
with ``PrunedDetectionTrainer`` for ``--ft-epochs`` epochs with one fixed recipe, and validate again. A baseline trained
here is cached under ``<out>/baselines/`` keyed by model, dataset folder, image size and epochs, and reused on the next
run. Results go to ``<out>/<name>/results.json`` and ``results.md`` (a Markdown table plus the machine description).
mAP is the point of this benchmark; the seconds are wall time on whatever machine runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

from ultralytics import YOLO  # noqa: E402
from ultralytics.utils import LOGGER  # noqa: E402
from ultralytics.utils.files import increment_path  # noqa: E402

from yolo_prune import PrunedDetectionTrainer, prune, save_checkpoint  # noqa: E402
from yolo_prune.data.builtin import resolve_data  # noqa: E402
from yolo_prune.data.shapes import ensure_offline_font
from yolo_prune.measurement.measure import count_gflops, count_params, validate  # noqa: E402
from yolo_prune.measurement.report import machine_info  # noqa: E402
from yolo_prune.policy.importance import IMPORTANCE_METHODS  # noqa: E402

# One short recipe for the baseline; every fine-tuning run uses FINE_TUNE (no warmup, half the learning rate).
RECIPE = {"optimizer": "AdamW", "lr0": 0.004, "warmup_epochs": 1, "plots": False, "amp": False, "seed": 0}
FINE_TUNE = {**RECIPE, "lr0": 0.002, "warmup_epochs": 0}


def baseline_checkpoint(args: argparse.Namespace, data: str, out: Path) -> Path:
    """Return the baseline checkpoint: ``--baseline``, a cached one, or one trained now."""
    if args.baseline:
        return Path(args.baseline)
    key = f"{Path(args.model).stem}-{Path(data).parent.name}-{args.imgsz}px-e{args.baseline_epochs}.pt"
    cached = out / "baselines" / key
    if cached.is_file():
        LOGGER.info(f"methods: reusing cached baseline {cached}")
        return cached
    start = time.perf_counter()
    model = YOLO(args.model)
    model.train(
        data=data,
        epochs=args.baseline_epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        workers=args.workers,
        close_mosaic=max(1, args.baseline_epochs // 3),
        project=str((out / "train").resolve()),
        name=key.removesuffix(".pt"),
        exist_ok=True,
        **RECIPE,
    )
    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(model.trainer.save_dir) / "weights" / "best.pt", cached)
    LOGGER.info(f"methods: baseline trained in {time.perf_counter() - start:.0f} s, cached as {cached}")
    return cached


def fine_tune(checkpoint: Path, data: str, args: argparse.Namespace, run: Path, name: str) -> Path:
    """Fine-tune a pruned checkpoint with the fixed recipe; return its last weights."""
    model = YOLO(str(checkpoint))
    model.train(
        trainer=PrunedDetectionTrainer,
        data=data,
        epochs=args.ft_epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        workers=args.workers,
        close_mosaic=args.ft_epochs,  # no mosaic in a short fine-tune
        val=False,
        project=str((run / "finetune").resolve()),  # a relative project would land under runs/detect
        name=name,
        exist_ok=True,
        **FINE_TUNE,
    )
    return Path(model.trainer.save_dir) / "weights" / "last.pt"


def markdown(rows: list[dict], baseline: dict, command: str, machine: dict, seconds: float) -> str:
    """Return the results table and how it was made."""
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {machine['cpu']}, {machine['usable_cores']} usable cores (shared with other jobs), "
        f"torch {machine['versions'].get('torch')}, ultralytics {machine['versions'].get('ultralytics')}, "
        f"torch-pruning {machine['versions'].get('torch-pruning')}; date {machine['date']}; "
        f"total {seconds / 60:.1f} min.",
        "",
        f"Baseline: mAP50-95 {baseline['map50_95']:.4f}, mAP50 {baseline['map50']:.4f}, "
        f"{baseline['params'] / 1e6:.2f} M parameters, {baseline['gflops']:.3f} GFLOPs at the benchmark imgsz.",
        "",
        "| method | ratio | MACs kept | params (M) | mAP50-95 pruned | mAP50-95 fine-tuned | mAP50 fine-tuned "
        "| prune s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | error: {r['error']} | | | | | | |")
            continue
        lines.append(
            f"| {r['method']} | {r['ratio']:.3f} | {r['macs_kept']:.1%} | {r['params'] / 1e6:.2f} | "
            f"{r['pruned']['map50_95']:.4f} | {r['finetuned']['map50_95']:.4f} | {r['finetuned']['map50']:.4f} | "
            f"{r['prune_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse arguments, run every method and write the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="yolov8n.yaml", help="model yaml of the baseline to train")
    parser.add_argument("--data", default="shapes.yaml", help="dataset yaml or built-in name")
    parser.add_argument("--baseline", default=None, help="trained baseline .pt to reuse (skips training)")
    parser.add_argument("--baseline-epochs", type=int, default=10)
    parser.add_argument("--ft-epochs", type=int, default=1)
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=list(IMPORTANCE_METHODS), choices=list(IMPORTANCE_METHODS))
    parser.add_argument("--target-macs", type=float, default=0.5)
    parser.add_argument("--global-pruning", action="store_true")
    parser.add_argument("--calib-batches", type=int, default=4)
    parser.add_argument("--out", default="runs/methods")
    parser.add_argument("--name", default="exp")
    args = parser.parse_args()

    start = time.perf_counter()
    command = " ".join(["python", "benchmarks/methods.py", *(shlex.quote(a) for a in sys.argv[1:])])
    ensure_offline_font()
    data = resolve_data(args.data)
    out = Path(args.out)
    base_ckpt = baseline_checkpoint(args, data, out)
    run = increment_path(out / args.name, exist_ok=False, mkdir=True)
    base = YOLO(str(base_ckpt))
    baseline = {
        **validate(base_ckpt, data, imgsz=args.imgsz, batch=args.batch),
        "params": count_params(base.model),
        "gflops": count_gflops(base.model, args.imgsz),
        "checkpoint": str(base_ckpt),
    }
    rows = []
    for method in args.methods:
        LOGGER.info(f"methods: {method}")
        try:
            t0 = time.perf_counter()
            pruned = prune(
                base,
                method=method,
                target_macs=args.target_macs,
                global_pruning=args.global_pruning,
                data=data,
                imgsz=args.imgsz,
                calib_batches=args.calib_batches,
                verbose=False,
            )
            seconds = time.perf_counter() - t0
            ckpt = save_checkpoint(pruned, run / "pruned" / f"{method}.pt")
            row = {
                "method": method,
                "ratio": pruned.prune_info["ratio"],
                "macs_kept": pruned.prune_info["target"]["achieved"],
                "params": count_params(pruned.model),
                "prune_seconds": seconds,
                "pruned": validate(ckpt, data, imgsz=args.imgsz, batch=args.batch),
            }
            row["finetuned"] = validate(fine_tune(ckpt, data, args, run, method), data, imgsz=args.imgsz)
        except Exception as e:  # one failing method must not lose the others
            row = {"method": method, "error": f"{type(e).__name__}: {e}".splitlines()[0]}
        rows.append(row)
        (run / "results.json").write_text(json.dumps({"baseline": baseline, "rows": rows}, indent=2))
    machine = machine_info(command)
    text = markdown(rows, baseline, command, machine, time.perf_counter() - start)
    (run / "results.md").write_text(text)
    (run / "results.json").write_text(json.dumps({"baseline": baseline, "rows": rows, "machine": machine}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
