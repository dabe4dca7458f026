"""Time graph build + pruning for every Ultralytics detection family (models built from yaml, no downloads).

Usage:
    python benchmarks/prune_time.py                      # n-scale (t for v9, tiny for v3) of the nine families
    python benchmarks/prune_time.py --scales n s m l x   # more scales (yaml names are derived per family)
    python benchmarks/prune_time.py --models yolov9e.yaml yolov5n6u.yaml
    python benchmarks/prune_time.py --variants --scales n s m l x   # -p2/-p6/-ghost variants at every scale

Prints one row per model: seconds for ``prune_detection_model`` at ``--ratio``, parameter and GFLOPs (at 640) cut.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.utils import LOGGER  # noqa: E402
from ultralytics.utils.torch_utils import get_flops  # noqa: E402

from yolo_prune.policy.importance import get_importance  # noqa: E402
from yolo_prune.policy.prune import prune_detection_model  # noqa: E402

FAMILIES = {
    "v3": {"n": "yolov3-tinyu", "m": "yolov3u", "l": "yolov3-sppu"},
    "v5": {s: f"yolov5{s}u" for s in "nsmlx"},
    "v6": {s: f"yolov6{s}" for s in "nsmlx"},
    "v8": {s: f"yolov8{s}" for s in "nsmlx"},
    "v9": {"n": "yolov9t", "s": "yolov9s", "m": "yolov9m", "l": "yolov9c", "x": "yolov9e"},
    "v10": {**{s: f"yolov10{s}" for s in "nsmlx"}, "b": "yolov10b"},
    "11": {s: f"yolo11{s}" for s in "nsmlx"},
    "12": {s: f"yolo12{s}" for s in "nsmlx"},
    "26": {s: f"yolo26{s}" for s in "nsmlx"},
}

# Variants of a family: other strides (-p2, -p6) or blocks (-ghost); yaml names per scale letter
VARIANTS = {
    "v5-p6": "yolov5{}-p6",
    "v8-p2": "yolov8{}-p2",
    "v8-p6": "yolov8{}-p6",
    "v8-ghost": "yolov8{}-ghost",
    "v8-ghost-p2": "yolov8{}-ghost-p2",
    "v8-ghost-p6": "yolov8{}-ghost-p6",
    "26-p2": "yolo26{}-p2",
    "26-p6": "yolo26{}-p6",
}


def time_model(name: str, ratio: float, method: str) -> str:
    """Prune one model built from yaml and return its table row."""
    model = YOLO(name).model
    params0, flops0 = sum(p.numel() for p in model.parameters()), get_flops(model, 640)
    start = time.perf_counter()
    prune_detection_model(model, ratio, get_importance(method))
    seconds = time.perf_counter() - start
    params1, flops1 = sum(p.numel() for p in model.parameters()), get_flops(model, 640)
    model.eval()
    with torch.inference_mode():
        model(torch.zeros(1, 3, 128, 128))
    return (
        f"| {name} | {seconds:.2f} | {params0 / 1e6:.2f} -> {params1 / 1e6:.2f} | "
        f"{flops0:.1f} -> {flops1:.1f} | {1 - flops1 / flops0:.0%} |"
    )


def main() -> None:
    """Parse arguments and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", nargs="+", default=["n"])
    parser.add_argument("--models", nargs="+", help="explicit yaml names instead of --scales")
    parser.add_argument("--variants", action="store_true", help="the -p2/-p6/-ghost variants instead of the families")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--method", default="l2")
    args = parser.parse_args()
    names = args.models or [f"{fam[s]}.yaml" for s in args.scales for fam in FAMILIES.values() if s in fam]
    if args.variants and not args.models:
        names = [f"{template.format(s)}.yaml" for s in args.scales for template in VARIANTS.values()]
    LOGGER.setLevel("ERROR")
    print(
        f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}, ratio {args.ratio}, method {args.method}"
    )
    print("| model | build graph + prune (s) | params (M) | GFLOPs@640 | GFLOPs cut |")
    print("|---|---|---|---|---|")
    for name in names:
        try:
            print(time_model(name, args.ratio, args.method), flush=True)
        except Exception as e:  # a benchmark keeps going and reports the failure in its row
            print(f"| {name} | failed: {type(e).__name__}: {str(e).splitlines()[0][:120]} | | | |", flush=True)


if __name__ == "__main__":
    main()
