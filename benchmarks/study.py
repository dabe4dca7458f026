"""Pruning study on the built-in shapes dataset: accuracy against speed, reproduced from scratch with one command.

Usage:
    python benchmarks/study.py --out runs/study                  # everything, about 30 minutes on a 2-core CPU
    python benchmarks/study.py --out runs/study --measure-only   # re-measure the trained checkpoints only
    python benchmarks/study.py --out runs/study-quick --quick    # smoke test of every stage in a few minutes

Stages (a stage whose checkpoint already exists in ``--out`` is skipped, so an interrupted study resumes):

1. ``baseline``: ``BASELINE_MODEL`` trained from scratch on ``shapes.yaml`` with ``BASELINE_RECIPE``;
   ``baseline-ft``: the baseline fine-tuned, unpruned, exactly like the pruned models (the control for the extra
   epochs).
2. ``l2-Nx`` / ``random-Nx``: the baseline pruned to N = 2, 3, 4 times fewer MACs with L2-magnitude and random
   channel importance (``yolo_prune.prune``, pruning ratio searched on MACs), then fine-tuned with
   ``PrunedDetectionTrainer`` and ``FINETUNE_RECIPE``.
3. ``scratch-Nx``: the same architecture with a smaller ``width_multiple`` at (at most) the same MACs, trained from
   scratch with ``SCRATCH_RECIPE``: as many epochs as a pruned model has seen (baseline + fine-tuning).
4. ``unstructured-50``: ``torch.nn.utils.prune.l1_unstructured`` at 50 % on every learned conv of the baseline, made
   permanent with ``prune.remove`` and saved as a plain checkpoint (the approach in Ultralytics' docs). Not fine-tuned.
5. ``measure``: ``yolo_prune.measurement.bench.run_bench`` on all models at the study image size (mAP50-95, mAP50,
   parameters, GFLOPs, size, PyTorch and ONNX Runtime CPU latency at batch 1), and latency only at
   ``--latency-imgsz``. With ``--profile``, an ONNX Runtime per-layer profile and an interleaved latency comparison
   of ``PROFILED`` (the baseline and the 2x models) show where time goes.

Outputs in ``--out``: ``models/*.pt`` (the measured checkpoints), ``train/`` (Ultralytics runs), ``study.json``
(recipes, pruning ratios, achieved MACs ratios, widths, training curves and times), ``bench-<imgsz>px*/`` (reports, a
new folder per measurement) and, copied to ``--results`` (default ``benchmarks/results``): ``report.md``,
``report.json``, ``results.csv``, ``pareto.png``, ``study.json`` and ``latency-<imgsz>/`` (``report.md``,
``report.json``, ``results.csv``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # use this checkout's yolo_prune when run from the repo

import torch  # noqa: E402
from torch import nn  # noqa: E402

__all__ = [
    "BASELINE_MODEL",
    "BASELINE_RECIPE",
    "DATA",
    "FINETUNE_RECIPE",
    "METHODS",
    "PROFILED",
    "ROUND16",
    "SCRATCH_RECIPE",
    "TARGETS",
    "UNSTRUCTURED_AMOUNT",
    "compare_latency",
    "layer_gflops",
    "main",
    "model_names",
    "profile_onnx",
    "prune_to_macs",
    "run_study",
    "scaled_model_yaml",
    "unstructured_prune",
    "width_for_macs",
]

DATA = "shapes.yaml"  # built-in dataset, generated on first use by yolo_prune.data.builtin.resolve_data
BASELINE_MODEL = "yolov8n.yaml"  # trained from scratch: nothing is downloaded

# A from-scratch YOLOv8n on shapes.yaml that learns in about 4-5 minutes on a 2-core CPU. What matters most:
# nbs=batch (Ultralytics otherwise accumulates nbs/batch = 4 batches per optimizer step, i.e. 4x fewer updates),
# AdamW at a high learning rate, no mosaic in so short a schedule, and images cached in RAM (the data loader competes
# with the model for the two cores).
BASELINE_RECIPE: dict[str, Any] = {
    "imgsz": 160,
    "epochs": 8,
    "batch": 16,
    "nbs": 16,
    "optimizer": "AdamW",
    "lr0": 0.003,
    "lrf": 0.01,
    "warmup_epochs": 1,
    "warmup_bias_lr": 0.1,
    "mosaic": 0.0,
    "close_mosaic": 0,
    "cache": "ram",
    "workers": 2,
    "seed": 0,
    "deterministic": False,
    "amp": False,
    "plots": False,
    "device": "cpu",
}
# Fine-tuning a pruned baseline: the same recipe, fewer epochs, a lower peak learning rate, a short warmup and no
# large bias learning rate at its start (the biases are already trained).
FINETUNE_RECIPE: dict[str, Any] = {
    **BASELINE_RECIPE,
    "epochs": 4,
    "lr0": 0.0015,
    "warmup_epochs": 0.5,
    "warmup_bias_lr": 0.0,
}
# Training from scratch at the reduced width: as many epochs as a pruned model has seen in all (baseline + fine-tuning).
SCRATCH_RECIPE: dict[str, Any] = {**BASELINE_RECIPE, "epochs": BASELINE_RECIPE["epochs"] + FINETUNE_RECIPE["epochs"]}
TARGETS = (2, 3, 4)  # MACs reduction factors
METHODS = ("l2", "random")  # channel importance criteria of yolo_prune.prune
# Extra pruned models with kept widths rounded to 16 instead of 8: (method, target). ONNX Runtime's CPU convolutions
# work on blocks of 16 channels on AVX-512 machines, so widths such as 24 or 40 are padded (see RESULTS.md).
ROUND16 = (("l2", 2),)
UNSTRUCTURED_AMOUNT = 0.5  # fraction of each conv's weights zeroed by torch.nn.utils.prune.l1_unstructured

PROFILED = ("baseline", "l2-2x", "l2-2x-r16", "scratch-2x")  # --profile: per-layer and interleaved timing
QUICK = {"data": "shapes-tiny.yaml", "epochs": 1, "runs": 3, "warmup": 1}  # --quick: a smoke test of every stage


def log(msg: str) -> None:
    """Print a progress line with the wall-clock time."""
    print(f"[study {datetime.now():%H:%M:%S}] {msg}", flush=True)


def model_names(targets: tuple[int, ...] = TARGETS, methods: tuple[str, ...] = METHODS) -> list[str]:
    """Return the study's model names in report order: baseline, then per target the pruned and scratch models.

    Args:
        targets (tuple[int, ...]): MACs reduction factors.
        methods (tuple[str, ...]): Pruning importance criteria.

    Returns:
        (list[str]): ``baseline``, ``baseline-ft``, ``l2-2x``, ``random-2x``, ``l2-2x-r16``, ``scratch-2x``, ...,
            ``unstructured-50``.
    """
    names = ["baseline", "baseline-ft"]
    for t in targets:
        names += [f"{m}-{t}x" for m in methods]
        names += [f"{m}-{t}x-r16" for m, t16 in ROUND16 if t16 == t and m in methods] + [f"scratch-{t}x"]
    return [*names, f"unstructured-{round(UNSTRUCTURED_AMOUNT * 100)}"]


def train(model: str | Path, data: str, recipe: dict, out: Path, name: str, trainer: type | None = None) -> dict:
    """Train ``model`` with ``recipe`` and copy the final checkpoint to ``out/models/<name>.pt``.

    Args:
        model (str | Path): Model yaml (from scratch) or checkpoint (with ``trainer=PrunedDetectionTrainer``).
        data (str): Data yaml.
        recipe (dict): ``YOLO.train`` arguments.
        out (Path): Study folder.
        name (str): Model name (run folder and checkpoint stem).
        trainer (type, optional): Trainer class; the stock detection trainer when None.

    Returns:
        (dict): ``path`` of the checkpoint, ``train_s`` (wall seconds), ``epochs`` and the per-epoch ``curve``
            (mAP50-95 and mAP50 on the validation split).
    """
    from ultralytics import YOLO

    start = time.perf_counter()
    shutil.rmtree(out / "train" / name, ignore_errors=True)  # a stale run would add its rows to results.csv
    yolo = YOLO(str(model))
    kwargs = {"trainer": trainer} if trainer is not None else {}
    yolo.train(data=data, project=str(out / "train"), name=name, exist_ok=True, verbose=False, **recipe, **kwargs)
    seconds = time.perf_counter() - start
    weights = Path(yolo.trainer.save_dir) / "weights"
    best = weights / "best.pt" if (weights / "best.pt").is_file() else weights / "last.pt"
    dst = out / "models" / f"{name}.pt"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, dst)
    return {"path": str(dst), "train_s": round(seconds, 1), "epochs": recipe["epochs"], "curve": _curve(weights.parent)}


def _curve(run_dir: Path) -> list[dict]:
    """Read the per-epoch validation mAP from an Ultralytics ``results.csv``."""
    import csv

    path = run_dir / "results.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(f)]
    return [
        {
            "epoch": int(float(r["epoch"])),
            "time_s": round(float(r.get("time", "nan")), 1),
            "map50_95": round(float(r["metrics/mAP50-95(B)"]), 4),
            "map50": round(float(r["metrics/mAP50(B)"]), 4),
        }
        for r in rows
    ]


def _bisect(fits: Callable[[float], bool], lo: float, hi: float, steps: int = 14) -> float:
    """Return (about) the largest ``x`` in ``[lo, hi]`` with ``fits(x)``, assuming ``fits`` is monotone decreasing."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def prune_to_macs(baseline: str | Path, method: str, target: float, imgsz: int, round_to: int = 8) -> tuple[Any, dict]:
    """Prune ``baseline`` with ``method`` to at least ``target`` times fewer MACs (as close as the search gets).

    Uses ``prune(..., target_macs=1 / target)`` when this version of ``yolo_prune.prune`` has it, else a bisection on
    the uniform pruning ratio measured with ``yolo_prune.measurement.measure.count_gflops``.

    Args:
        baseline (str | Path): Baseline checkpoint.
        method (str): Importance criterion (``l2``, ``random``, ...).
        target (float): Wanted MACs reduction factor, e.g. 2.0.
        imgsz (int): Image size MACs are counted at.
        round_to (int): Kept widths are rounded to a multiple of this.

    Returns:
        (tuple[YOLO, dict]): The pruned model and ``{"ratio", "round_to", "macs_ratio", "gflops"}``.
    """
    from ultralytics import YOLO

    from yolo_prune import prune
    from yolo_prune.measurement.measure import count_gflops

    base = count_gflops(YOLO(str(baseline)).model, imgsz)
    if "target_macs" in inspect.signature(prune).parameters:
        pruned = prune(
            str(baseline), method=method, target_macs=1 / target, imgsz=imgsz, round_to=round_to, seed=0, verbose=False
        )
        ratio = float(pruned.prune_info["ratio"])
    else:
        cache: dict[float, float] = {}

        def reduction(r: float) -> float:
            if r not in cache:
                model = prune(str(baseline), ratio=r, method=method, round_to=round_to, verbose=False).model
                cache[r] = base / count_gflops(model, imgsz)
            return cache[r]

        ratio = _bisect(lambda r: reduction(r) < target, 0.0, 0.95)
        ratio = min((r for r in cache if cache[r] >= target), default=0.95)  # smallest ratio that reaches the target
        pruned = prune(str(baseline), ratio=ratio, method=method, round_to=round_to, seed=0, verbose=False)
    gflops = count_gflops(pruned.model, imgsz)
    info = {"ratio": round(ratio, 4), "round_to": round_to, "macs_ratio": round(base / gflops, 3)}
    return pruned, {**info, "gflops": round(gflops, 4)}


