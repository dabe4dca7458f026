"""Pruned and INT8 on the CPU runtimes: FP32, post-training INT8 on ONNX Runtime and OpenVINO, and QAT INT8 on ONNX
Runtime, for a user's model and its pruned copy (issue 20).

Models: ``--model`` (the model as the user brought it) and ``--pruned`` (its pruned, fine-tuned copy). For each:

* ``fp32``: the checkpoint, exported to ONNX and OpenVINO (FP32);
* ``ort-int8``: `yolo_prune.export_int8(format="onnx")` = Ultralytics ``export(format="onnx", quantize=8)`` = ONNX
  Runtime static INT8 (Q/DQ on Conv/Gemm/MatMul, head decoding in float), calibrated on the train split;
* ``ov-int8``: `export_int8(format="openvino")` = NNCF post-training quantization;
* ``qat`` (pruned model only, ``--qat-epochs`` > 0): the pruned model trained ``--qat-epochs`` more with Ultralytics'
  ``quantize=8`` (ModelOpt fake quantization) in `PrunedDetectionTrainer`, exported as INT8 ONNX.

mAP50-95 / mAP50 come from the Ultralytics validator on the val split at ``--imgsz`` (exports made at that size);
latency is timed at each ``--latency-imgsz`` with exports made at that size, 1 thread, every model of a runtime in
interleaved rounds (`yolo_prune.measurement.side_by_side`), the speed-up being the median of per-round ratios to the
FP32 ``--model`` on the same runtime, with its 10-90 % range.

Every finished row (accuracy, then each timing size) is written to ``--out``/int8_formats.json at once; a rerun skips
what is there. ``--results`` copies the JSON and a Markdown table to the repository.

Usage:
    python benchmarks/int8_formats.py --model runs/small-data/models/user.pt \\
        --pruned runs/small-data/prune/default-2x-scanls-e30-s0/weights/best.pt --data runs/small-data/data/data.yaml \\
        --imgsz 320 --latency-imgsz 320 640 --out runs/int8-formats --results benchmarks/results/int8_formats
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's yolo_prune

RUNTIME = {"fp32-onnx": "onnx", "ort-int8": "onnx", "qat": "onnx", "fp32-openvino": "openvino", "ov-int8": "openvino"}
TRAIN = {"batch": 16, "workers": 2, "cache": "ram", "amp": False, "plots": False, "device": "cpu"}


def log(msg: str) -> None:
    """Print a progress line with the wall-clock time."""
    print(f"[int8-formats {datetime.now():%H:%M:%S}] {msg}", flush=True)


def qat_model(pruned: Path, user: Path, data: str, imgsz: int, epochs: int, out: Path) -> Path:
    """Train ``pruned`` ``epochs`` more with Ultralytics' quantize=8 (the pipeline's qat=True step); return best.pt."""
    from ultralytics import YOLO

    from yolo_prune import PrunedDetectionTrainer
    from yolo_prune.integration.checkpoint import load_yolo
    from yolo_prune.integration.recipe import finetune_defaults

    best = out / "qat" / "weights" / "best.pt"
    if best.is_file():
        return best
    shutil.rmtree(out / "qat", ignore_errors=True)  # an interrupted earlier attempt
    brought = load_yolo(str(user))
    recipe, _ = finetune_defaults((brought.ckpt or {}).get("train_args"), int(brought.model.model[-1].nc))
    YOLO(str(pruned)).train(
        trainer=PrunedDetectionTrainer,
        data=data,
        epochs=epochs,
        imgsz=imgsz,
        quantize=8,
        project=str(out.resolve()),
        name="qat",
        exist_ok=True,
        seed=0,
        **{**recipe, **TRAIN},
    )
    return best


def exports(models: dict[str, Path], data: str, imgsz: int, calib: int, out: Path) -> dict[str, Path]:
    """Every row's model exported at ``imgsz``: ``{row: .onnx file or OpenVINO folder}`` (reused when present)."""
    from yolo_prune.measurement.measure import export_onnx, export_openvino
    from yolo_prune.measurement.quantize import export_int8

    folder = out / f"exports-{imgsz}"
    found: dict[str, Path] = {}
    for name, ckpt in models.items():
        kind = name.split("/")[1]
        stem = name.replace("/", "_")
        if kind == "fp32-onnx":
            dest = folder / f"{stem}.onnx"
            found[name] = dest if dest.is_file() else export_onnx(ckpt, imgsz, 1, folder, stem)
        elif kind == "fp32-openvino":
            dest = folder / f"{stem}_openvino_model"
            found[name] = dest if dest.is_dir() else export_openvino(ckpt, imgsz, 1, folder, stem)
        else:  # ort-int8, ov-int8 (calibrated here), qat (its trained ranges)
            fmt, qat = ("openvino" if kind == "ov-int8" else "onnx"), kind == "qat"
            dest = folder / (f"{stem}_int8.onnx" if fmt == "onnx" else f"{stem}_int8_openvino_model")
            found[name] = (
                dest if dest.exists() else export_int8(ckpt, data, imgsz, folder, stem, calib, format=fmt, qat=qat)
            )
    return found


