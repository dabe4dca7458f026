"""`prune()`: structured channel pruning of Ultralytics detection models, deciding the plan.

What to remove where: the ratio, the MACs or latency target (searched, `yolo_prune.policy.targets`), the per-layer
allocation from sensitivity curves (`yolo_prune.policy.allocate`) with its latency calibration, and the re-fit after
pruning (`yolo_prune.policy.reconstruct`). Carrying the plan out on the model (DepGraph, twins, heads, self-check) is
`yolo_prune.graph`. ``PruneStats``, ``prune_detection_model``, ``prune_seeded``, ``reference_shapes`` and
``check_pruned`` are importable from here as before.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch_pruning as tp
from torch import nn
from ultralytics import YOLO
from ultralytics.utils import LOGGER, colorstr

from ..config.checks import check_layer_ratios, check_prune_call, check_ratio
from ..graph.apply import PruneStats, prune_detection_model, prune_seeded
from ..graph.shape_check import check_pruned, reference_shapes
from ..integration.args import renamed_kwargs
from ..integration.checkpoint import load_yolo
from ..rules.blocks import check_supported
from .importance import collect_gradients, get_importance, needs_gradients

__all__ = [
    "PruneStats",
    "check_pruned",
    "check_layer_ratios",
    "check_ratio",
    "prune",
    "prune_detection_model",
    "prune_seeded",
    "reference_shapes",
]

PREFIX = colorstr("yolo-prune: ")
CALIBRATION_PASSES = 3  # latency target: allocations timed against the unpruned network at most
CALIBRATION_TOLERANCE = 0.02  # a measured latency ratio this close to the target (or within its noise) is kept


def _pct(x: float | None) -> str:
    """A relative error as a percentage for the log."""
    return "-" if x is None else f"{100 * x:.1f} %"


def _copy_yolo(yolo: YOLO) -> YOLO:
    """Deep-copy a ``YOLO`` wrapper (model included) without its cached predictor or trainer."""
    held = yolo.predictor, yolo.trainer
    yolo.predictor = yolo.trainer = None
    try:
        return copy.deepcopy(yolo)
    finally:
        yolo.predictor, yolo.trainer = held


def _describe(stats: PruneStats) -> dict:
    """Return the plain-dict form of ``stats`` for ``prune_info``."""
    return dict(stats.__dict__)


def _latency_savings(curves: list, cost: Any, pruned_copy: Any) -> list:
    """Return ``curves`` with each point's saving re-measured as the fraction of ``cost`` saved (e.g. latency)."""
    from .allocate import LayerCurve

    out = []
    for curve in curves:
        savings = [0.0 if r == 0 else max(0.0, 1.0 - cost(pruned_copy({curve.stage: r}))) for r in curve.ratios]
        for k in range(1, len(savings)):  # measured savings may wobble; a larger cut never saves less
            savings[k] = max(savings[k], savings[k - 1])
        out.append(LayerCurve(curve.stage, list(curve.ratios), list(curve.losses), savings))
    return out


