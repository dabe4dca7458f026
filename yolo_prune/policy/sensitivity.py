"""Per-layer pruning sensitivity: prune one top-level layer of the model at a time and measure the mAP drop.

A *stage* is one top-level layer of the detection model, ``model.model[i]``; pruning a stage prunes the channel
groups whose root conv lies in it (the layers that consume those channels shrink with them). Each stage is pruned
alone at a few ratios on a fresh copy of the model, validated with the Ultralytics validator, and the results are
written to ``sensitivity.json``, a ``sensitivity.md`` table and a ``sensitivity.png`` plot in a new run folder.
`layer_ratios` turns the results into per-layer ratios for ``prune(..., layer_ratios=...)``.

Examples:
    >>> from yolo_prune.policy.sensitivity import layer_ratios, run_sensitivity
    >>> run_dir = run_sensitivity("best.pt", "data.yaml", ratios=(0.3, 0.5, 0.7), imgsz=320)
    >>> ratios = layer_ratios(run_dir / "sensitivity.json", max_drop=0.01)  # {0: 0.7, 1: 0.5, ...}
    >>> pruned = prune("best.pt", layer_ratios=ratios)

    From the command line: ``yolo-prune sensitivity model=best.pt data=data.yaml imgsz=320``.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from ultralytics.utils import LOGGER, TQDM, colorstr
from ultralytics.utils.files import increment_path

from ..config.checks import check_int, check_ratios, check_stages, resolve_device
from ..measurement.report import save_figure, write_atomic

__all__ = [
    "SENSITIVITY_DEFAULTS",
    "check_ratios",
    "layer_ratios",
    "model_fingerprint",
    "run_sensitivity",
    "val_subset",
]

PREFIX = colorstr("yolo-prune: ")
METRICS = ("map50_95", "map50")

# Accepted arguments of `run_sensitivity` (the ``yolo-prune sensitivity`` command) and their defaults.
SENSITIVITY_DEFAULTS: dict[str, Any] = {
    "model": None,  # required: .pt checkpoint (or model yaml) to analyse
    "data": None,  # required: dataset yaml, or a built-in name (shapes.yaml, shapes-tiny.yaml)
    "ratios": (0.3, 0.5, 0.7),  # ratios each layer is pruned at, alone
    "imgsz": 640,  # validation (and gradient collection) image size
    "batch": 16,  # validation batch size
    "device": None,  # None = as Ultralytics: the first GPU when there is one, else the CPU
    "method": "l2",  # channel importance: l1, l2, bn, lamp, fpgm, taylor, hessian, random
    "stages": None,  # layer indices of model.model to analyse (e.g. 0,2,4); None = every layer
    "round_to": "auto",  # kept widths are multiples of this; auto = this CPU's channel block (16 on AVX-512)
    "min_channels": None,  # no group is cut below this width (default round_to)
    "attention": "heads",  # attention layers: heads = remove whole heads (as prune does), keep = leave intact
    "calib_batches": 4,  # training batches for gradient methods (taylor, hessian)
    "seed": 0,  # seed of the random method
    "images": None,  # validate on the first N validation images only (faster scan); None = all
    "reconstruct": None,  # re-fit each pruned copy before validating it (ls, seq, bn; as prune does); None = off
    "reconstruct_images": 64,  # training images for reconstruct, loaded once for the whole scan
    "project": "runs/sensitivity",
    "name": "exp",
    "verbose": True,
}


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence Ultralytics' log lines and progress bars (the validator's) inside the block; the scan has its own."""
    level = LOGGER.level
    LOGGER.setLevel(max(level, 30))
    try:
        yield
    finally:
        LOGGER.setLevel(level)


def _duration(seconds: float) -> str:
    """``42 s``, ``3.5 min`` or ``1.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def model_fingerprint(model: torch.nn.Module) -> str:
    """Return a short hash of a model's tensors (names, shapes and exact values), to tell whether cached results
    belong to it. Exact bytes, not sums: a float reduction's result depends on the thread count."""
    import hashlib

    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def val_subset(data_yaml: str, images: int, folder: Path) -> str:
    """Write a dataset yaml whose ``val`` split is the first ``images`` validation images (sorted); return its path.

    Args:
        data_yaml: Dataset yaml (resolved).
        images: Number of validation images to keep.
        folder: Where ``val_subset.txt`` and ``val_subset.yaml`` are written.

    Returns:
        The new yaml's path. Labels are found next to the images as usual (``images`` -> ``labels``).
    """
    from ultralytics.data.utils import IMG_FORMATS, check_det_dataset
    from ultralytics.utils import YAML

    info = check_det_dataset(data_yaml)
    sources = info["val"] if isinstance(info["val"], list) else [info["val"]]
    files: list[str] = []
    for source in map(Path, sources):
        if source.is_dir():
            files += [str(p) for p in source.rglob("*") if p.suffix[1:].lower() in IMG_FORMATS]
        elif source.is_file():
            root = source.parent
            for line in source.read_text().splitlines():
                line = line.strip()
                if line:
                    files.append(str(Path(line) if Path(line).is_absolute() else (root / line).resolve()))
    if not files:
        raise ValueError(f"dataset '{data_yaml}' lists no validation images")
    chosen = sorted(files)[:images]
    listing = (folder / "val_subset.txt").resolve()  # absolute: Ultralytics resolves relative paths against `path`
    write_atomic(listing, "\n".join(chosen) + "\n")
    out = (folder / "val_subset.yaml").resolve()
    YAML.save(
        out, {"path": str(info.get("path", "")), "train": info["train"], "val": str(listing), "names": info["names"]}
    )
    return str(out)


