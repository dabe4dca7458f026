"""MACs cut at ``ratio=0.5`` with the default settings, for the segment, pose and obb yamls (and YOLO12n detect).

Deterministic (no timing, no data): each model is built from its yaml as shipped and pruned with
``yolo_prune.prune(model, ratio=0.5)``; GFLOPs at 640 px as Ultralytics counts them.

Usage:
    python benchmarks/task_macs.py   # writes benchmarks/results/task_macs.md, about 3 minutes on a 2-core CPU
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # use this checkout's yolo_prune when run from the repo

FAMILIES = (("YOLOv8n", "yolov8n"), ("YOLOv9c", "yolov9c"), ("YOLO11n", "yolo11n"), ("YOLO12n", "yolo12n"))
FAMILIES += (("YOLO26n", "yolo26n"),)
TASKS = ("seg", "pose", "obb")


def cut(yaml: str, **kwargs) -> str:
    """Return 'before -> after (cut %)' in GFLOPs@640 for ``yaml`` pruned at ratio 0.5."""
    from ultralytics import YOLO

    from yolo_prune import prune
    from yolo_prune.measurement.measure import count_gflops

    base = YOLO(yaml)
    pruned = prune(base, ratio=0.5, verbose=False, **kwargs)
    g0, g1 = count_gflops(base.model, 640), count_gflops(pruned.model, 640)
    return f"{g0:.2f} -> {g1:.2f} ({1 - g1 / g0:.1%})"


def main() -> None:
    """Measure and write the table."""
    lines = [
        "# MACs cut at ratio=0.5, defaults (round_to=auto, attention by whole heads, l2)",
        "",
        "- command: `python benchmarks/task_macs.py`",
        "",
        "| family | segment | pose | obb |",
        "|---|---|---|---|",
    ]
    for label, prefix in FAMILIES:
        cells = []
        for task in TASKS:
            try:
                cells.append(cut(f"{prefix}-{task}.yaml"))
            except FileNotFoundError:  # no such yaml in this ultralytics (e.g. yolov9c-pose)
                cells.append("-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    lines += [
        "",
        "YOLO12n detect: "
        f"default {cut('yolo12n.yaml')}, round_to=8 {cut('yolo12n.yaml', round_to=8)}, "
        f"round_to=8 attention=keep {cut('yolo12n.yaml', round_to=8, attention='keep')}",
    ]
    print(lines[-1])
    out = Path(__file__).parent / "results" / "task_macs.md"
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