def _allocate(
    pruned: YOLO,
    curves: list,
    kind: str,
    wanted: float | None,
    ratio: float,
    importance: tp.importance.Importance,
    seed: int,
    options: dict,
    measure: dict,
    verbose: bool,
) -> tuple[Any, PruneStats, dict]:
    """Prune ``pruned.model`` in place with per-layer ratios allocated from ``curves`` to meet the cost target.

    Without a target (``wanted`` None), the target is the MACs that uniform pruning at ``ratio`` keeps. For a latency
    target on a CPU, the cost is the latency predicted by a per-conv `yolo_prune.measurement.hardware.LatencyTable`
    (deterministic, cached in ``measure["table"]``), the curves' savings are re-measured in that latency, and the final
    network is then timed for real against the unpruned one (interleaved rounds).
    Returns the `yolo_prune.policy.allocate.Allocation`, the stats of the final pruning pass and what the latency model
    and the final measurement found (empty for MACs).
    """
    from ..measurement.hardware import LatencyTable, compare_latency
    from .allocate import allocate
    from .targets import cost_meter

    layer_options = {**options, "layer_ratios": None, "staggered": False}

    def apply(module: nn.Module, layer_ratios: dict[int, float] | None, uniform: float = 0.0) -> PruneStats:
        return prune_seeded(module, uniform, importance, seed, **{**layer_options, "layer_ratios": layer_ratios})

    def pruned_copy(layer_ratios: dict[int, float] | None, uniform: float = 0.0) -> nn.Module:
        module = copy.deepcopy(pruned.model)
        apply(module, layer_ratios, uniform)
        return module

    extra: dict = {}
    table = None
    if kind == "latency" and str(measure["device"]).lower() == "cpu" and measure["backend"] in ("torch", "onnx"):
        threads = int(measure["threads"] or 1)
        table = LatencyTable(measure["backend"], measure["imgsz"], threads, path=measure.get("table"))
        convs = table.predict(pruned.model)
        rest = table.rest_ms(pruned.model, convs)  # concat, upsample, pooling, attention, decoding: held fixed
        extra = {"model": "latency table", "base_convs_ms": convs, "rest_ms": rest}
        if verbose:
            LOGGER.info(
                f"{PREFIX}latency model ({measure['backend']}, {threads} thread(s), imgsz {measure['imgsz']}): "
                f"{convs:.1f} ms in convs + {rest:.1f} ms elsewhere"
            )

        def meter(module: nn.Module) -> float:
            return table.predict(module) + rest
    else:
        meter = cost_meter(kind, **{k: v for k, v in measure.items() if k != "table"})
    base_cost = meter(pruned.model)
    if kind == "latency":
        curves = _latency_savings(curves, lambda m: meter(m) / base_cost, pruned_copy)
    if wanted is None:
        wanted = meter(pruned_copy(None, ratio)) / base_cost
        if verbose:
            LOGGER.info(f"{PREFIX}uniform ratio {ratio:g} keeps {wanted:.1%} of the {kind}: allocating that budget")

    def cost(r: dict[int, float]) -> float:
        return meter(pruned_copy(r)) / base_cost

    if table is None:
        allocation = allocate(curves, cost, wanted, verbose=verbose)
        return allocation, apply(pruned.model, allocation.ratios), extra
    # The table is a model: per-conv timings add up only roughly to the network's (per-call overheads, fusion, cache
    # effects), most at small sizes. Each pass times the allocation against the unpruned network and, when the
    # measured ratio misses the target by more than the noise, re-allocates at the goal the measurement implies.
    base = copy.deepcopy(pruned.model)
    goal, passes, chosen = wanted, [], None
    for _ in range(CALIBRATION_PASSES):
        try:
            allocation = allocate(curves, cost, goal, verbose=verbose)
        except ValueError:
            if chosen is None:
                raise
            break  # a corrected goal beyond what the curves allow: keep the passes so far
        candidate = copy.deepcopy(base)
        stats = apply(candidate, allocation.ratios)
        timed = compare_latency(base, candidate, measure["backend"], measure["imgsz"], table.threads)
        lo, hi = timed["spread"]
        tolerance = max(CALIBRATION_TOLERANCE, (hi - lo) / 2)
        passes.append({"goal": goal, "predicted": allocation.achieved, "measured": timed["ratio"], "spread": [lo, hi]})
        if verbose:
            LOGGER.info(
                f"{PREFIX}latency predicted {allocation.achieved:.1%}, measured {timed['ratio']:.1%} of the unpruned "
                f"model ({timed['pruned_ms']:.1f} / {timed['base_ms']:.1f} ms; per-round 10-90 %: {lo:.1%}-{hi:.1%})"
            )
        miss = timed["ratio"] - wanted
        rank = (miss > tolerance, abs(miss))  # within or under the target first, then the closest
        if chosen is None or rank < chosen[0]:
            chosen = (rank, allocation, stats, candidate, timed)
        if abs(miss) <= tolerance:
            break
        goal = min(1.0, max(0.01, allocation.achieved * wanted / timed["ratio"]))
    _, allocation, stats, pruned.model, timed = chosen
    extra.update(
        convs_timed=table.measured,
        table=None if table.path is None else str(table.path),
        measured=timed,
        calibration=passes,
    )
    if verbose and len(passes) > 1:
        LOGGER.info(f"{PREFIX}latency target {wanted:.1%}: kept the pass measured at {timed['ratio']:.1%}")
    return allocation, stats, extra