def _prune_stage(
    base: torch.nn.Module, stage: int, ratio: float, importance: Any, options: dict, seed: int
) -> tuple[torch.nn.Module, Any]:
    """Return a pruned copy of ``base`` in which only groups rooted in ``stage`` lost ``ratio`` of their channels."""
    from .prune import prune_seeded

    module = copy.deepcopy(base)
    return module, prune_seeded(module, 0.0, importance, seed, layer_ratios={stage: ratio}, **options)


def run_sensitivity(
    model: Any,
    data: str,
    ratios: Iterable[float] | str = (0.3, 0.5, 0.7),
    imgsz: int = 640,
    batch: int = 16,
    device: str | None = None,
    method: str = "l2",
    stages: Iterable[int] | str | None = None,
    round_to: int | str = "auto",
    min_channels: int | None = None,
    attention: str = "heads",
    calib_batches: int = 4,
    seed: int = 0,
    images: int | None = None,
    reconstruct: str | None = None,
    reconstruct_images: int = 64,
    project: str | Path = "runs/sensitivity",
    name: str = "exp",
    verbose: bool = True,
) -> Path:
    """Prune each layer alone at each ratio, validate, and write ``sensitivity.json``/``.md``/``.png``.

    Args:
        model: ``YOLO`` object, ``.pt`` checkpoint or model yaml; never modified.
        data: Dataset yaml or built-in name; its ``val`` split is validated (``train`` feeds gradient methods).
        ratios: Ratios in (0, 1) each layer is pruned at (a list, or ``"0.3,0.5"``).
        imgsz: Validation image size.
        batch: Validation batch size.
        device: Ultralytics device string; None picks the first GPU when there is one, else the CPU.
        method: Importance criterion (see ``yolo_prune.policy.importance.IMPORTANCE_METHODS``).
        stages: Layer indices of ``model.model`` to analyse; default every layer. Layers with no prunable channels
            (upsample, concat, ...) are listed but not validated.
        round_to: Kept widths are rounded to a multiple of this; ``"auto"`` as in `yolo_prune.prune`.
        min_channels: No group is cut below this width (default: ``round_to``).
        attention: ``heads`` (attention layers lose whole heads, as ``prune`` does by default) or ``keep``.
        calib_batches: Training batches for gradient methods.
        seed: Seed for the random method.
        images: Validate on the first ``images`` validation images only (sorted by path), for a quicker scan; the
            subset is listed in ``val_subset.txt`` in the run folder. None: every validation image.
        reconstruct: Re-fit every pruned copy to the model before validating it (``ls``, ``seq``, ``bn``; see
            `yolo_prune.policy.reconstruct.reconstruct`), so the scan measures what the cut costs once recovered, as
            ``prune(reconstruct=...)`` delivers it, rather than the collapse of an untouched network. None: off.
        reconstruct_images: Training images the re-fit uses (loaded once for the whole scan).
        project: Parent folder of the run folder.
        name: Run folder name; ``exp``, ``exp2``, ... so nothing is overwritten.
        verbose: Log progress.

    Returns:
        The run folder, holding ``sensitivity.json``, ``sensitivity.md`` and ``sensitivity.png``.

    Raises:
        ValueError: On a missing ``model``/``data``, bad ``ratios``/``stages``, an unknown method or an unsupported
            model.
    """
    from ..config.checks import check_attention, check_reconstruct
    from ..data.builtin import resolve_data
    from ..integration.checkpoint import load_yolo
    from ..measurement.measure import count_gflops, validate
    from ..measurement.report import machine_info
    from ..rules.blocks import check_supported
    from .importance import collect_gradients, get_importance, needs_gradients
    from .reconstruct import calibration_images
    from .reconstruct import reconstruct as refit

    if model is None or data is None:
        raise ValueError("sensitivity needs model= (a .pt checkpoint or model yaml) and data= (a dataset yaml)")
    ratio_list = check_ratios(ratios)
    reconstruct = check_reconstruct(reconstruct)
    reconstruct_images = check_int(reconstruct_images, "reconstruct_images", 1)
    device = resolve_device(device)
    importance = get_importance(method)
    yolo = load_yolo(model)
    check_supported(yolo.model)
    base = copy.deepcopy(yolo.model).float().cpu()
    stage_list = check_stages(stages, len(base.model))
    data_yaml = resolve_data(data)
    images = None if images is None else check_int(images, "images", 1)
    run_dir = increment_path(Path(project) / name, exist_ok=False, mkdir=True)
    val_yaml = data_yaml if images is None else val_subset(data_yaml, int(images), run_dir)
    from ..measurement.hardware import resolve_round_to

    options = {
        "round_to": resolve_round_to(round_to, "onnx", device).value,
        "min_channels": min_channels,
        "attention": check_attention(attention),
    }
    if needs_gradients(method):
        options["gradients"] = collect_gradients(
            base, data_yaml, method, batches=calib_batches, imgsz=imgsz, device=device
        )
    calib = calibration_images(base, data_yaml, int(reconstruct_images), batch, imgsz, "cpu") if reconstruct else None
    if reconstruct and not calib:
        raise ValueError(f"reconstruct='{reconstruct}' needs training images, and '{data}' has none")
    val_args = {"imgsz": imgsz, "batch": batch, "device": device}
    seconds = {"validate": 0.0, "prune": 0.0, "reconstruct": 0.0}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="yolo_prune_sens_") as tmp:
        val_args.update(project=tmp, name="val", exist_ok=True)  # validator folders stay out of the run folder
        tick = time.perf_counter()
        with _quiet():
            baseline = validate(base, val_yaml, **val_args)
        one = time.perf_counter() - tick
        seconds["validate"] += one
        base_macs = count_gflops(base, imgsz) / 2
        probes = len(stage_list) * len(ratio_list)
        LOGGER.info(
            f"{PREFIX}sensitivity scan: {len(stage_list)} layers x {len(ratio_list)} ratios, up to {probes} validations"
            f" of {one:.1f} s each (the baseline's){' + a re-fit each' if reconstruct else ''}: about "
            f"{_duration(probes * one)} or more"
        )
        rows = []
        bar = TQDM(total=probes, desc=f"{PREFIX}sensitivity", unit="cut")
        for stage in stage_list:
            layer = base.model[stage]
            row = {"stage": stage, "type": type(layer).__name__, "prunable": False, "results": []}
            for ratio in ratio_list:
                tick = time.perf_counter()
                module, stats = _prune_stage(base, stage, ratio, importance, options, seed)
                seconds["prune"] += time.perf_counter() - tick
                result = {"ratio": ratio, "channels_removed": stats.channels_removed, "params": stats.params_after}
                if stats.channels_removed or stats.heads_removed:
                    row["prunable"] = True
                    with _quiet():
                        if reconstruct:
                            tick = time.perf_counter()
                            refit(module, base, calib, reconstruct, device=device)
                            seconds["reconstruct"] += time.perf_counter() - tick
                        tick = time.perf_counter()
                        metrics = validate(module, val_yaml, **val_args)
                        seconds["validate"] += time.perf_counter() - tick
                    result.update(metrics, macs_kept=count_gflops(module, imgsz) / 2 / base_macs)
                else:
                    result.update(baseline, macs_kept=1.0)
                result["drop"] = baseline["map50_95"] - result["map50_95"]
                row["results"].append(result)
                bar.update(1)
                if verbose:
                    LOGGER.info(
                        f"{PREFIX}sensitivity layer {stage} ({row['type']}) ratio {ratio}: "
                        f"-{stats.channels_removed} channels, mAP50-95 {result['map50_95']:.4f} "
                        f"(drop {result['drop']:+.4f})"
                    )
            rows.append(row)
        bar.close()
    seconds["total"] = time.perf_counter() - start
    seconds["other"] = seconds["total"] - seconds["validate"] - seconds["prune"] - seconds["reconstruct"]
    seconds = {k: round(v, 1) for k, v in seconds.items()}
    LOGGER.info(
        f"{PREFIX}sensitivity scan took {_duration(seconds['total'])}: validation {seconds['validate']:.0f} s, "
        f"pruning {seconds['prune']:.0f} s, re-fit {seconds['reconstruct']:.0f} s, other {seconds['other']:.0f} s"
    )
    results = {
        "model": str(model) if isinstance(model, (str, Path)) else type(model).__name__,
        "data": str(data),
        "method": str(method).lower(),
        "imgsz": imgsz,
        "images": images,
        "reconstruct": reconstruct,
        "reconstruct_images": int(reconstruct_images) if reconstruct else None,
        "fingerprint": model_fingerprint(base),
        "ratios": ratio_list,
        "seconds": seconds,
        "metric": "map50_95",
        "baseline": baseline,
        "stages": rows,
        "machine": machine_info(),
    }
    write_atomic(run_dir / "sensitivity.json", json.dumps(results, indent=2))
    write_atomic(run_dir / "sensitivity.md", _markdown(results))
    _plot(results, run_dir / "sensitivity.png")
    if verbose:
        LOGGER.info(f"{PREFIX}sensitivity results saved to {run_dir}")
    return run_dir


