"""Pruning targets other than a ratio: keep at most a fraction of the MACs or of the measured latency.

A target is reached by searching the pruning ratio: each candidate ratio prunes a fresh deep copy of the model, its
cost is measured and divided by the unpruned model's cost, and the search bisects between the largest ratio that
misses the target and the smallest ratio that meets it. MACs fall monotonically with the ratio (up to the ``round_to``
steps); latency is measured, hence noisy, so the search only ever returns a candidate whose *measured* cost ratio met
the target, and reports that measurement.

Examples:
    >>> from yolo_prune import prune
    >>> pruned = prune("yolo11n.yaml", target_macs=0.5)  # at most half the MACs
    >>> pruned.prune_info["target"]["achieved"]
    0.497
    >>> pruned = prune("best.pt", target_latency=0.6, backend="onnx", imgsz=320)
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn
from ultralytics.utils import LOGGER, colorstr

from ..config.checks import LATENCY_BACKENDS, check_backend, check_target  # re-exported: their old home

__all__ = [
    "LATENCY_BACKENDS",
    "TARGET_KINDS",
    "check_backend",
    "check_target",
    "cost_meter",
    "search_ratio",
    "TargetSearch",
]

PREFIX = colorstr("yolo-prune: ")
TARGET_KINDS = ("macs", "latency")
TOLERANCE = {"macs": 0.02, "latency": 0.05}  # stop once the achieved cost ratio is this close below the target


@dataclass
class TargetSearch:
    """Outcome of a target search.

    Attributes:
        kind: ``"macs"`` or ``"latency"``.
        target: Wanted cost ratio (pruned / unpruned), in (0, 1].
        ratio: Pruning ratio found.
        achieved: Measured cost ratio of the returned model (at most ``target``).
        base_cost: Cost of the unpruned model (MACs, or median latency in ms).
        cost: Cost of the returned model, in the same unit.
        evaluations: Every ``(ratio, achieved)`` pair tried, in order.
        missed: The largest ratio tried that did not meet the target, and what it kept (None if none was tried).
    """

    kind: str
    target: float
    ratio: float
    achieved: float
    base_cost: float
    cost: float
    evaluations: list[tuple] = field(default_factory=list)
    missed: tuple[float, float] | None = None

    def as_dict(self) -> dict:
        """Return a plain dict (floats and lists only) for logs, reports and ``prune_info``."""
        out = asdict(self)
        out["evaluations"] = [list(e) for e in self.evaluations]
        out["missed"] = None if self.missed is None else list(self.missed)
        return out


def cost_meter(
    kind: str,
    imgsz: int = 640,
    backend: str = "torch",
    device: str = "cpu",
    runs: int = 30,
    warmup: int = 5,
    threads: int | None = None,
    block: int = 1,
) -> Callable[[nn.Module], float]:
    """Return a function that measures the cost of a detection module: MACs, or median latency in ms.

    Args:
        kind: ``"macs"`` or ``"latency"``. MACs are THOP's count at ``imgsz`` (as Ultralytics counts them) when
            ``block`` is 1, else the conv MACs with channel counts padded up to ``block``
            (`yolo_prune.measurement.hardware.padded_macs`: the work a blocked CPU kernel executes).
        imgsz: Square input size.
        backend: Latency backend: ``"torch"`` (eager, fused), ``"onnx"`` (Ultralytics export, then ONNX Runtime) or
            ``"openvino"`` (Ultralytics export to OpenVINO IR, FP32, timed on the CPU).
        device: Latency device (``"cpu"``, ``"0"``, ``"cuda:0"``).
        runs: Timed runs per latency measurement.
        warmup: Untimed runs first.
        threads: CPU threads for latency (default: every usable core).
        block: Channel block for the MACs count (see ``kind``).

    Returns:
        A callable ``module -> cost``; the module is never modified.
    """
    from ..measurement.measure import (
        count_gflops,
        export_onnx,
        export_openvino,
        measure_onnx_latency,
        measure_openvino_latency,
        measure_torch_latency,
    )

    if kind == "macs":
        if block > 1:
            from ..measurement.hardware import padded_macs

            return lambda module: padded_macs(module, imgsz, block)
        return lambda module: count_gflops(module, imgsz) / 2 * 1e9
    if kind != "latency":
        raise ValueError(f"unknown target kind '{kind}': choose one of {', '.join(TARGET_KINDS)}")
    backend = check_backend(backend)

    def latency(module: nn.Module) -> float:
        if backend == "torch":
            stats = measure_torch_latency(module, imgsz, device=device, warmup=warmup, runs=runs, threads=threads)
        elif backend == "openvino":
            with tempfile.TemporaryDirectory(prefix="yolo_prune_target_") as tmp:
                folder = export_openvino(module, imgsz=imgsz, out_dir=Path(tmp), name="candidate")
                stats = measure_openvino_latency(folder, imgsz, warmup=warmup, runs=runs, threads=threads)
        else:
            with tempfile.TemporaryDirectory(prefix="yolo_prune_target_") as tmp:
                onnx = export_onnx(module, imgsz=imgsz, out_dir=Path(tmp), name="candidate")
                stats = measure_onnx_latency(onnx, imgsz, warmup=warmup, runs=runs, threads=threads, device=device)
        return float(stats["median_ms"])

    return latency


def search_ratio(
    prune_copy: Callable[[float], nn.Module],
    cost: Callable[[nn.Module], float],
    base_cost: float,
    target: float,
    kind: str = "macs",
    max_ratio: float = 0.95,
    tol: float | None = None,
    max_iter: int = 12,
    verbose: bool = True,
) -> tuple[TargetSearch, nn.Module]:
    """Find a pruning ratio whose measured cost ratio is at most ``target``, as close to it as the search gets.

    Cost falls roughly with the square of the kept width, so the first probe is at ``1 - sqrt(target)``; if that
    misses, ``max_ratio`` is probed to check the target can be reached at all. The bracket is then narrowed by
    interpolating ``sqrt(cost)`` linearly in the ratio (regula falsi, with a bisection step whenever one end stalls),
    aiming just below the target. The search stops once the best candidate is within ``tol`` (relative) below the
    target, the bracket is narrower than 0.002, or after ``max_iter`` further probes.

    Args:
        prune_copy: ``ratio -> pruned copy`` of the model (a new module each call; the original is untouched).
        cost: ``module -> cost`` (see `cost_meter`).
        base_cost: Cost of the unpruned model.
        target: Wanted cost ratio in (0, 1].
        kind: ``"macs"`` or ``"latency"`` (for messages and the default ``tol``).
        max_ratio: Largest ratio tried.
        tol: Relative tolerance below the target (default: 0.01 for MACs, 0.05 for latency).
        max_iter: Most probes after the first one or two.
        verbose: Log each probe.

    Returns:
        The search summary and the pruned module it describes (the one that was measured).

    Raises:
        ValueError: If even ``max_ratio`` does not meet the target.
    """
    tol = TOLERANCE.get(kind, 0.02) if tol is None else float(tol)
    evaluations: list[tuple[float, float]] = []

    def probe(ratio: float) -> tuple[nn.Module, float, float]:
        module = prune_copy(ratio)
        value = float(cost(module))
        achieved = value / base_cost
        evaluations.append((ratio, achieved))
        if verbose:
            LOGGER.info(f"{PREFIX}target {kind}={target}: ratio {ratio:.4f} keeps {achieved:.1%}")
        return module, value, achieved

    if target >= 1.0:  # nothing to remove: ratio 0 (the unpruned network), its cost measured like any candidate
        module, value, achieved = probe(0.0)
        return TargetSearch(kind, target, 0.0, achieved, base_cost, value, evaluations), module
    aim = target * (1.0 - tol / 2)  # land inside [target * (1 - tol), target]
    lo, hi = (0.0, 1.0), None  # (ratio, achieved) that missed / met the target
    best, missed, moved = None, None, []
    first = min(max(1.0 - math.sqrt(aim), 0.0), max_ratio)
    module, value, achieved = probe(first)
    if achieved <= target:
        hi, best = (first, achieved), (first, module, value, achieved)
    else:
        lo = missed = (first, achieved)
        module, value, achieved = probe(max_ratio)
        if achieved > target:
            raise ValueError(
                f"target_{kind}={target} is out of reach: pruning at ratio {max_ratio} still keeps {achieved:.1%} "
                "(min_channels, frozen layers and the head limit how far this model can shrink)"
            )
        hi, best = (max_ratio, achieved), (max_ratio, module, value, achieved)
    for _ in range(max_iter):
        if target - best[3] <= tol * target or hi[0] - lo[0] < 2e-3:
            break
        if moved[-2:] in (["lo", "lo"], ["hi", "hi"]):  # interpolation stalls on one side: bisect once
            ratio = (lo[0] + hi[0]) / 2
        else:  # cost falls about with the square of the kept width: interpolate sqrt(cost) linearly in the ratio
            span = math.sqrt(lo[1]) - math.sqrt(max(hi[1], 0.0))
            step = (math.sqrt(lo[1]) - math.sqrt(aim)) / span if span > 0 else 0.5
            ratio = lo[0] + min(max(step, 0.05), 0.95) * (hi[0] - lo[0])
        module, value, achieved = probe(ratio)
        if achieved <= target:
            hi, best = (ratio, achieved), (ratio, module, value, achieved)
            moved.append("hi")
        else:
            lo = missed = (ratio, achieved)
            moved.append("lo")
    ratio, module, value, achieved = best
    return TargetSearch(kind, target, ratio, achieved, base_cost, value, evaluations, missed), module
