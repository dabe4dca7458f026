"""Head rules and the task table: which YOLO heads can be pruned, and how each task is trained and validated.

Every supported head subclasses Ultralytics' ``Detect``; the task heads add output branches next to the box (``cv2``)
and class (``cv3``) branches:

* ``Segment``/``Segment26``: ``cv4`` gives ``nm`` mask coefficients per anchor, and ``proto`` (``Proto``, or
  ``Proto26`` that first fuses all feature levels and, in training only, also runs a semantic head ``semseg``) gives
  ``nm`` prototype masks.
* ``Pose``: ``cv4`` gives ``nk`` keypoint values. ``Pose26``: ``cv4`` is a hidden trunk shared by two output convs,
  ``cv4_kpts`` (keypoints) and ``cv4_sigma`` (their spread, training only); ``flow_model`` (RealNVP) works on keypoint
  coordinates inside the loss, so it has no channels coupled to the network and is left as it is.
* ``OBB``/``OBB26``: ``cv4`` gives ``ne`` angle values.

One rule serves them all (``HEAD_RULES``): while the graph is traced the head gets a forward that runs *every* branch,
the one-to-one copies of YOLOv10/YOLO26 and the training-only ones included (the real forward skips some in eval mode,
and a branch missing from the graph would keep its old input width). The hidden convs of every branch, the proto net
and the ``Proto26`` fusion convs are pruned; the last conv of every output branch (box, class, mask coefficients,
keypoints, keypoint sigmas, angle), the proto output conv and the semantic output conv keep their widths.

``TASKS`` maps each task to its pruned trainer, its Ultralytics validator and the report keys of its own metrics;
``HEADS`` maps each head class to its task. Classify, YOLOE, YOLO-World, RT-DETR, semantic-segmentation and depth
models are refused in one line.

Examples:
    >>> from yolo_prune.rules.tasks import task_of, trainer_for
    >>> task_of(YOLO("yolo11n-seg.yaml").model)
    'segment'
    >>> trainer_for("pose")
    <class 'yolo_prune.integration.trainer.PrunedPoseTrainer'>
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.models.yolo.obb import OBBValidator
from ultralytics.models.yolo.pose import PoseValidator
from ultralytics.models.yolo.segment import SegmentationValidator
from ultralytics.nn.modules import OBB, Detect, Pose, Proto, Segment, v10Detect
from ultralytics.nn.modules.block import Proto26
from ultralytics.nn.modules.head import OBB26, Pose26, Segment26

from ..integration.trainer import PrunedDetectionTrainer, PrunedOBBTrainer, PrunedPoseTrainer, PrunedSegmentationTrainer
from .plan import TracingPlan

__all__ = ["HEAD_RULES", "HEADS", "TASKS", "Task", "check_head", "task_of", "trainer_for"]

# Branch attributes of a head, one entry per feature level; the one-to-one copies carry the prefix "one2one_".
BRANCHES = ("cv2", "cv3", "cv4")
# Output convs fed by a hidden trunk (Pose26: cv4 -> cv4_kpts and cv4_sigma), named "<branch><suffix>".
TAILS = ("_kpts", "_sigma")
PREFIXES = ("", "one2one_")


@dataclass(frozen=True)
class Task:
    """How one task is fine-tuned, validated and reported.

    Attributes:
        name: Ultralytics task name (``model.task``).
        trainer: The pruned trainer (keeps the given module, never rebuilds it from yaml).
        validator: The Ultralytics validator of the task.
        metrics: ``{report key: (metrics attribute, Metric attribute)}`` read from the validator's results beside the
            box mAP (``map50_95``/``map50``), e.g. ``{"map50_95_mask": ("seg", "map")}``.
    """

    name: str
    trainer: type
    validator: type
    metrics: dict[str, tuple[str, str]]


TASKS: dict[str, Task] = {
    "detect": Task("detect", PrunedDetectionTrainer, DetectionValidator, {}),
    "segment": Task(
        "segment",
        PrunedSegmentationTrainer,
        SegmentationValidator,
        {"map50_95_mask": ("seg", "map"), "map50_mask": ("seg", "map50")},
    ),
    "pose": Task(
        "pose",
        PrunedPoseTrainer,
        PoseValidator,
        {"map50_95_pose": ("pose", "map"), "map50_pose": ("pose", "map50")},
    ),
    "obb": Task("obb", PrunedOBBTrainer, OBBValidator, {}),  # its box metrics are the rotated-box mAP
}


# --------------------------------------------------------------------------------------------------------------------
# Tracing forward and the rule shared by every head


def _proto_trace(proto: nn.Module, x: list[torch.Tensor]) -> list[torch.Tensor]:
    """Run a proto net on the head inputs with every branch (``Proto26.semseg`` too, training-only in its forward)."""
    if not isinstance(proto, Proto26):
        return [proto(x[0])]
    feat = x[0]
    for i, refine in enumerate(proto.feat_refine):
        feat = feat + nn.functional.interpolate(refine(x[i + 1]), scale_factor=2 ** (i + 1), mode="nearest")
    outputs = [Proto.forward(proto, proto.feat_fuse(feat))]
    if proto.semseg is not None:
        outputs.append(proto.semseg(feat))
    return outputs


def _head_trace(self, x):
    """Tracing forward of any supported head: every branch of every level, as a flat list of tensors."""
    outputs = []
    for prefix in PREFIXES:
        box, cls = getattr(self, f"{prefix}cv2", None), getattr(self, f"{prefix}cv3", None)
        if box is not None and cls is not None:
            outputs.extend(torch.cat((box[i](x[i]), cls[i](x[i])), 1) for i in range(self.nl))
    for prefix in PREFIXES:
        extra = getattr(self, f"{prefix}cv4", None)
        if extra is None:
            continue
        for i in range(self.nl):
            hidden = extra[i](x[i])
            tails = [t for t in (getattr(self, f"{prefix}cv4{s}", None) for s in TAILS) if t is not None]
            outputs.extend([tail[i](hidden) for tail in tails] or [hidden])
    if getattr(self, "proto", None) is not None:
        outputs.extend(_proto_trace(self.proto, x))
    return outputs


def _output_convs(head: nn.Module) -> list[nn.Conv2d]:
    """The convs whose output widths are fixed by the head's outputs (see the module docstring)."""
    fixed = []
    for prefix in PREFIXES:
        for name in BRANCHES:
            for branch in getattr(head, f"{prefix}{name}", None) or ():
                if isinstance(branch, nn.Sequential) and isinstance(branch[-1], nn.Conv2d):
                    fixed.append(branch[-1])  # a plain Conv2d ends an output branch; a Conv block ends a trunk
            for suffix in TAILS:
                fixed.extend(getattr(head, f"{prefix}{name}{suffix}", None) or ())
    proto = getattr(head, "proto", None)
    if proto is not None:
        fixed.append(proto.cv3.conv)  # nm prototype masks
        if getattr(proto, "semseg", None) is not None:
            fixed.append(proto.semseg[-1])  # nc semantic logits
    return fixed


