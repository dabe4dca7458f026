"""How much each layer gives: per-layer pruning ratios that meet a cost target with the least predicted accuracy loss.

The allocator works on *layer curves*: for each top-level layer (a *stage*, ``model.model[i]``), the accuracy lost and
the fraction of the model's cost saved when that layer alone is pruned at a few ratios. `curves_from_sensitivity`
reads them from a sensitivity scan (``yolo_prune.policy.sensitivity.run_sensitivity``; cost = MACs). The cost could
equally be measured latency per layer: the allocator only sees numbers.

Allocation is a multiple-choice knapsack (one ratio per layer, costs and losses from the curves). It is solved with a
Lagrangian trade-off: for a price ``t`` (accuracy lost per unit of cost saved) every layer independently takes the
ratio minimising ``loss(r) - t * saving(r)``; raising ``t`` prunes more where it is cheap in accuracy. The curves are
only a model (per-layer effects do not add up exactly), so the price is searched against the *measured* cost of the
pruned network: bisection on ``log t`` until the real cost is at most the target and within a tolerance of it.

Examples:
    >>> from yolo_prune.policy.allocate import curves_from_sensitivity
    >>> curves = curves_from_sensitivity("runs/sensitivity/exp/sensitivity.json")
    >>> from yolo_prune import prune
    >>> pruned = prune("best.pt", target_macs=0.5, sensitivity="runs/sensitivity/exp")  # uses `allocate`
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ultralytics.utils import LOGGER, colorstr

__all__ = [
    "Allocation",
    "LayerCurve",
    "allocate",
    "cheapest_move",
    "choose_ratios",
    "curves_from_sensitivity",
    "read_sensitivity",
]

PREFIX = colorstr("yolo-prune: ")
GRID_STEP = 0.05  # candidate ratios per layer: 0, 0.05, ... up to the largest scanned ratio
START_MARGIN = 0.05  # the single-move walk starts within this (relative) above the target when it can
SPREAD = 1e-3  # loss added per layer as SPREAD * ratio**2: splits ties between equally harmless layers evenly


@dataclass
class LayerCurve:
    """Measured effect of pruning one layer alone.

    Attributes:
        stage: Index of the layer in ``model.model``.
        ratios: Ratios measured, ascending, starting with 0.
        losses: Accuracy lost at each ratio (never negative, never falling as the ratio grows).
        savings: Fraction of the whole model's cost removed at each ratio.
    """

    stage: int
    ratios: list[float]
    losses: list[float]
    savings: list[float]

    def at(self, ratio: float) -> tuple[float, float]:
        """Return ``(loss, saving)`` at ``ratio``, linearly interpolated between measured ratios."""
        xs = self.ratios
        if ratio <= xs[0]:
            return self.losses[0], self.savings[0]
        for k in range(1, len(xs)):
            if ratio <= xs[k]:
                w = (ratio - xs[k - 1]) / (xs[k] - xs[k - 1])
                return (
                    self.losses[k - 1] + w * (self.losses[k] - self.losses[k - 1]),
                    self.savings[k - 1] + w * (self.savings[k] - self.savings[k - 1]),
                )
        return self.losses[-1], self.savings[-1]


@dataclass
class Allocation:
    """Outcome of `allocate`.

    Attributes:
        ratios: ``{stage: ratio}`` for ``prune(..., layer_ratios=...)`` (stages at ratio 0 are left out).
        target: Wanted cost, relative to the unpruned model.
        achieved: Measured relative cost of the chosen allocation (at most ``target``).
        predicted_loss: Sum of the curves' losses at the chosen ratios (an estimate, before fine-tuning).
        tradeoff: The price (loss per unit of cost saved) that produced it (None when single moves after the price
            search produced it).
        probes: Every ``(tradeoff, achieved)`` tried, in order.
    """

    ratios: dict[int, float]
    target: float
    achieved: float
    predicted_loss: float
    tradeoff: float | None
    probes: list[tuple[float, float]] = field(default_factory=list)

    def as_dict(self) -> dict:
        """Return a JSON-ready dict (string keys) for reports and ``prune_info``."""
        out = asdict(self)
        out["ratios"] = {str(k): v for k, v in self.ratios.items()}
        out["probes"] = [list(p) for p in self.probes]
        return out


def read_sensitivity(results: dict | str | Path) -> dict:
    """Return sensitivity results given as a dict, a ``sensitivity.json`` file or the run folder holding one.

    Raises:
        ValueError: If the file cannot be read or does not hold sensitivity results.
    """
    if isinstance(results, dict):
        data = results
    else:
        path = Path(results)
        path = path / "sensitivity.json" if path.is_dir() else path
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read sensitivity results from '{path}': {e}") from None
    if not isinstance(data, dict) or "stages" not in data or "baseline" not in data:
        raise ValueError("sensitivity results must hold 'baseline' and 'stages' (from yolo-prune sensitivity)")
    return data


def curves_from_sensitivity(results: dict | str | Path, metric: str = "map50_95") -> list[LayerCurve]:
    """Turn sensitivity results into one `LayerCurve` per prunable layer (cost = MACs).

    A measured drop below zero (pruning a layer alone can score a hair better) counts as no loss, and the loss is
    made non-decreasing in the ratio (the largest drop seen at or below each ratio), so that noise in one point
    cannot make a larger cut look cheaper than a smaller one.

    Args:
        results: The dict written to ``sensitivity.json``, the file, or its run folder.
        metric: ``map50_95`` or ``map50``.

    Returns:
        The curves, ordered by stage.

    Raises:
        ValueError: If the results cannot be read or lack ``metric``.
    """
    data = read_sensitivity(results)
    try:
        base = float(data["baseline"][metric])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"sensitivity results have no baseline '{metric}'") from None
    curves = []
    for row in data["stages"]:
        if not row.get("prunable"):
            continue
        ratios, losses, savings = [0.0], [0.0], [0.0]
        for point in sorted(row["results"], key=lambda r: r["ratio"]):
            drop = base - float(point.get(metric, math.nan))
            drop = drop if math.isfinite(drop) else 1.0  # a model that could not be scored is as bad as it gets
            ratios.append(float(point["ratio"]))
            losses.append(max(losses[-1], drop, 0.0))
            savings.append(max(savings[-1], 1.0 - float(point.get("macs_kept", 1.0))))
        curves.append(LayerCurve(int(row["stage"]), ratios, losses, savings))
    return sorted(curves, key=lambda c: c.stage)


def _grid(curve: LayerCurve) -> list[float]:
    """Candidate ratios of one layer: multiples of `GRID_STEP` up to its largest measured ratio (no extrapolation)."""
    top = curve.ratios[-1]
    return [round(k * GRID_STEP, 6) for k in range(int(top / GRID_STEP + 1e-9) + 1)]


def choose_ratios(curves: Sequence[LayerCurve], tradeoff: float) -> tuple[dict[int, float], float]:
    """Give each layer the ratio minimising ``loss(r) + SPREAD * r**2 - tradeoff * saving(r)``.

    Args:
        curves: Layer curves.
        tradeoff: Price of one unit of relative cost, in units of loss (>= 0).

    Returns:
        ``({stage: ratio} for ratios > 0, predicted loss summed over layers)``.
    """
    ratios, predicted = {}, 0.0
    for curve in curves:
        best = min(_grid(curve), key=lambda r: (curve.at(r)[0] + SPREAD * r * r - tradeoff * curve.at(r)[1], r))
        if best > 0:
            ratios[curve.stage] = best
        predicted += curve.at(best)[0]
    return ratios, predicted


def cheapest_move(curves: Sequence[LayerCurve], ratios: dict[int, float], need: float) -> tuple[int, float] | None:
    """Return the next ``(stage, larger ratio)`` toward saving ``need`` more of the cost at the least predicted loss.

    Two kinds of move compete: the one with the least loss per unit of useful saving (at most ``need`` counts; any
    larger grid ratio of a layer, not only the next: with a loss curve that jumps and then stays flat, two steps at
    once is the efficient move), and
    the one with the least loss among those that alone save ``need``. The finishing move wins when its loss is no more
    than reaching ``need`` at the best efficiency would cost. None when no layer can give more.
    """
    efficient, finishing = None, None  # (key, move)
    for curve in curves:
        now = ratios.get(curve.stage, 0.0)
        loss0, save0 = curve.at(now)
        for r in _grid(curve):
            if r <= now + 1e-9:
                continue
            loss, save = curve.at(r)
            gained = save - save0
            if gained <= 1e-12:
                continue
            added = loss - loss0 + SPREAD * (r * r - now * now)
            useful = min(gained, need) if need > 0 else gained  # saving beyond the need buys nothing
            if efficient is None or (added / useful, r - now) < efficient[0]:
                efficient = ((added / useful, r - now), (curve.stage, r))
            if gained >= need and (finishing is None or (added, r - now) < finishing[0]):
                finishing = ((added, r - now), (curve.stage, r))
    if finishing is not None and (efficient is None or finishing[0][0] <= efficient[0][0] * need):
        return finishing[1]
    return None if efficient is None else efficient[1]


def allocate(
    curves: Sequence[LayerCurve],
    measure: Callable[[dict[int, float]], float],
    target: float,
    tol: float = 0.02,
    max_probes: int = 24,
    max_moves: int = 60,
    verbose: bool = True,
) -> Allocation:
    """Find per-layer ratios whose measured relative cost is at most ``target``, with the least predicted loss.

    First a bisection on the trade-off price (`choose_ratios`), which only reaches allocations on the convex hull of
    the curves: where a layer's loss jumps (a cut that is harmless at 0.3 and ruinous at 0.5), one price step can take
    the cost from well above the target to well below it. Then, from the cheapest allocation still above the target,
    single moves (`cheapest_move`) are added until the measured cost meets the target. The feasible allocation with the
    least predicted loss wins.

    Args:
        curves: Layer curves (`curves_from_sensitivity`).
        measure: ``{stage: ratio} -> relative cost`` of the network pruned with those layer ratios (a pruned copy;
            the caller's model is not changed). Called once per distinct allocation.
        target: Wanted relative cost in (0, 1].
        tol: Stop the bisection once the measured cost is within ``tol`` (relative) below the target.
        max_probes: Most trade-off prices tried.
        max_moves: Most single moves added after the bisection.
        verbose: Log each measured allocation.

    Returns:
        The `Allocation` that met the target with the least predicted loss.

    Raises:
        ValueError: If no curve is given, or even the largest measured ratios in every layer miss the target.
    """
    if not curves:
        raise ValueError("no prunable layer in the sensitivity results: nothing to allocate")
    seen: dict[tuple, float] = {}
    probes: list[tuple[float, float]] = []

    def predicted_loss(ratios: dict[int, float]) -> float:
        return sum(c.at(ratios.get(c.stage, 0.0))[0] for c in curves)

    def cost(ratios: dict[int, float], how: str) -> float:
        key = tuple(sorted(ratios.items()))
        if key not in seen:
            seen[key] = float(measure(ratios))
            if verbose:
                LOGGER.info(
                    f"{PREFIX}allocation ({how}): keeps {seen[key]:.1%} of the cost (target {target:.1%}), "
                    f"predicted loss {predicted_loss(ratios):.4f}"
                )
        return seen[key]

    def probe(tradeoff: float) -> tuple[dict[int, float], float, float]:
        ratios, predicted = choose_ratios(curves, tradeoff)
        found = cost(ratios, f"trade-off {tradeoff:.3g}")
        probes.append((tradeoff, found))
        return ratios, predicted, found

    low, high = 1e-5, 1e3  # trade-offs: hardly any pruning ... every layer at its largest measured ratio
    top = probe(high)
    if top[2] > target:
        largest = max(c.ratios[-1] for c in curves)
        raise ValueError(
            f"target {target:.3g} is out of reach: every layer at its largest measured ratio (up to {largest:g}) "
            f"still keeps {top[2]:.1%}; scan larger ratios (scan_ratios= of yolo-prune prune, ratios= of "
            "run_sensitivity) or set a smaller cut"
        )
    best_t, best = high, top
    over = bottom = probe(low)
    above = [bottom]  # every probed allocation that kept more than the target
    if bottom[2] <= target:
        return Allocation(bottom[0], target, bottom[2], bottom[1], low, probes)
    for _ in range(max_probes - 2):
        if target - best[2] <= tol * target:
            break
        mid = math.sqrt(low * high)
        found = probe(mid)
        if found[2] <= target:
            high, best_t, best = mid, mid, found
        else:
            low, over = mid, found
            above.append(found)
        if high / low < 1.0 + 1e-4:
            break
    if target - best[2] > tol * target:  # a gap in the hull: walk from the allocation just above the target
        # Start from the allocation above the target with the least predicted loss among those close to it: with
        # coarse channel rounding, the last bisection steps can add predicted loss without changing the cost.
        near = [a for a in above if a[2] <= target * (1.0 + START_MARGIN)]
        start = min(near, key=lambda a: a[1]) if near else over
        ratios, now = dict(start[0]), start[2]
        for _ in range(max_moves):
            move = cheapest_move(curves, ratios, now - target)
            if move is None:
                break
            ratios[move[0]] = move[1]
            now = cost(ratios, f"layer {move[0]} to {move[1]:g}")
            if now <= target:
                predicted = predicted_loss(ratios)
                if predicted < best[1] or (predicted == best[1] and seen[tuple(sorted(ratios.items()))] > best[2]):
                    best_t, best = None, (ratios, predicted, seen[tuple(sorted(ratios.items()))])
                break
    return Allocation(best[0], target, best[2], best[1], best_t, probes)