def scaled_model_yaml(width: float, path: Path, base: str = BASELINE_MODEL) -> Path:
    """Write the ``base`` architecture with its width multiple replaced by ``width`` to ``path``.

    Args:
        width (float): New ``width_multiple`` (``yolov8n`` uses 0.25).
        path (Path): Yaml file to write; its name should keep the scale letter (``yolov8n-...``).
        base (str): Model yaml whose architecture and depth are kept.

    Returns:
        (Path): ``path``.
    """
    from ultralytics.nn.tasks import guess_model_scale, yaml_model_load
    from ultralytics.utils import YAML

    d = yaml_model_load(base)
    scale = guess_model_scale(base) or next(iter(d["scales"]))
    depth, _, max_channels = d["scales"][scale]
    d = {k: v for k, v in d.items() if k not in {"scale", "yaml_file"}}
    d["scales"] = {scale: [depth, width, max_channels]}
    path.parent.mkdir(parents=True, exist_ok=True)
    YAML.save(path, d)
    return path


def width_for_macs(target: float, nc: int, imgsz: int, base: str = BASELINE_MODEL) -> tuple[float, dict]:
    """Find the largest width multiple of ``base`` (4 decimals) with at least ``target`` times fewer MACs than ``base``.

    Args:
        target (float): Wanted MACs reduction factor.
        nc (int): Number of classes (the head's size depends on it).
        imgsz (int): Image size MACs are counted at.
        base (str): Model yaml.

    Returns:
        (tuple[float, dict]): The width multiple and ``{"width", "macs_ratio", "gflops"}``.
    """
    from ultralytics.nn.tasks import DetectionModel, guess_model_scale, yaml_model_load

    from yolo_prune.measurement.measure import count_gflops

    d = yaml_model_load(base)
    scale = guess_model_scale(base) or next(iter(d["scales"]))
    depth, width0, max_channels = d["scales"][scale]

    def gflops(width: float) -> float:
        cfg = {**d, "scales": {scale: [depth, width, max_channels]}, "scale": scale}
        return count_gflops(DetectionModel(cfg, nc=nc, verbose=False), imgsz)

    base_gflops = gflops(width0)
    width = _bisect(lambda w: base_gflops / gflops(w) >= target, 0.02, width0)
    width = math.floor(width * 1e4) / 1e4  # rounding down keeps the target: channels are rounded up from the width
    return width, {"width": width, "macs_ratio": round(base_gflops / gflops(width), 3)}


