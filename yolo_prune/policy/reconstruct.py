"""Recovery before training: re-fit what a cut disturbed on calibration images, in stock module shapes.

Removing channels changes what every later layer sees. Fine-tuning can repair it, but only if it starts from a model
that still works; on a real pretrained network a 20 % cut leaves almost nothing to fine-tune from. This module re-fits
the pruned network to the unpruned one layer by layer, on a few hundred training images, with no gradient step:

- ``ls`` (least-squares reconstruction, as in channel pruning by reconstruction and ThiNet; the default): for every
  dense or depthwise conv, the kept weights and an offset are fitted so that, fed the unpruned network's input
  restricted to the channels the cut kept, the conv reproduces what the unpruned conv produced at the same image and
  position (ridge-regularised toward the kept weights). The offset absorbs what the removed input channels contributed
  on average; for a conv followed by BatchNorm it is folded into the BatchNorm's running mean, so module shapes and
  classes stay stock and the checkpoint stays plain. Each conv is fitted on its own, from one pass of the unpruned
  network over the calibration images; a fit is written only where it lowers that conv's error. Convs whose kept
  channels cannot be told (untrained, identical channels) get their BatchNorm statistics re-estimated instead.
- ``seq``: the same fit, conv after conv in the order they run, on the inputs the already re-fitted pruned network
  gives (so later convs also correct earlier errors). Slower, and on the real COCO model it did worse than ``ls``: it
  fits the calibration images' accumulated errors, which do not carry over (benchmarks/RESULTS.md, section B).
- ``bn``: BatchNorm statistics of the whole network re-estimated on the calibration images (adaptive BatchNorm).

The kept channels are recognised, not recorded: pruning copies a kept channel's BatchNorm statistics and weights
verbatim, so they identify it in a trained network.

Over 400 lines: the three re-fit methods (ls, seq, bn) share the calibration loader, the matching of pruned to
unpruned layers and the least-squares solver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config.checks import RECONSTRUCT_METHODS, check_reconstruct  # re-exported: their old home
from ..integration.args import torch_device

__all__ = [
    "RECONSTRUCT_METHODS",
    "calibration_images",
    "check_reconstruct",
    "LayerFit",
    "reconstruct",
    "ReconstructStats",
]

RIDGE = 1e-3  # ridge strength, relative to the mean diagonal of the input Gram matrix
POSITIONS = 64  # output positions sampled per image and conv
UNCHANGED = 1e-10  # relative error below which a conv is left as it is (nothing upstream of it changed)


@dataclass
class LayerFit:
    """One conv's reconstruction: relative squared error of its output before and after the fit.

    Attributes:
        name: The conv's module name.
        error_before: ``||Y_pruned - Y_unpruned||^2 / ||Y_unpruned||^2`` on the calibration samples, before the fit.
        error_after: The same after the fit (equal to ``error_before`` where the fit was not applied).
        applied: Whether the fitted weights were written.
    """

    name: str
    error_before: float
    error_after: float
    applied: bool


@dataclass
class ReconstructStats:
    """What `reconstruct` did (JSON-friendly through `as_dict`)."""

    method: str
    images: int
    layers: list[LayerFit] = field(default_factory=list)
    bn_recalibrated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Summary for ``prune_info`` and reports: counts and mean errors of the last pass."""
        fitted = [f for f in self.layers if f.applied]
        return {
            "method": self.method,
            "images": self.images,
            "layers_fitted": len(fitted),
            "bn_recalibrated": len(self.bn_recalibrated),
            "skipped": self.skipped,
            "mean_error_before": _mean([f.error_before for f in self.layers]),
            "mean_error_after": _mean([f.error_after for f in self.layers]),
        }


def _mean(values: list[float]) -> float | None:
    """Mean of a list, None when empty."""
    return round(sum(values) / len(values), 6) if values else None