@renamed_kwargs(latency_runs="runs", latency_threads="threads")
def prune(
    model: YOLO | str,
    ratio: float | None = None,
    method: str = "l2",
    round_to: int | str = "auto",
    min_channels: int | None = None,
    seed: int = 0,
    verbose: bool = True,
    *,
    global_pruning: bool = False,
    max_ratio: float = 0.9,
    layer_ratios: Mapping[int, float] | None = None,
    target_macs: float | None = None,
    target_latency: float | None = None,
    backend: str = "torch",
    device: str | None = None,
    imgsz: int = 640,
    data: str | None = None,
    calib_batches: int = 4,
    calib_batch: int = 8,
    staggered: bool = False,
    runs: int = 30,
    threads: int | None = None,
    sensitivity: dict | str | Path | list | None = None,
    latency_table: str | Path | None = None,
    attention: str = "heads",
    reconstruct: str | None = None,
    reconstruct_images: int = 256,
) -> YOLO:
    """Remove whole filters from a YOLO detection model; coupled layers shrink together.

    The input is never modified: a ``YOLO`` is deep-copied and a checkpoint file is only read. The returned object
    carries ``prune_info``, a plain dict with what was done (method, ratio, channel and parameter counts and, for a
    target, the search result); it lives on the ``YOLO`` wrapper only, never inside the saved ``.model``.

    Args:
        model: An Ultralytics ``YOLO``, a path to a ``.pt`` checkpoint, or a model yaml such as ``"yolo11n.yaml"``.
        ratio: Fraction of prunable channels to remove, in [0, 1). ``0`` returns an equivalent model. Default 0.5,
            or 0 for the layers not in ``layer_ratios``. Not allowed together with a target.
        method: Importance criterion: ``l1``, ``l2``, ``bn``, ``lamp``, ``fpgm``, ``taylor``, ``hessian``, ``random``
            (see ``IMPORTANCE_METHODS``). ``taylor`` and ``hessian`` need ``data``.
        round_to: Kept widths are rounded to a multiple of this. ``"auto"`` (default) picks the channel block of the
            deployment target, `yolo_prune.measurement.hardware.auto_round_to` for ``backend`` and ``device``: 16 on a
            CPU with AVX-512, 8 on other CPUs and on GPUs. The value used and why are in ``prune_info``.
        min_channels: No group is cut below this width (default: ``round_to``).
        seed: Seed for random criteria.
        verbose: Log a one-line summary (and each target-search probe).
        global_pruning: Rank normalised channel scores across all groups (twins cut equally, frozen groups excluded)
            instead of removing ``ratio`` of every group; ``ratio`` is still the fraction of all prunable channels.
        max_ratio: With ``global_pruning``, the largest fraction removed from any one group, in (0, 1].
        layer_ratios: ``{index in model.model: ratio}``, e.g. from ``yolo_prune.policy.sensitivity.layer_ratios``.
        target_macs: Keep at most this fraction of the MACs, in (0, 1]; the ratio is searched. MACs are counted with
            channel counts padded up to the hardware's channel block (``prune_info["macs_block"]``; see
            `yolo_prune.measurement.hardware.padded_macs`), so the target is on the work a blocked kernel executes.
        target_latency: Keep at most this fraction of the latency on ``backend``/``device`` at ``imgsz``. With
            ``sensitivity`` on a CPU, a per-conv latency table of the backend predicts each candidate's latency
            (cached in ``latency_table``) and the allocated model is timed against the unpruned one in interleaved
            rounds (``prune_info["target"]["measured"]``, with its spread); a measurement that misses the target by
            more than its noise re-allocates at the goal it implies (up to ``CALIBRATION_PASSES`` passes, each in
            ``prune_info["target"]["calibration"]``). Otherwise each candidate is measured.
        backend: Latency backend for ``target_latency`` and for ``round_to="auto"``: ``torch``, ``onnx`` or
            ``openvino`` (CPU; ``torch`` and ``onnx`` get a latency table, ``openvino`` measures each candidate).
        device: Device for latency measurement and gradient collection; None picks the first GPU when there is one,
            else the CPU (as Ultralytics does).
        imgsz: Image size for MACs, latency and gradient collection.
        data: Dataset yaml (or built-in name such as ``shapes.yaml``) whose training split feeds gradient criteria.
        calib_batches: Batches of training images for gradient criteria.
        calib_batch: Images per calibration batch.
        staggered: Stagger the rounding thresholds of the groups (see ``prune_detection_model``); always on for a
            target, so that ``prune(ratio=info["ratio"], staggered=True)`` rebuilds the same widths.
        runs: Timed runs per latency measurement of ``target_latency`` (after 5 untimed ones); ``runs=`` of the CLI.
            The old name ``latency_runs`` still works, with a deprecation warning.
        threads: CPU threads for those measurements (default: every usable core; 1 is far steadier on a machine
            shared with other jobs); ``threads=`` of the CLI. The old name ``latency_threads`` still works, with a
            deprecation warning.
        sensitivity: Per-layer sensitivity results (``sensitivity.json``, its run folder, the dict, or a list of
            ``yolo_prune.policy.allocate.LayerCurve``; from ``yolo_prune.policy.sensitivity.run_sensitivity``). Instead
            of removing the same fraction of every layer, the layers' ratios are allocated from the measured curves
            (``yolo_prune.allocate``) so that the target (or, with ``ratio``, the MACs that uniform pruning at
            ``ratio`` would keep) is met with the least predicted mAP loss.
        latency_table: JSON file caching the per-conv latency table of a latency target (reused when it was written
            for the same backend, threads and CPU); None keeps it in memory.
        attention: ``heads`` (default): attention (``Attention`` in PSA/C2PSA/C3k2, ``AAttn`` in A2C2f) loses whole
            heads at the ratio of its layer, and the stream around it is pruned too; ``keep``: attention and its
            stream keep their widths (the behaviour before 0.3). ``prune_info["heads_removed"]`` counts the heads.
        reconstruct: Re-fit the pruned network to the input model on ``reconstruct_images`` training images of
            ``data`` before returning it (`yolo_prune.policy.reconstruct.reconstruct`): ``ls`` (least-squares
            reconstruction of each conv's kept weights and an offset, stock shapes), ``seq`` (the same, conv after
            conv on the pruned network's own inputs) or ``bn`` (BatchNorm statistics only). None (default): off.
            Needs ``data``; what it did is in ``prune_info["reconstruct"]``.
        reconstruct_images: Calibration images for ``reconstruct``.

    Returns:
        A new ``YOLO`` whose ``.model`` is the pruned network, made only of stock Ultralytics classes.

    Raises:
        ValueError: On a bad ``ratio`` or target, both given, an unknown ``method`` or ``attention``, a gradient
            method without ``data``, an unreachable target, an unreadable model, an unsupported model family, or an
            old argument name (``latency_runs``, ``latency_threads``) given together with its new one.

    Examples:
        >>> from yolo_prune import prune
        >>> pruned = prune("yolo11n.yaml", ratio=0.5)
        >>> pruned = prune("best.pt", method="taylor", data="data.yaml", target_macs=0.5, global_pruning=True)
        >>> pruned.prune_info["target"]["achieved"]  # measured MACs ratio, <= 0.5
        >>> pruned.save("yolo11n-pruned.pt")
        >>> pruned = prune("best.pt", target_macs=0.5, sensitivity="runs/sensitivity/exp")  # measured allocation
    """
    from ..measurement.hardware import auto_round_to, resolve_round_to
    from .targets import cost_meter, search_ratio

    checked = check_prune_call(
        ratio=ratio,
        target_macs=target_macs,
        target_latency=target_latency,
        layer_ratios=layer_ratios,
        global_pruning=global_pruning,
        sensitivity=sensitivity,
        max_ratio=max_ratio,
        method=method,
        attention=attention,
        reconstruct=reconstruct,
        backend=backend,
        device=device,
        data=data,
    )
    ratio, target, layers, max_ratio = (
        checked["ratio"],
        checked["target"],
        checked["layer_ratios"],
        checked["max_ratio"],
    )
    attention, reconstruct, backend, device = (checked[k] for k in ("attention", "reconstruct", "backend", "device"))
    rounding = resolve_round_to(round_to, backend, device)
    round_to, block = rounding.value, auto_round_to(backend, device).value
    importance = get_importance(method)
    curves = None
    if sensitivity is not None:
        from .allocate import curves_from_sensitivity

        curves = sensitivity if isinstance(sensitivity, list) else curves_from_sensitivity(sensitivity)
    source = load_yolo(model)
    check_supported(source.model)
    pruned = _copy_yolo(source)
    gradients = None
    if needs_gradients(method):
        gradients = collect_gradients(
            pruned.model, data, method, batches=calib_batches, batch=calib_batch, imgsz=imgsz, device=device
        )
    options = {
        "round_to": round_to,
        "min_channels": min_channels,
        "global_pruning": global_pruning,
        "max_ratio": max_ratio,
        "layer_ratios": layers,
        "gradients": gradients,
        "staggered": bool(staggered) or bool(target),
        "attention": attention,
    }

    def prune_module(module: nn.Module, value: float) -> PruneStats:
        return prune_seeded(module, value, importance, seed, **options)

    info: dict = {
        "method": str(method).lower(),
        "global_pruning": bool(global_pruning),
        "staggered": options["staggered"],
        "round_to": round_to,
        "round_to_reason": rounding.reason,
        "macs_block": block,
        "attention": attention,
    }
    if verbose and rounding.reason != "given":
        LOGGER.info(f"{PREFIX}round_to=auto -> {round_to} ({rounding.reason})")
    measure = {
        "imgsz": imgsz,
        "backend": backend,
        "device": device,
        "runs": runs,
        "threads": threads,
        "block": block,
        "table": latency_table,
    }
    if curves is not None:
        kind, wanted = next(iter(target.items())) if target else ("macs", None)
        allocation, stats, latency = _allocate(
            pruned, curves, kind, wanted, ratio, importance, seed, options, measure, verbose
        )
        ratio, layers = 0.0, allocation.ratios
        info["allocation"] = {"kind": kind, **allocation.as_dict()}
        if target:
            info["target"] = {"kind": kind, "target": wanted, "achieved": allocation.achieved, **latency}
            if kind == "latency":
                info["target"].update(backend=backend, device=str(device), imgsz=imgsz)
    elif target:
        kind, wanted = next(iter(target.items()))
        meter = cost_meter(kind, **{k: v for k, v in measure.items() if k != "table"})
        base_cost = meter(pruned.model)
        base_params = sum(p.numel() for p in pruned.model.parameters())
        found: dict[float, PruneStats] = {}

        def cost(module: nn.Module) -> float:
            # A candidate that lost no channel is the unpruned network: its cost is the base cost, not a noisy
            # re-measurement that could pass a latency target by chance.
            unchanged = sum(p.numel() for p in module.parameters()) == base_params
            return base_cost if unchanged else meter(module)

        def prune_copy(value: float) -> nn.Module:
            module = copy.deepcopy(pruned.model)
            found[value] = prune_module(module, value)
            return module

        search, pruned.model = search_ratio(
            prune_copy, cost, base_cost, wanted, kind=kind, max_ratio=0.95, verbose=verbose
        )
        ratio, stats = search.ratio, found[search.ratio]
        info["target"] = search.as_dict()
        if kind == "latency":
            info["target"].update(backend=backend, device=str(device), imgsz=imgsz)
    else:
        stats = prune_module(pruned.model, ratio)
    info.update(ratio=ratio, layer_ratios={str(k): v for k, v in layers.items()}, **_describe(stats))
    if reconstruct:
        from .reconstruct import reconstruct as refit

        start = time.perf_counter()
        fit = refit(
            pruned.model, source.model, data, reconstruct, images=reconstruct_images, imgsz=imgsz, device=device
        )
        info["reconstruct"] = {**fit.as_dict(), "seconds": round(time.perf_counter() - start, 1)}
        if verbose:
            r = info["reconstruct"]
            LOGGER.info(
                f"{PREFIX}reconstruct={reconstruct} on {r['images']} images in {r['seconds']:.0f} s: "
                f"{r['layers_fitted']} convs re-fitted (mean output error {_pct(r['mean_error_before'])} -> "
                f"{_pct(r['mean_error_after'])}), {r['bn_recalibrated']} BatchNorms re-estimated"
            )
    pruned.prune_info = info
    if verbose:
        reached = ""
        if "allocation" in info:
            a = info["allocation"]
            reached = f", sensitivity allocation over {len(a['ratios'])} layers -> kept {a['achieved']:.1%}"
        elif "target" in info:
            t = info["target"]
            reached = f", target {t['kind']}={t['target']} -> kept {t['achieved']:.1%}"
        LOGGER.info(
            f"{PREFIX}removed {stats.channels_removed}/{stats.channels_before} channels in {stats.groups} groups "
            f"({method}, ratio={ratio:.4g}{', global' if global_pruning else ''}{reached}): "
            f"{stats.params_before:,} -> {stats.params_after:,} parameters"
        )
    return pruned