def unstructured_prune(baseline: str | Path, amount: float, path: Path) -> dict:
    """Zero the ``amount`` smallest-L1 weights of every learned conv of ``baseline`` and save a plain checkpoint.

    ``torch.nn.utils.prune.l1_unstructured`` per conv, made permanent with ``prune.remove``: the tensors keep their
    shapes. The DFL conv of the head is left alone: its weights are the fixed bin positions, not learned.

    Args:
        baseline (str | Path): Baseline checkpoint.
        amount (float): Fraction of weights to zero in each conv.
        path (Path): Checkpoint to write (``YOLO.save``, FP16 like Ultralytics' ``best.pt``).

    Returns:
        (dict): ``amount``, ``convs`` pruned and the measured ``sparsity`` of all conv weights.
    """
    from torch.nn.utils import prune as torch_prune
    from ultralytics import YOLO

    yolo = YOLO(str(baseline))
    convs = [m for n, m in yolo.model.named_modules() if isinstance(m, nn.Conv2d) and ".dfl" not in n]
    for m in convs:
        torch_prune.l1_unstructured(m, name="weight", amount=amount)
        torch_prune.remove(m, "weight")
    zeros = sum(int((m.weight == 0).sum()) for m in convs)
    total = sum(m.weight.numel() for m in convs)
    path.parent.mkdir(parents=True, exist_ok=True)
    yolo.save(str(path))
    return {"path": str(path), "amount": amount, "convs": len(convs), "sparsity": round(zeros / total, 4)}