def size_mb(path: Path) -> float:
    """Weights size of an export: the ONNX file, or an OpenVINO folder's .bin."""
    from yolo_prune.measurement.measure import file_size_mb, openvino_size_mb

    return file_size_mb(path) if path.suffix == ".onnx" else openvino_size_mb(path)


def time_size(paths: dict[str, Path], imgsz: int, rounds: int, warmup: int) -> dict[str, dict]:
    """Time every export at ``imgsz`` (1 thread) in interleaved rounds; speed-ups per runtime over ``base/fp32-*``."""
    from yolo_prune.measurement.side_by_side import backend_runner, interleaved_times, side_by_side

    runners = {}
    for name, path in paths.items():
        label = f"{RUNTIME[name.split('/')[1]]}_cpu"
        runners[name] = backend_runner(label, path, imgsz, 1, threads=1)
    times = interleaved_times(runners, rounds, warmup)
    result: dict[str, dict] = {}
    for runtime in ("onnx", "openvino"):
        group = {n: t for n, t in times.items() if RUNTIME[n.split("/")[1]] == runtime}
        base = f"base/fp32-{runtime}"
        for name, stats in side_by_side(group, base).items():
            result[name] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in stats.items()}
            if "speedup" in stats:
                result[name]["speedup"] = {k: round(v, 4) for k, v in stats["speedup"].items()}
    return result


