"""INT8 as the last step: does pruning still pay once both models are quantized?

Four rows for one model and dataset: the baseline, the baseline pruned to 2x fewer MACs and fine-tuned, and both
quantized to INT8 with OpenVINO post-training quantization (`yolo_prune.measurement.quantize`: the Ultralytics exporter
with NNCF, calibrated on train images). For each row: mAP50-95 and mAP50 on the validation split at the accuracy size
(``--imgsz``, the size the model was trained at), the size of the OpenVINO weights (.bin) and OpenVINO CPU latency at
``--latency-imgsz`` (640 px).

Latency is timed A/B interleaved: every model is compiled once per thread setting; then, for ``--rounds`` rounds, each
model runs ``--warmup`` untimed and ``--runs`` timed inferences in turn (the order rotates every round), so slow phases
of a shared machine hit every model alike. A model's latency is the median of its per-round medians (the spread is the
lowest and highest round median). Thread settings: 1 thread and every usable core.

Models: ``--model`` (a trained checkpoint) or, without it, yolov8n trained ``--train-epochs`` from scratch on
``--data``; ``--pruned`` (a pruned, fine-tuned checkpoint of that model) or, without it,
``yolo_prune.integration.pipeline.run_prune`` with ``target_macs=0.5`` and ``--epochs`` fine-tuning epochs (``--note``
records where given checkpoints came from). Any Ultralytics task whose validator reports box metrics works (e.g. a
segmenter: ``--model yolo11n-seg.pt --data seg.yaml``; box mAP, plus mask or pose mAP for those tasks).

Usage:
    python benchmarks/int8.py --out runs/int8                                           # train, prune, measure
    python benchmarks/int8.py --model base.pt --pruned pruned.pt --out runs/int8 --results benchmarks/results/int8
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's yolo_prune

import numpy as np  # noqa: E402

ROWS = ("baseline", "pruned", "pruned+int8", "baseline+int8")
TRAIN_RECIPE: dict[str, Any] = {  # a brief from-scratch baseline when no --model is given
    "batch": 16,
    "nbs": 16,
    "optimizer": "AdamW",
    "lr0": 0.003,
    "warmup_epochs": 1,
    "mosaic": 0.0,
    "close_mosaic": 0,
    "cache": "ram",
    "workers": 2,
    "amp": False,
    "plots": False,
    "device": "cpu",
    "seed": 0,
}


def log(msg: str) -> None:
    """Print a progress line with the wall-clock time."""
    print(f"[int8 {datetime.now():%H:%M:%S}] {msg}", flush=True)


def train_baseline(data: str, imgsz: int, epochs: int, out: Path) -> Path:
    """Train yolov8n from scratch for ``epochs`` on ``data``; return its checkpoint."""
    from ultralytics import YOLO

    from yolo_prune.data.builtin import resolve_data
    from yolo_prune.integration.checkpoint import save_checkpoint

    path = out / "models" / "baseline.pt"
    if path.is_file():
        return path
    yolo = YOLO("yolov8n.yaml")
    yolo.train(
        data=resolve_data(data), epochs=epochs, imgsz=imgsz, project=str(out.resolve()), name="train", **TRAIN_RECIPE
    )
    return save_checkpoint(YOLO(str(yolo.trainer.last)), path)


def prune_baseline(model: Path, data: str, imgsz: int, epochs: int, out: Path) -> Path:
    """Prune ``model`` to half its MACs with `run_prune` (sensitivity allocation) and fine-tune ``epochs``."""
    from yolo_prune.integration.pipeline import run_prune

    path = out / "models" / "pruned.pt"
    if path.is_file():
        return path
    run_dir = run_prune(
        model=str(model),
        data=data,
        target_macs=0.5,
        epochs=epochs,
        imgsz=imgsz,
        project=str(out / "prune"),
        name="exp",
        runs=3,
        warmup=1,
        **{k: v for k, v in TRAIN_RECIPE.items() if k not in ("optimizer", "lr0", "warmup_epochs", "device", "seed")},
    )
    shutil.copyfile(run_dir / "weights" / "best.pt", path)
    return path


def time_interleaved(folders: dict[str, Path], threads: int, rounds: int, runs: int, warmup: int) -> dict:
    """Time OpenVINO models A/B interleaved; return per-model median of round medians, spread and per-round medians."""
    import openvino as ov

    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    requests, inputs = {}, {}
    for name, folder in folders.items():
        compiled = core.compile_model(str(next(Path(folder).glob("*.xml"))), "CPU", config)
        requests[name] = compiled.create_infer_request()
        shape = [d.get_length() for d in compiled.input(0).get_partial_shape()]
        inputs[name] = np.random.default_rng(0).random(shape, dtype=np.float32)
    per_round: dict[str, list[float]] = {name: [] for name in folders}
    names = list(folders)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
        for name in order:
            request, x = requests[name], inputs[name]
            times = []
            for i in range(warmup + runs):
                t0 = time.perf_counter()
                request.infer({0: x})
                if i >= warmup:
                    times.append((time.perf_counter() - t0) * 1e3)
            per_round[name].append(statistics.median(times))
    return {
        name: {
            "median_ms": statistics.median(m),
            "min_round_ms": min(m),
            "max_round_ms": max(m),
            "round_medians_ms": [round(x, 3) for x in m],
            "threads": threads,
            "rounds": rounds,
            "runs_per_round": runs,
        }
        for name, m in per_round.items()
    }


def markdown(result: dict) -> str:
    """Return the results as a Markdown table with the command and the machine."""
    m = result["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    threads = [str(t) for t in result["threads"]]
    extra = [k for k in ("map50_95_mask", "map50_95_pose") if any(k in r for r in result["rows"].values())]
    head = ["model", "mAP50-95", "mAP50", *(k.replace("map50_95_", "mAP50-95 ") for k in extra)]
    head += ["OpenVINO weights (MB)", "MACs x"]
    head += [f"{t} thread{'s' if t != '1' else ''} ms (x vs baseline)" for t in threads]
    lines = [
        "# INT8 as the last step: pruned vs unpruned, FP32 vs INT8 (OpenVINO CPU)",
        "",
        f"- command: `{result['command']}`",
        f"- date: {m['date']}",
        f"- CPU: {m['cpu']} ({m['cores']} cores, {m['usable_cores']} usable; shared with other jobs)",
        f"- software: Python {m['python']}, {versions}",
        f"- models: baseline `{result['models']['baseline']}`, pruned `{result['models']['pruned']}`",
        f"- data: `{result['data']}`; mAP at {result['imgsz']} px (the training size), latency at "
        f"{result['latency_imgsz']} px, batch 1",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join([":---", *["---:"] * (len(head) - 1)]) + "|",
    ]
    base = result["rows"]["baseline"]
    for name in ROWS:
        row = result["rows"][name]
        cells = [name, f"{row['map50_95']:.4f}", f"{row['map50']:.4f}"]
        cells += [f"{row[k]:.4f}" if k in row else "-" for k in extra]
        cells.append(f"{row['size_mb']:.2f}")
        cells.append(f"{row['macs_x']:.2f}x")
        for t in threads:
            lat, ref = row["latency"][t], base["latency"][t]
            cells.append(
                f"{lat['median_ms']:.2f} [{lat['min_round_ms']:.2f}-{lat['max_round_ms']:.2f}] "
                f"({ref['median_ms'] / lat['median_ms']:.2f}x)"
            )
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Notes", "", *(f"- {n}" for n in result["notes"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="trained checkpoint (default: yolov8n trained --train-epochs on --data)")
    parser.add_argument("--pruned", help="pruned, fine-tuned checkpoint (default: run_prune target_macs=0.5)")
    parser.add_argument("--data", default="shapes.yaml", help="dataset yaml or built-in name")
    parser.add_argument("--imgsz", type=int, default=128, help="training, fine-tuning, calibration and mAP size")
    parser.add_argument("--latency-imgsz", type=int, default=640)
    parser.add_argument("--train-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs of the pruned model")
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per model and round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per model and round")
    parser.add_argument("--out", default="runs/int8", help="work folder (models, exports)")
    parser.add_argument("--results", help="folder for int8.json and int8.md (default: --out)")
    parser.add_argument("--note", action="append", default=[], help="a note for the report (repeatable)")
    a = parser.parse_args(argv)
    command = "python benchmarks/int8.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))

    from yolo_prune.data.builtin import resolve_data
    from yolo_prune.measurement.measure import (
        count_gflops,
        default_threads,
        export_openvino,
        load_yolo,
        openvino_size_mb,
        validate,
    )
    from yolo_prune.measurement.quantize import export_int8, validate_int8
    from yolo_prune.measurement.report import machine_info

    out = Path(a.out)
    (out / "models").mkdir(parents=True, exist_ok=True)
    data = resolve_data(a.data)
    start = time.perf_counter()
    base = Path(a.model) if a.model else train_baseline(data, a.imgsz, a.train_epochs, out)
    pruned = Path(a.pruned) if a.pruned else prune_baseline(base, data, a.imgsz, a.epochs, out)
    fp32 = {"baseline": base, "pruned": pruned}
    base_gflops = count_gflops(load_yolo(str(base)).model, a.imgsz)

    rows: dict[str, dict] = {}
    speed_models: dict[str, Path] = {}
    for name, ckpt in fp32.items():
        log(f"{name}: FP32 mAP and OpenVINO export")
        macs_x = base_gflops / count_gflops(load_yolo(str(ckpt)).model, a.imgsz)
        rows[name] = {**validate(str(ckpt), data, imgsz=a.imgsz, batch=16, device="cpu"), "macs_x": macs_x}
        speed_models[name] = export_openvino(ckpt, a.latency_imgsz, out_dir=out / "openvino", name=name)
        rows[name]["size_mb"] = openvino_size_mb(speed_models[name])
        log(f"{name}+int8: quantizing at {a.imgsz} px (mAP) and {a.latency_imgsz} px (latency)")
        acc = export_int8(ckpt, data, a.imgsz, out / "int8-acc", name, a.calibration_images)
        speed_models[f"{name}+int8"] = export_int8(
            ckpt, data, a.latency_imgsz, out / "int8-speed", name, a.calibration_images
        )
        rows[f"{name}+int8"] = {**validate_int8(acc, data, a.imgsz), "macs_x": macs_x}
        rows[f"{name}+int8"]["size_mb"] = openvino_size_mb(speed_models[f"{name}+int8"])
        log(f"{name}: {rows[name]}; int8: {rows[f'{name}+int8']}")

    threads = sorted({1, default_threads()})
    for row in rows.values():
        row["latency"] = {}
    for t in threads:
        log(f"timing {len(speed_models)} models, {t} thread(s), {a.rounds} interleaved rounds")
        timed = time_interleaved({n: speed_models[n] for n in ROWS}, t, a.rounds, a.runs, a.warmup)
        for name, stats in timed.items():
            rows[name]["latency"][str(t)] = stats

    result = {
        "command": command,
        "machine": machine_info(command),
        "data": a.data,
        "imgsz": a.imgsz,
        "latency_imgsz": a.latency_imgsz,
        "calibration_images": a.calibration_images,
        "models": {k: str(v) for k, v in fp32.items()},
        "threads": threads,
        "rows": rows,
        "seconds": round(time.perf_counter() - start, 1),
        "notes": [
            "INT8: yolo_prune.measurement.quantize.export_int8 = Ultralytics export(format='openvino', quantize=8) = "
            "NNCF post-training quantization (MIXED preset, detection head decoding kept in FP32), calibrated on the "
            f"first {a.calibration_images} train images; mAP on the val split (never seen by calibration)",
            f"mAP is measured at {a.imgsz} px with models exported at that size; latency at {a.latency_imgsz} px with "
            "a second export of the same checkpoint (same calibration images, letterboxed to that size)",
            "latency: OpenVINO CPU, PERFORMANCE_HINT=LATENCY, INFERENCE_PRECISION_HINT=f32 (INT8 layers still run in "
            f"INT8), batch 1; median of {a.rounds} per-round medians of {a.runs} runs after {a.warmup} warm-up runs, "
            "models interleaved A/B with the order rotated every round; [min-max] = lowest and highest round median",
            "size: OpenVINO weights (.bin) of the latency export: FP32 for FP32 rows, INT8 (plus FP32 head) for INT8",
            "MACs x: baseline MACs / model MACs (quantization does not change MACs)",
            *a.note,
        ],
    }
    dest = Path(a.results) if a.results else out
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "int8.json").write_text(json.dumps(result, indent=1) + "\n")
    (dest / "int8.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