def profile_onnx(onnx_path: str | Path, imgsz: int, runs: int = 30, threads: int | None = None) -> dict[str, dict]:
    """Time each top-level layer (``model.<i>``) of an exported model, split by operator, with ONNX Runtime's profiler.

    Args:
        onnx_path (str | Path): Exported model (static shape).
        imgsz (int): Input size it was exported at.
        runs (int): Profiled runs (after 5 untimed ones).
        threads (int, optional): Intra-op threads; every usable core when None.

    Returns:
        (dict[str, dict]): ``{layer: {operator type: ms}}`` in layer order, the sum over the layer's nodes of each
            node's median time over the runs; nodes that carry no layer name are under ``other``.
    """
    import re

    import numpy as np
    import onnxruntime as ort

    from yolo_prune.measurement.measure import default_threads

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or default_threads())
    opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(onnx_path).with_suffix("")) + "-profile"
    session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    warmup = 5
    for _ in range(warmup + runs):
        session.run(None, {inp.name: x})
    trace = Path(session.end_profiling())
    events = [e for e in json.loads(trace.read_text()) if e.get("cat") == "Node"]
    trace.unlink(missing_ok=True)
    per_node: dict[str, list[float]] = {}
    node_op: dict[str, str] = {}
    for e in events:
        if e.get("name", "").endswith("_kernel_time"):
            per_node.setdefault(e["name"], []).append(e["dur"] / 1e3)
            node_op[e["name"]] = e.get("args", {}).get("op_name", "?")
    totals: dict[str, dict[str, float]] = {}
    for node, times in per_node.items():  # median over the timed runs: robust to other jobs on the machine
        match = re.search(r"model\.(\d+)", node)
        layer = f"model.{match.group(1)}" if match else "other"
        ms = statistics.median(times[warmup:] or times)
        totals.setdefault(layer, {})
        totals[layer][node_op[node]] = totals[layer].get(node_op[node], 0.0) + ms
    order = sorted(totals, key=lambda k: int(k.split(".")[1]) if k != "other" else 10**6)
    return {k: {op: round(v, 4) for op, v in sorted(totals[k].items(), key=lambda kv: -kv[1])} for k in order}