def _convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Every ``nn.Conv2d`` by module name."""
    return {n: m for n, m in model.named_modules() if type(m) is nn.Conv2d}


def _bn_after(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    """``{conv name: BatchNorm}`` for convs followed by a BatchNorm in one Ultralytics ``Conv`` (``.conv``, ``.bn``)."""
    pairs = {}
    for name, module in model.named_modules():
        conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
        if type(conv) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d) and conv.out_channels == bn.num_features:
            pairs[f"{name}.conv" if name else "conv"] = bn
    return pairs


def _bn_key(bn: nn.BatchNorm2d) -> torch.Tensor:
    """One row per channel: the BatchNorm's weight, bias, running mean and variance (copied verbatim by pruning)."""
    rows = [bn.running_mean, bn.running_var]
    if bn.affine:
        rows += [bn.weight, bn.bias]
    return torch.stack([r.detach().float().cpu() for r in rows], dim=1)


def _kept_outputs(conv: nn.Conv2d, ref: nn.Conv2d, bn: nn.BatchNorm2d | None, ref_bn: nn.BatchNorm2d | None):
    """Indices of the unpruned conv's outputs that the pruned conv kept, or None when they cannot be told.

    Pruning copies kept channels verbatim, so a BatchNorm channel's (mean, var, weight, bias) identifies it in a trained
    network; a conv without BatchNorm is matched only when it kept all its outputs (the head's fixed-width convs).
    """
    if conv.out_channels == ref.out_channels and (bn is None or torch.equal(_bn_key(bn), _bn_key(ref_bn))):
        return torch.arange(ref.out_channels)
    if bn is None or ref_bn is None:
        return None
    return _match_rows(_bn_key(bn), _bn_key(ref_bn))


def _match_rows(rows: torch.Tensor, ref_rows: torch.Tensor) -> torch.Tensor | None:
    """For each row of ``rows`` the index of the identical row of ``ref_rows``; None if one is missing or ambiguous."""
    first: dict[tuple, int] = {}
    repeated = set()
    for i, row in enumerate(map(tuple, ref_rows.tolist())):
        if row in first:
            repeated.add(row)
        first.setdefault(row, i)
    kept = []
    for row in map(tuple, rows.tolist()):
        if row not in first or row in repeated:
            return None  # untrained (identical) channels, or values changed since pruning: ambiguous
        kept.append(first[row])
    return torch.tensor(kept)


def _kept_inputs(conv: nn.Conv2d, ref: nn.Conv2d, kept_out: torch.Tensor) -> torch.Tensor | None:
    """Indices of the unpruned conv's inputs that the pruned conv kept (its weight columns are copied verbatim)."""
    if conv.groups > 1:  # depthwise: input channel i feeds output channel i
        return kept_out
    if conv.in_channels == ref.in_channels:
        return torch.arange(ref.in_channels)
    own = conv.weight.detach().float().cpu().transpose(0, 1).flatten(1)  # (in', out' * k)
    full = ref.weight.detach().float().cpu()[kept_out].transpose(0, 1).flatten(1)  # (in, out' * k)
    return _match_rows(own, full)