def _time_line(seconds: dict | None) -> list[str]:
    """The scan's time, split into validation and the rest, as a Markdown paragraph (none for old results)."""
    if not seconds:
        return []
    return [
        f"Scan time {_duration(seconds['total'])}: validation {seconds['validate']:.0f} s, pruning "
        f"{seconds['prune']:.0f} s, re-fit {seconds['reconstruct']:.0f} s, other {seconds['other']:.0f} s.",
        "",
    ]


def _markdown(results: dict) -> str:
    """Return the results as a Markdown table: mAP50-95 drop (and MACs kept) per layer and ratio."""
    ratios = results["ratios"]
    base = results["baseline"]
    lines = [
        "# Pruning sensitivity per layer",
        "",
        f"Model `{results['model']}`, data `{results['data']}`, method `{results['method']}`, imgsz "
        f"{results['imgsz']}. Baseline mAP50-95 {base['map50_95']:.4f}, mAP50 {base['map50']:.4f}.",
        "",
        "Each cell: mAP50-95 drop when only that layer is pruned at the ratio (MACs kept of the whole model)"
        + (
            f", each cut re-fitted first (reconstruct={results['reconstruct']})." if results.get("reconstruct") else "."
        ),
        "",
        *_time_line(results.get("seconds")),
        "| layer | type | " + " | ".join(f"ratio {r:g}" for r in ratios) + " |",
        "|---|---|" + "---|" * len(ratios),
    ]
    for row in results["stages"]:
        if row["prunable"]:
            cells = [f"{r['drop']:+.4f} ({r['macs_kept']:.0%})" for r in row["results"]]
        else:
            cells = ["not prunable"] * len(ratios)
        lines.append(f"| {row['stage']} | {row['type']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Per-layer ratios from these results: `yolo_prune.policy.sensitivity.layer_ratios(path, max_drop=0.01)`.",
    ]
    return "\n".join(lines) + "\n"


