"""Generate the yolo-prune shapes detection dataset into a folder.

Examples:
    python datasets/make_shapes.py --root ../shapes --seed 0
    python datasets/make_shapes.py --root /tmp/shapes-small --n-train 200 --n-val 50 --imgsz 160
    python datasets/make_shapes.py --root /tmp/shapes-v3 --version 3 --n-train 1000 --n-val 250  # like shapes-v3.yaml
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # use this checkout's yolo_prune when run from the repo

from yolo_prune.data.shapes import GENERATOR_VERSION, GENERATOR_VERSIONS, make_shapes_dataset  # noqa: E402

__all__ = ["main"]


def main(argv: list[str] | None = None) -> Path:
    """Parse the command line and generate the dataset.

    Args:
        argv (list[str] | None): Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        (Path): Path of the written data yaml.
    """
    parser = argparse.ArgumentParser(description="Generate the synthetic shapes dataset in Ultralytics YOLO format.")
    parser.add_argument("--root", required=True, type=Path, help="dataset folder to create (absent or empty)")
    parser.add_argument("--n-train", type=int, default=800, help="number of training images")
    parser.add_argument("--n-val", type=int, default=200, help="number of validation images")
    parser.add_argument("--imgsz", type=int, default=320, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    parser.add_argument(
        "--version", type=int, default=GENERATOR_VERSION, choices=GENERATOR_VERSIONS, help="generator version"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    sizes = {"n_train": args.n_train, "n_val": args.n_val, "imgsz": args.imgsz}
    yaml_path = make_shapes_dataset(args.root, **sizes, seed=args.seed, version=args.version)
    print(f"wrote {yaml_path} ({args.n_train} train + {args.n_val} val images) in {time.perf_counter() - start:.1f} s")
    return yaml_path


if __name__ == "__main__":
    main()