def compare_latency(
    onnx_files: dict[str, Path], imgsz: int, threads: int | None = None, rounds: int = 10, per_round: int = 5
) -> dict[str, dict]:
    """Time ONNX models with ONNX Runtime CPU in interleaved rounds, so that load from other jobs hits all alike.

    Each round runs every model ``per_round`` times in turn; a drifting background load then biases no model.

    Args:
        onnx_files (dict[str, Path]): ``{name: exported model}``; the first one is the reference.
        imgsz (int): Input size they were exported at.
        threads (int, optional): Intra-op threads; every usable core when None.
        rounds (int): Rounds.
        per_round (int): Timed runs of each model per round.

    Returns:
        (dict[str, dict]): ``{name: {"median_ms", "p10_ms", "speedup"}}``, ``speedup`` from the medians against the
            first model.
    """
    import numpy as np
    import onnxruntime as ort

    from yolo_prune.measurement.measure import default_threads

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or default_threads())
    opts.inter_op_num_threads = 1
    sessions = {
        n: ort.InferenceSession(str(f), sess_options=opts, providers=["CPUExecutionProvider"])
        for n, f in onnx_files.items()
    }
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    times: dict[str, list[float]] = {n: [] for n in sessions}
    for s in sessions.values():
        for _ in range(3):
            s.run(None, {s.get_inputs()[0].name: x})
    for _ in range(rounds):
        for n, s in sessions.items():
            feed = {s.get_inputs()[0].name: x}
            for _ in range(per_round):
                t0 = time.perf_counter()
                s.run(None, feed)
                times[n].append((time.perf_counter() - t0) * 1e3)
    medians = {n: statistics.median(t) for n, t in times.items()}
    first = next(iter(medians.values()))
    return {
        n: {
            "median_ms": round(medians[n], 3),
            "p10_ms": round(float(np.percentile(times[n], 10)), 3),
            "speedup": round(first / medians[n], 3),
        }
        for n in times
    }