def _rule_head(head: Detect, plan: TracingPlan) -> None:
    plan.patch_forward(head, _head_trace)
    plan.frozen_out.update(_output_convs(head))


HEADS: dict[type, str] = {
    Detect: "detect",
    v10Detect: "detect",
    Segment: "segment",
    Segment26: "segment",
    Pose: "pose",
    Pose26: "pose",
    OBB: "obb",
    OBB26: "obb",
}

# Head class -> rule; exact classes only (YOLOEDetect and WorldDetect subclass Detect but are not supported).
HEAD_RULES: dict[type, Callable[[nn.Module, TracingPlan], None]] = dict.fromkeys(HEADS, _rule_head)

UNSUPPORTED = "classify, YOLOE, YOLO-World, RT-DETR, semantic-segmentation and depth models are not"


def supported_tasks() -> str:
    """Return ``detect (Detect, v10Detect), segment (...), ...`` for messages."""
    names = {task: [h.__name__ for h, t in HEADS.items() if t == task] for task in TASKS}
    return ", ".join(f"{task} ({', '.join(heads)})" for task, heads in names.items())


def check_head(model: nn.Module) -> str:
    """Return the task of ``model``'s head, or raise a one-line ``ValueError`` for a head that cannot be pruned.

    Args:
        model: An Ultralytics model (``YOLO(...).model``).

    Returns:
        The task name: ``detect``, ``segment``, ``pose`` or ``obb``.
    """
    layers = getattr(model, "model", None)
    head = layers[-1] if isinstance(layers, nn.Sequential) and len(layers) else None
    task = HEADS.get(type(head))
    if task is None:
        raise ValueError(
            f"cannot prune a model whose head is {type(head).__name__}: supported tasks are {supported_tasks()}; "
            f"{UNSUPPORTED}"
        )
    return task


def task_of(model: nn.Module) -> str:
    """Return the task of a supported model (see `check_head`).

    Args:
        model: An Ultralytics model, or a ``YOLO`` wrapper.
    """
    inner = getattr(model, "model", None)
    wrapped = isinstance(inner, nn.Module) and not isinstance(inner, nn.Sequential)  # a YOLO wrapper
    return check_head(inner if wrapped else model)


def trainer_for(task_or_model: str | nn.Module) -> type:
    """Return the pruned trainer class for a task name or a model.

    Args:
        task_or_model: ``detect``, ``segment``, ``pose`` or ``obb``, or a model whose head names the task.

    Returns:
        The trainer class, e.g. ``PrunedSegmentationTrainer``.
    """
    task = task_or_model if isinstance(task_or_model, str) else task_of(task_or_model)
    if task not in TASKS:
        raise ValueError(f"unknown task '{task}': supported tasks are {', '.join(TASKS)}")
    return TASKS[task].trainer