def _plot(results: dict, path: Path) -> None:
    """Plot the mAP50-95 drop per layer, one line per ratio."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [row for row in results["stages"] if row["prunable"]]
    fig = Figure(figsize=(max(6.0, 0.35 * len(rows) + 2), 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = list(range(len(rows)))
    for k, ratio in enumerate(results["ratios"]):
        ax.plot(xs, [row["results"][k]["drop"] for row in rows], marker="o", label=f"ratio {ratio:g}")
    ax.set_xticks(xs, [f"{row['stage']}\n{row['type']}" for row in rows], fontsize=7)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("layer (index in model.model)")
    ax.set_ylabel("mAP50-95 drop")
    ax.set_title(f"pruning one layer at a time ({results['method']})")
    ax.grid(alpha=0.3)
    if rows:
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def layer_ratios(results: dict | str | Path, max_drop: float = 0.01, metric: str = "map50_95") -> dict[int, float]:
    """Derive per-layer ratios: for each layer, the largest ratio whose drop (and that of every smaller ratio) is small.

    Args:
        results: The dict written to ``sensitivity.json``, the file, or the run folder holding it.
        max_drop: Largest accepted absolute drop of ``metric`` (0.01 = one mAP point).
        metric: ``map50_95`` or ``map50``.

    Returns:
        ``{layer index: ratio}`` for ``prune(..., layer_ratios=...)``; layers with no acceptable ratio are left out
        (``prune`` then keeps them whole).

    Raises:
        ValueError: If the results cannot be read or ``metric`` is unknown.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got '{metric}'")
    from .allocate import read_sensitivity

    results = read_sensitivity(results)
    base = results["baseline"][metric]
    out = {}
    for row in results["stages"]:
        if not row["prunable"]:
            continue
        best = None
        for r in sorted(row["results"], key=lambda r: r["ratio"]):
            drop = base - r[metric]
            if not math.isfinite(drop) or drop > max_drop:
                break
            best = r["ratio"]
        if best is not None:
            out[int(row["stage"])] = float(best)
    return out