def _patches(
    x: torch.Tensor, conv: nn.Conv2d, idx: torch.Tensor, width: int, channels: torch.Tensor | None = None
) -> torch.Tensor:
    """The input patches of ``conv`` at the flat output positions ``idx`` (output ``width``), ordered like
    ``F.unfold`` and the conv's weight: (batch, in_channels * kh * kw, positions), zero outside the image (padding).
    Only the sampled windows are read; ``channels`` selects input channels after that."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    height, wide = x.shape[-2:]
    oy, ox = idx // width, idx % width
    rows = (oy * sh - ph)[:, None, None] + (torch.arange(kh, device=x.device) * dh)[None, :, None]  # (P, kh, 1)
    cols = (ox * sw - pw)[:, None, None] + (torch.arange(kw, device=x.device) * dw)[None, None, :]  # (P, 1, kw)
    inside = ((rows >= 0) & (rows < height)) & ((cols >= 0) & (cols < wide))  # (P, kh, kw)
    windows = x[:, :, rows.clamp(0, height - 1), cols.clamp(0, wide - 1)]  # (B, C, P, kh, kw)
    if channels is not None:
        windows = windows[:, channels]
    windows = windows * inside
    b, c, p = windows.shape[:3]
    return windows.permute(0, 1, 3, 4, 2).reshape(b, c * kh * kw, p)


class _Fit:
    """Least-squares sums for one conv: ``[X, 1]^T [X, 1]``, ``[X, 1]^T Y`` and ``||Y||^2`` (float64), where ``Y`` is
    the unpruned conv's output (kept channels) at sampled positions and ``X`` the conv's input there: the unpruned
    input's kept channels (``ls``) or the re-fitted pruned network's input (``seq``)."""

    def __init__(self, name: str, conv: nn.Conv2d, kept_out: torch.Tensor, bn: nn.BatchNorm2d | None, seed: int = 0):
        self.name, self.conv, self.kept_out, self.bn = name, conv, kept_out, bn
        self.depthwise = conv.groups > 1
        k = conv.kernel_size[0] * conv.kernel_size[1]
        groups = conv.out_channels if self.depthwise else 1
        dim = (k if self.depthwise else conv.in_channels * k) + 1
        outs = 1 if self.depthwise else conv.out_channels
        self.gram = torch.zeros(groups, dim, dim, dtype=torch.float64)
        self.cross = torch.zeros(groups, dim, outs, dtype=torch.float64)
        self.energy = 0.0
        self.samples = 0
        self.targets: dict[int, tuple] = {}  # batch -> (sampled output positions, output width, Y there)
        self.generator = torch.Generator().manual_seed(seed)

    def target(self, batch: int, y: torch.Tensor) -> None:
        """Keep the unpruned conv's output ``y`` of calibration batch ``batch`` at a random sample of positions."""
        h, w = y.shape[-2:]
        idx = torch.randperm(h * w, generator=self.generator)[: min(POSITIONS, h * w)].to(y.device)
        self.targets[batch] = (idx, w, y.flatten(2)[:, :, idx][:, self.kept_out.to(y.device)].float())

    def add(self, batch: int, x: torch.Tensor, channels: torch.Tensor | None = None) -> None:
        """Accumulate the conv input ``x`` of calibration batch ``batch`` (its ``channels`` only, if given) against
        the kept target."""
        c = self.conv
        idx, width, target = self.targets.pop(batch)
        channels = None if channels is None else channels.to(x.device)
        patches = _patches(x, c, idx.to(x.device), width, channels).float()  # (B, in*k, P)
        b, _, p = patches.shape
        ones = torch.ones(b, 1, p, device=patches.device)
        # products of one batch in float32 (fast), sums over batches in float64
        if self.depthwise:
            k = c.kernel_size[0] * c.kernel_size[1]
            a = torch.cat([patches.view(b, c.out_channels, k, p), ones.unsqueeze(1).expand(b, c.out_channels, 1, p)], 2)
            self.gram += torch.einsum("bgip,bgjp->gij", a, a).double().cpu()
            self.cross += torch.einsum("bgip,bgp->gi", a, target).unsqueeze(-1).double().cpu()
        else:
            a = torch.cat([patches, ones], 1).transpose(1, 2).reshape(-1, patches.shape[1] + 1)  # (B*P, d+1)
            t = target.transpose(1, 2).reshape(-1, target.shape[1])  # (B*P, out)
            self.gram[0] += (a.T @ a).double().cpu()
            self.cross[0] += (a.T @ t).double().cpu()
        self.energy += float(target.double().pow(2).sum())
        self.samples += b * p

    def current(self) -> torch.Tensor:
        """The conv's weights and output offset as the least-squares unknowns, shape (groups, d+1, outs)."""
        c = self.conv
        w = c.weight.detach().double().cpu()
        bias = (
            c.bias.detach().double().cpu() if c.bias is not None else torch.zeros(c.out_channels, dtype=torch.float64)
        )
        if self.depthwise:
            return torch.cat([w.view(c.out_channels, -1), bias.view(-1, 1)], 1).unsqueeze(-1)
        return torch.cat([w.view(c.out_channels, -1), bias.view(-1, 1)], 1).T.unsqueeze(0)

    def error(self, theta: torch.Tensor) -> float:
        """Relative squared error of ``theta`` on the accumulated samples."""
        quad = torch.einsum("gio,gij,gjo->", theta, self.gram, theta)
        lin = torch.einsum("gio,gio->", theta, self.cross)
        return max(0.0, float(quad - 2 * lin + self.energy)) / max(self.energy, 1e-12)

    def solve(self, ridge: float) -> LayerFit:
        """Fit, write the weights where the error falls (the offset into the bias or the BatchNorm mean), return it."""
        if self.samples == 0:  # not run in eval mode (a training-only branch)
            return LayerFit(self.name, 0.0, 0.0, False)
        theta0 = self.current()
        before = self.error(theta0)
        diag = self.gram.diagonal(dim1=1, dim2=2)
        lam = ridge * diag.mean(dim=1).clamp_min(1e-12)  # per group
        eye = torch.eye(self.gram.shape[-1], dtype=torch.float64)
        system = self.gram + lam.view(-1, 1, 1) * eye
        rhs = self.cross + lam.view(-1, 1, 1) * theta0
        theta = torch.linalg.solve(system, rhs)
        after = self.error(theta)
        if not math.isfinite(after) or after >= before or before < UNCHANGED:
            return LayerFit(self.name, before, before, False)
        c = self.conv
        if self.depthwise:
            weight, offset = theta[:, :-1, 0], theta[:, -1, 0]
        else:
            weight, offset = theta[0, :-1].T, theta[0, -1]
        with torch.no_grad():
            c.weight.copy_(weight.reshape(c.weight.shape).to(c.weight))
            if c.bias is not None:
                c.bias.copy_(offset.to(c.bias))
            else:  # BN((y + b)) == BN'(y) with running_mean' = running_mean - b
                self.bn.running_mean.sub_(offset.to(self.bn.running_mean))
        return LayerFit(self.name, before, after, True)