def layer_gflops(checkpoint: str | Path, imgsz: int) -> dict[str, float]:
    """Return the GFLOPs (2 x MACs) of the convolutions in each top-level layer (``model.<i>``) of a fused model.

    Args:
        checkpoint (str | Path): Model checkpoint.
        imgsz (int): Square input size.

    Returns:
        (dict[str, float]): GFLOPs by layer, in layer order (layers without convolutions are left out).
    """
    from ultralytics import YOLO

    model = YOLO(str(checkpoint)).model.float().eval().fuse(verbose=False)
    totals: dict[str, float] = {}

    def hook(name: str) -> Callable:
        def count(m: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
            macs = output.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            totals[name] = totals.get(name, 0.0) + 2 * macs / 1e9

        return count

    handles = [
        m.register_forward_hook(hook(".".join(n.split(".")[:2])))
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.inference_mode():
        model(torch.zeros(1, 3, imgsz, imgsz))
    for h in handles:
        h.remove()
    return {k: round(v, 5) for k, v in sorted(totals.items(), key=lambda kv: int(kv[0].split(".")[1]))}


def run_study(out: Path, data: str, targets: tuple[int, ...], quick: bool = False) -> dict:
    """Train, prune, fine-tune and build every model of the study into ``out/models``; record it in ``study.json``.

    Args:
        out (Path): Study folder.
        data (str): Built-in dataset name or data yaml.
        targets (tuple[int, ...]): MACs reduction factors.
        quick (bool): One epoch per training (smoke test).

    Returns:
        (dict): The study record (also written to ``out/study.json``).
    """
    from ultralytics.data.utils import check_det_dataset

    from yolo_prune.data.builtin import resolve_data
    from yolo_prune.data.shapes import ensure_offline_font
    from yolo_prune.integration.checkpoint import save_checkpoint
    from yolo_prune.integration.trainer import PrunedDetectionTrainer

    ensure_offline_font()
    data_yaml = resolve_data(data)
    nc = int(check_det_dataset(data_yaml)["nc"])
    quick_epochs = {"epochs": QUICK["epochs"]} if quick else {}
    base_recipe = {**BASELINE_RECIPE, **quick_epochs}
    ft_recipe = {**FINETUNE_RECIPE, **quick_epochs}
    scratch_recipe = {**SCRATCH_RECIPE, **quick_epochs}
    imgsz = base_recipe["imgsz"]
    record_path = out / "study.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record.update(
        data=data,
        data_yaml=data_yaml,
        baseline_model=BASELINE_MODEL,
        baseline_recipe=base_recipe,
        finetune_recipe=ft_recipe,
        scratch_recipe=scratch_recipe,
        targets=list(targets),
        methods=list(METHODS),
    )
    models: dict[str, dict] = record.setdefault("models", {})
    stage_s: dict[str, float] = record.setdefault("stage_s", {})

    def save() -> None:
        record_path.parent.mkdir(parents=True, exist_ok=True)
        record_path.write_text(json.dumps(record, indent=2) + "\n")

    def done(name: str, epochs: int | None = None) -> bool:
        """True if ``name`` was built (with ``epochs`` epochs, when given) and its checkpoint exists."""
        entry = models.get(name)
        if entry is None or not Path(entry["path"]).is_file():
            return False
        return epochs is None or entry.get("epochs") == epochs

    start = time.perf_counter()
    if not done("baseline", base_recipe["epochs"]):
        log(f"training baseline {BASELINE_MODEL} on {data} ({base_recipe['epochs']} epochs at {imgsz} px)")
        models["baseline"] = {"kind": "baseline", **train(BASELINE_MODEL, data_yaml, base_recipe, out, "baseline")}
        stage_s["baseline"] = models["baseline"]["train_s"]
        save()
    baseline = models["baseline"]["path"]
    if not done("baseline-ft", ft_recipe["epochs"]):  # control: the unpruned baseline fine-tuned like the pruned ones
        log(f"baseline-ft: fine-tuning the unpruned baseline ({ft_recipe['epochs']} epochs)")
        trained = train(baseline, data_yaml, ft_recipe, out, "baseline-ft", trainer=PrunedDetectionTrainer)
        models["baseline-ft"] = {"kind": "finetuned", **trained}
        stage_s["baseline-ft"] = trained["train_s"]
        save()

    for target in targets:
        variants = [(m, 8) for m in METHODS] + [(m, 16) for m, t in ROUND16 if t == target]
        for method, round_to in variants:
            name = f"{method}-{target}x" + ("" if round_to == 8 else f"-r{round_to}")
            if done(name, ft_recipe["epochs"]):
                continue
            t0 = time.perf_counter()
            pruned, info = prune_to_macs(baseline, method, target, imgsz, round_to=round_to)
            prune_s = time.perf_counter() - t0
            ckpt = save_checkpoint(pruned, out / "pruned" / f"{name}.pt", yolo_prune={"method": method, **info})
            log(f"{name}: ratio {info['ratio']}, {info['macs_ratio']}x fewer MACs ({prune_s:.0f} s); fine-tuning")
            trained = train(ckpt, data_yaml, ft_recipe, out, name, trainer=PrunedDetectionTrainer)
            models[name] = {"kind": "pruned", "method": method, "target": target, **info, "prune_s": round(prune_s, 1)}
            models[name].update(trained)
            stage_s[name] = round(prune_s + trained["train_s"], 1)
            save()
        name = f"scratch-{target}x"
        width, info = width_for_macs(target, nc, imgsz)
        if not done(name, scratch_recipe["epochs"]) or models[name].get("width") != width:
            cfg = scaled_model_yaml(width, out / "scratch" / f"{Path(BASELINE_MODEL).stem}-w{width:.4f}.yaml")
            log(f"{name}: width_multiple {width:.4f}, {info['macs_ratio']}x fewer MACs; training from scratch")
            trained = train(cfg, data_yaml, scratch_recipe, out, name)
            models[name] = {"kind": "scratch", "target": target, "yaml": str(cfg), **info, **trained}
            stage_s[name] = trained["train_s"]
            save()

    name = f"unstructured-{round(UNSTRUCTURED_AMOUNT * 100)}"
    if not done(name):
        t0 = time.perf_counter()
        models[name] = {
            "kind": "unstructured",
            **unstructured_prune(baseline, UNSTRUCTURED_AMOUNT, out / "models" / f"{name}.pt"),
        }
        stage_s[name] = round(time.perf_counter() - t0, 1)
        log(f"{name}: sparsity {models[name]['sparsity']:.1%} of conv weights (not fine-tuned)")
    stage_s["build_total"] = round(sum(v for k, v in stage_s.items() if k not in {"build_total", "measure"}), 1)
    record["build_wall_s_this_run"] = round(time.perf_counter() - start, 1)
    save()
    return record


def measure(
    out: Path,
    record: dict,
    results: Path | None,
    latency_imgsz: int,
    runs: int,
    warmup: int,
    threads: int | None,
    profile: bool,
    command: str,
) -> Path:
    """Benchmark every model of the study and copy the small report files to ``results``.

    Args:
        out (Path): Study folder.
        record (dict): Study record (``study.json``).
        results (Path, optional): Folder to copy the report to (None: no copy).
        latency_imgsz (int): Extra latency-only image size (0: none).
        runs (int): Timed runs per backend.
        warmup (int): Untimed runs per backend.
        threads (int, optional): CPU threads; every usable core when None.
        profile (bool): Also profile ``PROFILED`` per layer and time them interleaved (all threads, then 1 thread).
        command (str): Command line recorded in the reports.

    Returns:
        (Path): The bench run folder at the study image size.
    """
    from yolo_prune.measurement.bench import run_bench

    t0 = time.perf_counter()
    names = [n for n in model_names(tuple(record["targets"])) if n in record["models"]]
    paths = [record["models"][n]["path"] for n in names]
    imgsz = record["baseline_recipe"]["imgsz"]
    common = {"backends": ("torch", "onnx"), "latency_batch": 1, "runs": runs, "warmup": warmup, "threads": threads}
    log(f"measuring {len(paths)} models at {imgsz} px (mAP + latency)")
    bench = run_bench(
        paths, data=record["data_yaml"], imgsz=imgsz, project=out, name=f"bench-{imgsz}px", command=command, **common
    )
    benches = {imgsz: bench}
    if latency_imgsz and latency_imgsz != imgsz:
        log(f"measuring latency at {latency_imgsz} px")
        benches[latency_imgsz] = run_bench(
            paths,
            data=None,
            imgsz=latency_imgsz,
            project=out,
            name=f"bench-{latency_imgsz}px",
            command=command,
            **common,
        )
    if profile:
        record["profile"], record["latency_ab"] = {}, {}
        for size, folder in benches.items():
            onnx = {n: folder / "onnx" / f"{n}.onnx" for n in PROFILED if (folder / "onnx" / f"{n}.onnx").is_file()}
            log(f"profiling {', '.join(onnx)} at {size} px")
            record["profile"][str(size)] = {
                n: {
                    "onnx_ms": profile_onnx(f, size, threads=threads),
                    "gflops": layer_gflops(record["models"][n]["path"], size),
                }
                for n, f in onnx.items()
            }
            record["latency_ab"][str(size)] = {
                str(t or "all"): compare_latency(onnx, size, threads=t) for t in dict.fromkeys([None, 1, threads])
            }
    record.setdefault("stage_s", {})["measure"] = round(time.perf_counter() - t0, 1)
    (out / "study.json").write_text(json.dumps(record, indent=2) + "\n")
    if results is not None:
        results.mkdir(parents=True, exist_ok=True)
        for f in ("report.md", "report.json", "results.csv", "pareto.png"):
            if (bench / f).is_file():
                shutil.copyfile(bench / f, results / f)
        shutil.copyfile(out / "study.json", results / "study.json")
        for size, folder in benches.items():
            if size != imgsz:
                dst = results / f"latency-{size}"
                dst.mkdir(exist_ok=True)
                for f in ("report.md", "report.json", "results.csv"):
                    shutil.copyfile(folder / f, dst / f)
        log(f"copied the reports to {results}")
    return bench


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the study.

    Args:
        argv (list[str] | None): Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        (int): Exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/study"), help="study folder (resumed if it exists)")
    parser.add_argument("--measure-only", action="store_true", help="only measure the checkpoints already in --out")
    parser.add_argument("--data", default=DATA, help="built-in dataset name or data yaml")
    parser.add_argument("--targets", type=int, nargs="+", default=list(TARGETS), help="MACs reduction factors")
    parser.add_argument("--latency-imgsz", type=int, default=640, help="extra latency-only image size (0: none)")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per model and backend")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs per model and backend")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for latency (default: all usable)")
    parser.add_argument(
        "--profile", action="store_true", help="per-layer ONNX Runtime profile and interleaved timing of the 2x models"
    )
    parser.add_argument(
        "--results",
        default=str(Path(__file__).resolve().parent / "results"),
        help="where to copy report.md/json, results.csv, pareto.png and study.json ('' to skip)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: shapes-tiny.yaml, 1 epoch, 3 timed runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.data, args.runs, args.warmup = QUICK["data"], QUICK["runs"], QUICK["warmup"]
        args.results = "" if args.results == parser.get_default("results") else args.results
    out = args.out.resolve()
    command = "python benchmarks/study.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    start = time.perf_counter()
    if args.measure_only:
        record_path = out / "study.json"
        if not record_path.is_file():
            print(f"no study in {out}: run without --measure-only first", file=sys.stderr)
            return 1
        record = json.loads(record_path.read_text())
    else:
        record = run_study(out, args.data, tuple(args.targets), quick=args.quick)
    results = Path(args.results) if args.results else None
    bench = measure(
        out, record, results, args.latency_imgsz, args.runs, args.warmup, args.threads, args.profile, command
    )
    log(f"done in {(time.perf_counter() - start) / 60:.1f} min; report: {bench / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
