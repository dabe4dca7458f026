"""Model rules: how each Ultralytics block is traced, what must not be pruned, and what to repair afterwards.

torch-pruning's dependency graph follows autograd. Several Ultralytics blocks trip it up: a ``chunk``/``split`` of
one conv whose halves feed both a concat and the next block (C2f, C3k2, ELAN) raises ``IndexError``, and the
``view``/``split`` inside attention never finishes building index maps. So, while the graph is traced, each such
block gets a *tracing forward* that has the same channel coupling as its real forward but only uses ops the graph
understands. After pruning the block is put back, made only of stock classes, with its width attributes repaired.

Decisions written down:

* C2f-like blocks (C2, C2f, C3k2, C2fCIB, C2fPSA, RepNCSPELAN4, ELAN1, C2PSA, PSA) chunk ``cv1`` into two equal halves.
  For tracing, ``cv1`` is sliced into two temporary convs; the two halves are pruned by the same count (they are
  *twins*), then concatenated back into the stock ``cv1`` and ``c`` is updated.
* Attention (``Attention`` in PSA/C2PSA/C3k2(attn), ``AAttn`` in A2C2f) loses whole heads by default
  (``attention="heads"``); ``attention="keep"`` leaves it intact as before. The two channel spaces of an attention
  module are handled apart (layouts in ``yolo_prune.rules.attention``):

  - the *stream* (``qkv``'s input, ``proj``'s output, and the residual around the block) is pruned by the dependency
    graph like any other channel group. The tracing forward is ``proj(bridge(qkv(x)))`` with a temporary 1x1
    ``bridge`` conv, so the graph couples ``qkv``'s input and ``proj``'s output with the stream; ``qkv``'s output and
    the bridge are frozen, so the graph never touches the head-laid-out channels.
  - the *heads* (``qkv``'s output rows, the depthwise ``pe``, ``proj``'s input columns) are removed whole by a
    separate pass after the graph has pruned (``yolo_prune.prune``): each module keeps ``ceil(num_heads * (1 -
    r))`` heads, at least one, where ``r`` is the ratio of its top-level layer (``layer_ratios`` and the
    sensitivity allocation apply to heads too; the global ratio under ``global_pruning``). Heads are ranked by the
    L2 norm of the weights they own (``qkv`` rows + ``proj`` input columns), whatever the channel criterion: a
    head is too coarse a unit for gradient or BN scores to add much. ``num_heads`` (and ``AAttn.all_head_dim``)
    are set; ``head_dim``, ``key_dim`` and ``scale`` stay (checked).
  - ``Attention`` reshapes its values with the *input* width (``.view(B, C, H, W)``), so there the stream must keep
    exactly ``heads kept * head_dim`` channels: that width is forced on the stream's group (twins included); if
    the stream cannot be pruned (a frozen group), the heads stay. ``AAttn`` stores ``all_head_dim``, so its stream
    and heads are pruned independently. Pruning the stream is needed for the gain: YOLO12n at ratio 0.5 lost 56 %
    of its MACs with attention kept, and at least 65 % with it pruned.
* Heads (Detect, v10Detect, Segment, Pose, OBB and their YOLO26 variants) have their own rules in
  ``yolo_prune.rules.tasks`` (``HEAD_RULES``): hidden convs pruned, the last conv of every output branch frozen. DFL is
  never traced.
* ADown chunks its input into two equal halves; the channels feeding it keep their width.
* CBLinear/CBFuse (YOLOv9e) add fixed-size slices of one conv onto other branches; those widths are kept.
* GhostConv concatenates its primary conv ``cv1`` (``c2 / 2`` outputs) with a depthwise ``cv2`` on it, so channel
  ``i`` of ``cv1`` feeds outputs ``i`` and ``c2 / 2 + i``. A group rooted elsewhere (the residual stream of C3Ghost)
  sees both as separate root channels; the pruner removes such *tied* root channels together (see
  ``yolo_prune.prune``), so no conv is left with fewer outputs than its consumers expect.
* Grouped convs that are not depthwise are frozen (none appear in the stock detection yamls).

A new block means one new entry in ``BLOCK_RULES``; a new head, one entry in ``yolo_prune.rules.tasks.HEADS``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from ultralytics.nn.modules import (
    C1,
    C2,
    C2PSA,
    C3,
    C3TR,
    CIB,
    DFL,
    ELAN1,
    PSA,
    SPP,
    SPPELAN,
    SPPF,
    A2C2f,
    AConv,
    ADown,
    Attention,
    Bottleneck,
    C2f,
    C2fCIB,
    C2fPSA,
    C3Ghost,
    C3k2,
    C3x,
    CBFuse,
    CBLinear,
    Concat,
    Conv,
    ConvTranspose,
    DWConv,
    GhostBottleneck,
    GhostConv,
    RepC3,
    RepConv,
    RepNCSPELAN4,
    RepVGGDW,
    SCDown,
)
from ultralytics.nn.modules.block import AAttn, ABlock, C3k, PSABlock

from ..config.checks import check_attention
from .plan import TracingPlan
from .tasks import HEAD_RULES, check_head

__all__ = ["BLOCK_RULES", "SUPPORTED_LAYERS", "TracingPlan", "check_supported", "prepare_for_tracing"]


# --------------------------------------------------------------------------------------------------------------------
# Conv surgery for chunked blocks


def _slice_conv(conv: Conv, start: int, stop: int) -> Conv:
    """Return a copy of a stock ``Conv`` that keeps output channels ``start:stop``."""
    part = Conv.__new__(Conv)
    nn.Module.__init__(part)
    part.act = conv.act
    part.conv = nn.Conv2d(
        conv.conv.in_channels,
        stop - start,
        conv.conv.kernel_size,
        conv.conv.stride,
        conv.conv.padding,
        conv.conv.dilation,
        conv.conv.groups,
        bias=conv.conv.bias is not None,
    ).to(conv.conv.weight)
    with torch.no_grad():
        part.conv.weight.copy_(conv.conv.weight[start:stop])
        if conv.conv.bias is not None:
            part.conv.bias.copy_(conv.conv.bias[start:stop])
    bn = getattr(conv, "bn", None)
    if isinstance(bn, nn.BatchNorm2d):
        part.bn = nn.BatchNorm2d(stop - start, bn.eps, bn.momentum, bn.affine, bn.track_running_stats).to(
            conv.conv.weight
        )
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(part.bn, name).copy_(getattr(bn, name)[start:stop])
            part.bn.num_batches_tracked.copy_(bn.num_batches_tracked)
    elif bn is not None:
        part.bn = bn
    part.train(conv.training)
    return part


def _concat_convs(first: Conv, second: Conv) -> Conv:
    """Join two convs with the same input into one stock ``Conv`` whose outputs are ``first`` then ``second``."""
    with torch.no_grad():
        first.conv.weight = nn.Parameter(torch.cat([first.conv.weight, second.conv.weight]))
        if first.conv.bias is not None:
            first.conv.bias = nn.Parameter(torch.cat([first.conv.bias, second.conv.bias]))
        first.conv.out_channels = first.conv.weight.shape[0]
        if isinstance(getattr(first, "bn", None), nn.BatchNorm2d):
            bn, other = first.bn, second.bn
            bn.weight = nn.Parameter(torch.cat([bn.weight, other.weight]))
            bn.bias = nn.Parameter(torch.cat([bn.bias, other.bias]))
            bn.running_mean = torch.cat([bn.running_mean, other.running_mean])
            bn.running_var = torch.cat([bn.running_var, other.running_var])
            bn.num_features = bn.weight.shape[0]
    return first


def _split_cv1(block: nn.Module, plan: TracingPlan) -> None:
    """Slice ``block.cv1`` into twin halves ``_cv1a``/``_cv1b`` for tracing; join them back on restore."""
    half = block.cv1.conv.out_channels // 2
    block._cv1a = _slice_conv(block.cv1, 0, half)
    block._cv1b = _slice_conv(block.cv1, half, 2 * half)
    plan.twins.append((block._cv1a.conv, block._cv1b.conv))

    def join() -> None:
        cv1 = _concat_convs(block._cv1a, block._cv1b)
        del block._cv1a, block._cv1b
        block.cv1 = cv1
        block.c = cv1.conv.out_channels // 2

    plan.on_restore(join)


# --------------------------------------------------------------------------------------------------------------------
# Tracing forwards: same channel coupling as the real forward, only graph-friendly ops.


def _c2f_trace(self, x):
    y = [self._cv1a(x), self._cv1b(x)]
    y.extend(m(y[-1]) for m in self.m)
    return self.cv2(torch.cat(y, 1))


def _elan_trace(self, x):
    y = [self._cv1a(x), self._cv1b(x)]
    y.extend(m(y[-1]) for m in (self.cv2, self.cv3))
    return self.cv4(torch.cat(y, 1))


def _c2_trace(self, x):
    return self.cv2(torch.cat((self.m(self._cv1a(x)), self._cv1b(x)), 1))


def _c2psa_trace(self, x):
    return self.cv2(torch.cat((self._cv1a(x), self.m(self._cv1b(x))), 1))


def _psa_trace(self, x):
    a, b = self._cv1a(x), self._cv1b(x)
    b = b + self.attn(b)
    b = b + self.ffn(b)
    return self.cv2(torch.cat((a, b), 1))


def _attention_trace(self, x):
    return self.proj(x)


def _attention_heads_trace(self, x):
    return self.proj(self._bridge(self.qkv(x)))


def _adown_trace(self, x):
    x = nn.functional.avg_pool2d(x, 2, 1, 0, False, True)
    half = self.cv1.conv.in_channels
    x1 = self.cv1(x[:, :half])
    x2 = self.cv2(nn.functional.max_pool2d(x[:, half:], 3, 2, 1))
    return torch.cat((x1, x2), 1)


def _cbfuse_trace(self, xs):
    size = xs[-1].shape[2:]
    out = xs[-1]
    for i, x in enumerate(xs[:-1]):
        out = out + nn.functional.interpolate(x[self.idx[i]], size=size, mode="nearest")
    return out


# --------------------------------------------------------------------------------------------------------------------
# Rules


def _rule_split(trace: Callable) -> Callable[[nn.Module, TracingPlan], None]:
    def rule(block: nn.Module, plan: TracingPlan) -> None:
        _split_cv1(block, plan)
        plan.patch_forward(block, trace)

    return rule


def _rule_attention(block: nn.Module, plan: TracingPlan) -> None:
    if plan.attention_mode == "keep":  # the stream keeps its width: proj's output is frozen
        plan.patch_forward(block, _attention_trace)
        plan.frozen_out.add(block.proj.conv)
        return
    # Stream coupled through qkv's input and proj's output; the head-laid-out channels in between go through a
    # temporary bridge conv and are frozen for the graph (the head pass in yolo_prune.prune removes whole heads).
    weight = block.qkv.conv.weight
    block._bridge = nn.Conv2d(block.qkv.conv.out_channels, block.proj.conv.in_channels, 1, bias=False).to(weight)
    plan.patch_forward(block, _attention_heads_trace)
    plan.frozen_out.update((block.qkv.conv, block._bridge))
    plan.attention.append(block)
    plan.on_restore(lambda: block.__dict__["_modules"].pop("_bridge", None))


def _rule_adown(block: ADown, plan: TracingPlan) -> None:
    # ADown chunks its *input* into equal halves; keep that input width as it is.
    plan.patch_forward(block, _adown_trace)
    plan.frozen_in.update((block.cv1.conv, block.cv2.conv))


def _rule_cblinear(block: CBLinear, plan: TracingPlan) -> None:
    # CBLinear splits its conv into fixed sizes ``c2s`` that CBFuse adds onto other branches: keep them all.
    plan.frozen_out.add(block.conv)


def _rule_cbfuse(block: CBFuse, plan: TracingPlan) -> None:
    plan.patch_forward(block, _cbfuse_trace)  # a chain of adds instead of stack + sum


def _rule_repvggdw(block: RepVGGDW, plan: TracingPlan) -> None:
    plan.on_restore(lambda: setattr(block, "dim", block.conv.conv.out_channels))


def _rule_ghostconv(block: GhostConv, plan: TracingPlan) -> None:
    # Output = cat(cv1(x), cv2(cv1(x))) with cv2 depthwise: one channel of cv1 is two output channels.
    for conv in (block.cv1, block.cv2):
        plan.shared.update({m: id(block) for m in (conv.conv, getattr(conv, "bn", None)) if m is not None})


def _rule_a2c2f(block: A2C2f, plan: TracingPlan) -> None:
    if block.gamma is not None:
        plan.unwrapped.append((block.gamma, 0))


BLOCK_RULES: dict[type, Callable[[nn.Module, TracingPlan], None]] = {
    C2: _rule_split(_c2_trace),
    C2f: _rule_split(_c2f_trace),
    C3k2: _rule_split(_c2f_trace),
    C2fCIB: _rule_split(_c2f_trace),
    C2fPSA: _rule_split(_c2f_trace),
    RepNCSPELAN4: _rule_split(_elan_trace),
    ELAN1: _rule_split(_elan_trace),
    C2PSA: _rule_split(_c2psa_trace),
    PSA: _rule_split(_psa_trace),
    ADown: _rule_adown,
    Attention: _rule_attention,
    CBLinear: _rule_cblinear,
    CBFuse: _rule_cbfuse,
    AAttn: _rule_attention,
    RepVGGDW: _rule_repvggdw,
    GhostConv: _rule_ghostconv,
    A2C2f: _rule_a2c2f,
}

# Top-level layers a detection model may be built from. Anything else is refused with a clear error rather than
# pruned on a guess.
SUPPORTED_LAYERS: tuple[type, ...] = (
    Conv,
    DWConv,
    GhostConv,
    ConvTranspose,
    RepConv,
    nn.Conv2d,
    nn.ConvTranspose2d,
    nn.MaxPool2d,
    nn.ZeroPad2d,
    nn.Upsample,
    nn.Sequential,
    nn.Identity,
    Concat,
    Bottleneck,
    GhostBottleneck,
    C1,
    C2,
    C3,
    C3x,
    C3TR,
    C3Ghost,
    RepC3,
    C3k,
    CIB,
    SPP,
    SPPF,
    SPPELAN,
    AConv,
    ADown,
    SCDown,
    ABlock,
    PSABlock,
    *BLOCK_RULES,
    *HEAD_RULES,
)


def check_supported(model: nn.Module) -> None:
    """Raise ``ValueError`` if ``model`` holds a top-level layer the rules do not know.

    The head must be one of ``yolo_prune.rules.tasks.HEADS`` (tasks detect, segment, pose and obb); a classify model or
    an unknown head is refused in one line.

    Args:
        model: An Ultralytics ``DetectionModel`` (or its ``SegmentationModel``, ``PoseModel``, ``OBBModel`` subclass).
    """
    check_head(model)
    unknown = sorted({type(m).__name__ for m in model.model if type(m) not in SUPPORTED_LAYERS})
    if unknown:
        raise ValueError(
            f"cannot prune layers of type {', '.join(unknown)}: yolo-prune knows the blocks of the stock Ultralytics "
            "detection families (YOLOv3u, v5u, v6, v8, v9, v10, 11, 12, 26) and their segment, pose and obb models"
        )


def prepare_for_tracing(model: nn.Module, attention: str = "heads") -> TracingPlan:
    """Apply every block rule to ``model`` and return the plan (call ``plan.restore()`` after pruning).

    Args:
        model: The ``DetectionModel`` to prune; changed in place until ``restore()``.
        attention: ``heads`` (attention streams are traced, heads listed in ``plan.attention``) or ``keep``.

    Returns:
        The plan with frozen modules, twin convs and the undo steps.
    """
    plan = TracingPlan(attention_mode=check_attention(attention))
    for module in list(model.modules()):
        rule = BLOCK_RULES.get(type(module)) or HEAD_RULES.get(type(module))
        if rule is not None:
            rule(module, plan)
        elif isinstance(module, DFL):
            plan.frozen_out.add(module.conv)
        elif (
            isinstance(module, nn.Conv2d)
            and 1 < module.groups
            and not (module.groups == module.in_channels == module.out_channels)
        ):
            plan.frozen_out.add(module)
            plan.frozen_in.add(module)
    return plan