def calibration_images(
    model: nn.Module, data: str, images: int = 256, batch: int = 16, imgsz: int = 640, device: Any = None
) -> list[torch.Tensor]:
    """The first ``images`` images of the training split of ``data`` as float batches on ``device``, for `reconstruct`.

    Letterboxed, no augmentation, in order; the labels are read as ``model``'s task reads them (a dataset of its task,
    or images without labels). Load them once to reconstruct many pruned copies of one model (the sensitivity scan).
    """
    from .importance import _calibration_batches

    dev = torch_device(device, next(model.parameters()).device)
    return [item["img"] for item in _calibration_batches(model, data, math.ceil(images / batch), batch, imgsz, dev)]


def _recalibrate_bn(model: nn.Module, bns: list[nn.BatchNorm2d], batches: list[torch.Tensor]) -> None:
    """Re-estimate the running statistics of ``bns`` (cumulative average over ``batches``); nothing else changes."""
    saved = {bn: bn.momentum for bn in bns}
    try:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average
            bn.train()
        with torch.no_grad():
            for img in batches:
                model(img)
    finally:
        for bn, momentum in saved.items():
            bn.momentum = momentum
            bn.eval()


def reconstruct(
    pruned: nn.Module,
    reference: nn.Module,
    data: str | list[torch.Tensor],
    method: str = "ls",
    images: int = 256,
    batch: int = 16,
    imgsz: int = 640,
    device: str | torch.device | None = None,
    ridge: float = RIDGE,
    seed: int = 0,
) -> ReconstructStats:
    """Re-fit a pruned network to its unpruned reference on calibration images, in place (see the module docstring).

    Args:
        pruned: The pruned ``DetectionModel`` (or segment/pose/obb model); changed in place, shapes unchanged.
        reference: The unpruned model it was pruned from (same module names); left unchanged.
        data: Dataset yaml or built-in name; its ``train`` split gives the calibration images. Or the image batches
            themselves, as `calibration_images` returns them (``images``, ``batch`` and ``imgsz`` are then unused).
        method: ``ls`` (least-squares reconstruction of every conv, BatchNorm re-estimation where a conv cannot be
            matched), ``seq`` (the same, conv after conv on the re-fitted pruned network's inputs) or ``bn``
            (re-estimate every BatchNorm's statistics).
        images: Calibration images.
        batch: Images per forward.
        imgsz: Image size.
        device: Where to run (default: where the pruned model is); both models are moved back afterwards.
        ridge: Ridge strength toward the kept weights, relative to the mean input energy.
        seed: Seed of the sampled output positions.

    Returns:
        A `ReconstructStats` with each fitted conv's error before and after.

    Raises:
        ValueError: On an unknown ``method`` or a dataset without training images.

    Examples:
        >>> from yolo_prune import load_yolo, prune
        >>> base = load_yolo("best.pt")
        >>> pruned = prune(base, ratio=0.2)
        >>> stats = reconstruct(pruned.model, base.model, "data.yaml", imgsz=640)
        >>> stats.as_dict()["mean_error_after"] < stats.as_dict()["mean_error_before"]
    """
    method = check_reconstruct(method)
    if method is None:
        raise ValueError(f"reconstruct() needs a method: {', '.join(RECONSTRUCT_METHODS)}")
    home_p, home_r = next(pruned.parameters()).device, next(reference.parameters()).device
    dev = torch_device(device, home_p)
    modes = (pruned.training, reference.training)
    stats = ReconstructStats(method=method, images=0)
    try:
        pruned.to(dev).eval()
        reference.to(dev).eval()
        if isinstance(data, (list, tuple)):
            calib = [x.to(dev) for x in data]
        else:
            calib = calibration_images(pruned, data, images, batch, imgsz, dev)
        if not calib:
            raise ValueError(f"no training images found in '{data}' to reconstruct from")
        stats.images = sum(int(x.shape[0]) for x in calib)
        if method == "bn":
            bns = [m for m in pruned.modules() if isinstance(m, nn.BatchNorm2d)]
            _recalibrate_bn(pruned, bns, calib)
            stats.bn_recalibrated = [n for n, m in pruned.named_modules() if isinstance(m, nn.BatchNorm2d)]
            return stats
        convs, refs = _convs(pruned), _convs(reference)
        bns, ref_bns = _bn_after(pruned), _bn_after(reference)
        fits: dict[str, _Fit] = {}
        unmatched: list[str] = []
        for name, conv in convs.items():
            ref = refs.get(name)
            if ref is None or (method == "ls" and conv.weight.shape == ref.weight.shape):
                continue  # ls fits a conv on the unpruned input: one the cut did not touch has nothing to fit
            depthwise = conv.groups == conv.in_channels == conv.out_channels and ref.groups == ref.in_channels
            kept = _kept_outputs(conv, ref, bns.get(name), ref_bns.get(name))
            if kept is None or not (conv.groups == 1 or depthwise) or (conv.bias is None and name not in bns):
                unmatched.append(name)
                continue
            fits[name] = _Fit(name, conv, kept, bns.get(name), seed)
        if method == "ls":  # each conv alone, on the unpruned network's input restricted to the kept channels
            kept_in = {n: _kept_inputs(f.conv, refs[n], f.kept_out) for n, f in fits.items()}
            for n in [n for n, k in kept_in.items() if k is None]:
                unmatched.append(n)
                fits.pop(n)
            if fits:
                _targets(reference, refs, fits, calib, kept_in)
            stats.layers = [fit.solve(ridge) for fit in fits.values()]
        else:  # seq: one conv after the other, on the inputs the already fitted pruned network gives
            order = _targets(reference, refs, fits, calib)
            stats.layers = _fit_in_order(pruned, [fits[n] for n in order], calib, ridge)
        # convs whose channels could not be matched: re-estimate the statistics of their BatchNorm instead
        stats.bn_recalibrated = [n for n in unmatched if n in bns]
        stats.skipped = [n for n in unmatched if n not in bns]
        if stats.bn_recalibrated:
            _recalibrate_bn(pruned, [bns[n] for n in stats.bn_recalibrated], calib)
        return stats
    finally:
        pruned.to(home_p).train(modes[0])
        reference.to(home_r).train(modes[1])