def markdown(result: dict) -> str:
    """The results as a Markdown table with the command and machine."""
    m = result["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    sizes = [str(s) for s in result["latency_imgsz"] if str(s) in result["timing"]]
    head = ["model", "runtime", "precision", "mAP50-95", "mAP50", "vs brought (pt)", "weights MB"]
    for s in sizes:
        head += [f"{s} px ms", f"{s} px x (10-90 %)"]
    lines = [
        "# Pruned and INT8: FP32 vs post-training INT8 (ONNX Runtime, OpenVINO) vs QAT INT8 (ONNX Runtime)",
        "",
        f"- command: `{result['command']}`",
        f"- date: {m['date']}",
        f"- CPU: {m['cpu']} ({m['cores']} cores, {m['usable_cores']} usable; shared with other jobs); no GPU",
        f"- software: Python {m['python']}, {versions}",
        f"- models: brought `{result['models']['base']}`, pruned `{result['models']['pruned']}`",
        f"- data: `{result['data']}`; mAP at {result['imgsz']} px (exports at that size), batch 1",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join([":---", ":---", ":---", *["---:"] * (len(head) - 3)]) + "|",
    ]
    ref = result["rows"]["base/fp32-onnx"]["map50_95"]
    for name, row in result["rows"].items():
        model, kind = name.split("/")
        precision = {"fp32-onnx": "FP32", "fp32-openvino": "FP32", "ort-int8": "INT8 PTQ", "ov-int8": "INT8 PTQ"}
        cells = [
            model,
            {"onnx": "ONNX Runtime", "openvino": "OpenVINO"}[RUNTIME[kind]],
            precision.get(kind, f"INT8 QAT ({result['qat_epochs']} ep)"),
            f"{row['map50_95']:.4f}",
            f"{row['map50']:.4f}",
            f"{100 * (row['map50_95'] - ref):+.1f}",
            f"{row['size_mb']:.2f}",
        ]
        for s in sizes:
            t = result["timing"][s].get(name)
            sp = (t or {}).get("speedup")
            cells += [
                f"{t['median_ms']:.1f}" if t else "-",
                f"{sp['median']:.2f}x ({sp['p10']:.2f}-{sp['p90']:.2f})" if sp else "-",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Notes", "", *(f"- {n}" for n in result["notes"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run (or continue) the benchmark; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the model as the user brought it")
    parser.add_argument("--pruned", required=True, help="its pruned, fine-tuned copy")
    parser.add_argument("--data", required=True, help="dataset yaml (train: calibration, QAT; val: mAP)")
    parser.add_argument("--imgsz", type=int, default=320, help="mAP, calibration and QAT size")
    parser.add_argument("--latency-imgsz", type=int, nargs="+", default=[320, 640])
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default="runs/int8-formats")
    parser.add_argument("--results", help="folder for int8_formats.json / .md (default: --out)")
    parser.add_argument("--note", action="append", default=[])
    a = parser.parse_args(argv)
    command = "python benchmarks/int8_formats.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))

    from yolo_prune.data.builtin import resolve_data
    from yolo_prune.measurement.quantize import validate_int8
    from yolo_prune.measurement.report import machine_info

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = resolve_data(a.data)
    state_file = out / "int8_formats.json"
    result: dict[str, Any] = json.loads(state_file.read_text()) if state_file.is_file() else {}
    result.update(
        command=command,
        data=a.data,
        imgsz=a.imgsz,
        latency_imgsz=a.latency_imgsz,
        qat_epochs=a.qat_epochs,
        models={"base": a.model, "pruned": a.pruned},
        calibration_images=a.calibration_images,
    )
    result.setdefault("rows", {})
    result.setdefault("timing", {})

    def save() -> None:
        result["machine"] = machine_info(command)
        state_file.write_text(json.dumps(result, indent=1) + "\n")

    models: dict[str, Path] = {}
    for model, ckpt in (("base", Path(a.model)), ("pruned", Path(a.pruned))):
        for kind in ("fp32-onnx", "fp32-openvino", "ort-int8", "ov-int8"):
            models[f"{model}/{kind}"] = ckpt
    if a.qat_epochs > 0:
        log(f"QAT: {a.qat_epochs} epochs of quantize=8 training of the pruned model")
        models["pruned/qat"] = qat_model(Path(a.pruned), Path(a.model), data, a.imgsz, a.qat_epochs, out)

    start = time.perf_counter()
    acc = exports(models, data, a.imgsz, a.calibration_images, out)
    for name, path in acc.items():
        if name in result["rows"]:
            continue
        log(f"{name}: validating {path.name}")
        row = validate_int8(path, data, a.imgsz, project=str((out / "val").resolve()), name=name.replace("/", "_"))
        result["rows"][name] = {"map50_95": row["map50_95"], "map50": row["map50"], "size_mb": size_mb(path)}
        save()
        log(f"{name}: {result['rows'][name]}")
    for s in a.latency_imgsz:
        if str(s) in result["timing"]:
            continue
        log(f"timing {len(models)} models at {s} px, 1 thread, {a.rounds} interleaved rounds")
        result["timing"][str(s)] = time_size(exports(models, data, s, a.calibration_images, out), s, a.rounds, a.warmup)
        save()
    result["notes"] = [
        "every row's mAP: its export (static batch 1, letterboxed to the export size) run by the Ultralytics validator",
        "ort-int8: Ultralytics export(format='onnx', quantize=8) = onnxruntime.quantization.quantize_static (QDQ, "
        "Conv/Gemm/MatMul only, head decoding in float); ov-int8: export(format='openvino', quantize=8) = NNCF; both "
        f"calibrated on up to {a.calibration_images} train images (letterboxed), mAP on the val split",
        f"qat: the pruned model trained {a.qat_epochs} more epochs with quantize=8 (ModelOpt INT8 fake quantization, "
        "ranges calibrated once then fixed; the head's output convs stay float) in PrunedDetectionTrainer with the "
        "pipeline's fine-tuning recipe, then exported to ONNX with Q/DQ nodes (no post-training calibration)",
        "x: median of per-round speed-ups over the brought model's FP32 export on the same runtime (ONNX Runtime rows "
        "vs base fp32-onnx, OpenVINO rows vs base fp32-openvino), 1 thread, every model interleaved in each round "
        "(order reversed every other round), with the 10-90 % range of the per-round ratios",
        "vs brought: mAP50-95 points against the FP32 model as the user brought it",
        "weights MB: the ONNX file or the OpenVINO .bin; the QAT ONNX keeps FP32 weights behind Q/DQ nodes (runtimes "
        "fold them to INT8 when they load it), so its file is FP32-sized",
        *a.note,
    ]
    result["seconds"] = round(result.get("seconds", 0) + time.perf_counter() - start, 1)
    save()
    dest = Path(a.results) if a.results else out
    dest.mkdir(parents=True, exist_ok=True)
    if dest != out:
        shutil.copyfile(state_file, dest / "int8_formats.json")
    (dest / "int8_formats.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
