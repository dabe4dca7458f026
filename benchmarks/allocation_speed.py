"""How fast is the CLI's default allocation? Speed per removed MAC of sensitivity allocation against uniform pruning.

`yolo-prune prune` shares the cut between layers by a measured sensitivity scan (``allocation=sensitivity``), which
takes the MACs where accuracy suffers least, not where they cost the most time. This script times what that does to
speed. The model is YOLOv8n built from its yaml (latency depends on the widths, not the weights); the per-layer
ratios are the ones the accuracy study's default 2x row was pruned with (``sens-2x-distill-s0`` in
``results/accuracy/layer_ratios.json``: scanned on the converged YOLOv8n of study v2, allocated at ``round_to=8``).
Variants:

* ``uniform-2x``: ``prune(model, target_macs=0.5)`` at the defaults (the Python API's allocation);
* ``sensitivity-2x``: those layer ratios at ``round_to=8``, as the study's model was pruned;
* ``sensitivity-2x-r16``: the same ratios at the default ``round_to="auto"`` (16 on AVX-512), which keeps more.

Each is exported through the Ultralytics exporter and timed in interleaved rounds on ONNX Runtime and OpenVINO (CPU,
1 thread), 640 px, batch 1. ``eff`` = speed-up / MACs cut (THOP GFLOPs).

Usage:
    python benchmarks/allocation_speed.py                 # ~3 minutes on a 2-core CPU
    python benchmarks/allocation_speed.py --rounds 5 --out /tmp/alloc

Outputs in ``--out`` (default ``benchmarks/results/allocation_speed``): ``results.json`` and ``ALLOCATION_SPEED.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # use this checkout's yolo_prune when run from the repo
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

RATIOS = Path(__file__).parent / "results" / "accuracy" / "layer_ratios.json"
ROW = "sens-2x-distill-s0"


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark and return the results dict."""
    from latency import _layer_macs, _sessions, interleaved, speed_cells
    from ultralytics import YOLO

    from yolo_prune import prune
    from yolo_prune.measurement.hardware import cpu_name
    from yolo_prune.measurement.measure import count_gflops, export_onnx

    torch.set_num_threads(1)
    ratios = {int(k): v for k, v in json.loads(RATIOS.read_text())[ROW]["layer_ratios"].items()}
    base = YOLO("yolov8n.yaml")
    models = {
        "base": base.model,
        "uniform-2x": prune(base, target_macs=0.5, imgsz=args.imgsz, verbose=False).model,
        "sensitivity-2x": prune(base, layer_ratios=ratios, round_to=8, verbose=False).model,
        "sensitivity-2x-r16": prune(base, layer_ratios=ratios, verbose=False).model,
    }
    gflops = {k: count_gflops(m, args.imgsz) for k, m in models.items()}
    layer_macs = {k: _layer_macs(m, args.imgsz) for k, m in models.items()}
    results: dict = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "imgsz": args.imgsz,
        "rounds": args.rounds,
        "layer_ratios": {"file": str(RATIOS.relative_to(Path(__file__).parent)), "row": ROW, "ratios": ratios},
        "gflops": gflops,
        "layer_macs_cut": {
            k: {i: layer_macs["base"][i] / m[i] for i in sorted(m) if m[i]} for k, m in layer_macs.items()
        },
        "timings": {},
    }
    backends = ["onnxruntime"]
    try:
        import openvino  # noqa: F401

        backends.append("openvino")
    except ImportError:
        print("openvino not installed: ONNX Runtime only (pip install openvino)")
    with tempfile.TemporaryDirectory() as tmp:
        paths = {k: export_onnx(m, imgsz=args.imgsz, out_dir=tmp, name=k.replace("-", "_")) for k, m in models.items()}
        for backend in backends:
            cells = speed_cells(interleaved(_sessions(paths, backend, 1), args.rounds), gflops)
            results["timings"][f"{backend}/t1"] = cells
            print(backend, ", ".join(f"{k} x{c['speedup']:.2f} eff {c['eff']:.2f}" for k, c in cells.items()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "ALLOCATION_SPEED.md").write_text(markdown(results))
    return results


def markdown(results: dict) -> str:
    """Return the table of ``results`` as markdown."""
    keys = list(results["timings"])
    lines = [
        "# Speed of the sensitivity allocation against uniform pruning (YOLOv8n, CPU)",
        "",
        f"- date: {results['date']}; CPU: {results['cpu']}; torch {results['torch']}",
        f"- command: `{results['command']}`",
        f"- imgsz {results['imgsz']}, batch 1, 1 thread, {results['rounds']} interleaved rounds, medians; [10-90 %] of "
        "the per-round speed-ups; `eff` = speed-up / MACs cut (THOP GFLOPs). Layer ratios: "
        f"`{results['layer_ratios']['file']}` row `{results['layer_ratios']['row']}`.",
        "",
        "| variant | GFLOPs | MACs cut | " + " | ".join(f"{k} ms | {k} x (eff) [10-90 %]" for k in keys) + " |",
        "|---|---:|---:|" + "---:|---|" * len(keys),
    ]
    g = results["gflops"]
    for label in g:
        row = [label, f"{g[label]:.2f}", f"{g['base'] / g[label]:.2f}x"]
        for k in keys:
            c = results["timings"][k][label]
            lo, hi = c["speedup_10_90"]
            row += [f"{c['median_ms']:.1f}", f"{c['speedup']:.2f}x ({c['eff']:.2f}) [{lo:.2f}-{hi:.2f}]"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "MACs cut per layer (base / pruned), by layer index:", ""]
    cut = results["layer_macs_cut"]
    layers = list(cut["base"])
    lines += ["| variant | " + " | ".join(str(i) for i in layers) + " |", "|---|" + "---:|" * len(layers)]
    for label, per in cut.items():
        if label != "base":
            lines.append(f"| {label} | " + " | ".join(f"{per.get(i, 0):.1f}" for i in layers) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "allocation_speed"))
    run(parser.parse_args())


if __name__ == "__main__":
    main()