def _targets(
    reference: nn.Module,
    refs: dict[str, nn.Conv2d],
    fits: dict[str, _Fit],
    calib: list,
    kept_in: dict[str, torch.Tensor] | None = None,
) -> list[str]:
    """Run the calibration batches through the unpruned network, keep each fitted conv's sampled outputs, and return
    the fitted convs' names in the order they run. With ``kept_in``, also add each conv's unpruned input restricted to
    its kept channels to its fit (the ``ls`` method)."""
    names = {refs[n]: n for n in fits}
    order: list[str] = []
    current = {"batch": 0}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        name = names[module]
        if current["batch"] == 0:
            order.append(name)
        fits[name].target(current["batch"], output.detach())
        if kept_in is not None:
            fits[name].add(current["batch"], inputs[0].detach(), kept_in[name])

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad():
            for current["batch"], img in enumerate(calib):
                reference(img)
    finally:
        for h in handles:
            h.remove()
    return order


class _Stop(Exception):
    """Raised by a hook to end a forward once the conv being fitted has its input."""


def _layer_input(module: nn.Module, x: Any, saved: list) -> Any:
    """The input of a top-level layer of an Ultralytics model, as its ``_predict_once`` routes it (``module.f``)."""
    if module.f == -1:
        return x
    return saved[module.f] if isinstance(module.f, int) else [x if j == -1 else saved[j] for j in module.f]


def _fit_in_order(pruned: nn.Module, order: list[_Fit], calib: list[torch.Tensor], ridge: float) -> list[LayerFit]:
    """Fit the convs one at a time in the order they run, each on the inputs its already fitted predecessors give.

    The network is walked layer by layer (``pruned.model``), keeping each calibration batch's routed outputs, so
    fitting a conv re-runs only its own layer, up to that conv.
    """
    stage = {fit: int(fit.name.split(".")[1]) for fit in order}  # "model.<i>.<...>"
    states: list[tuple[Any, list]] = [(img, []) for img in calib]  # per batch: last output, routed outputs
    done: list[LayerFit] = []
    with torch.no_grad():
        for i, layer in enumerate(pruned.model):
            for fit in (f for f in order if stage[f] == i):
                current = {"batch": 0}

                def hook(
                    _module: nn.Module, inputs: tuple, _output: Any, fit: _Fit = fit, current: dict = current
                ) -> None:
                    fit.add(current["batch"], inputs[0])
                    raise _Stop

                handle = fit.conv.register_forward_hook(hook)
                try:
                    for current["batch"], (x, saved) in enumerate(states):
                        try:
                            layer(_layer_input(layer, x, saved))
                        except _Stop:
                            pass
                finally:
                    handle.remove()
                done.append(fit.solve(ridge))
            for b, (x, saved) in enumerate(states):
                out = layer(_layer_input(layer, x, saved))
                saved.append(out if layer.i in pruned.save else None)
                states[b] = (out, saved)
    return done
