"""Does the report's speed-up survive another job on the machine? Side-by-side timing against timing rows separately.

Two models: YOLO11n (from yaml, 80 classes) and its copy pruned to half the MACs (uniform allocation). Each is exported
to ONNX and timed with ONNX Runtime (1 thread, 320 px) three ways:

1. ``quiet``: side by side (`yolo_prune.measurement.side_by_side.time_rows`, interleaved rounds) on an idle machine.
2. ``loaded``: the same, while a second process keeps every core busy (NumPy matrix products in a loop).
3. ``separate``: the way reports were timed before 0.5: the baseline alone on the idle machine, then the pruned model
   alone once the load has started (as when another job starts in the middle of a run).

The side-by-side speed-up under load should stay within 15 % of the quiet one; the separate timing shows what the old
report said in the same situation.

Usage:
    python benchmarks/timing_under_load.py --out benchmarks/results/timing_under_load
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's yolo_prune

LOAD = "import os, numpy as np\na = np.random.rand(600, 600)\nwhile True:\n    a = (a @ a) / 600.0\n"


def start_load(cores: int) -> list[subprocess.Popen]:
    """One busy process per core (each single-threaded), until killed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return [subprocess.Popen([sys.executable, "-c", LOAD], env=env) for _ in range(cores)]


def stop_load(procs: list[subprocess.Popen]) -> None:
    """Kill the load processes."""
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def main() -> int:
    """Time the pair three ways and write results.json and table.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/timing_under_load"))
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from yolo_prune import load_yolo, prune
    from yolo_prune.measurement.measure import count_gflops, default_threads, export_onnx, measure_onnx_latency, new_row
    from yolo_prune.measurement.report import machine_info
    from yolo_prune.measurement.side_by_side import time_rows

    base = load_yolo("yolo11n.yaml").model
    pruned = prune("yolo11n.yaml", target_macs=0.5, imgsz=args.imgsz, verbose=False).model  # uniform allocation
    macs_x = count_gflops(base, args.imgsz) / count_gflops(pruned, args.imgsz)
    cores = default_threads()
    results: dict = {"imgsz": args.imgsz, "threads": args.threads, "rounds": args.rounds, "macs_x": macs_x}
    with tempfile.TemporaryDirectory() as tmp:
        files = [export_onnx(m, args.imgsz, 1, tmp, n) for m, n in ((base, "base"), (pruned, "pruned"))]

        def side_by_side() -> dict:
            rows = [new_row("base"), new_row("pruned")]
            sources = [{"onnx_cpu": f} for f in files]
            time_rows(rows, sources, ["onnx_cpu"], args.imgsz, 1, args.threads, rounds=args.rounds, warmup=5)
            return {
                "base_ms": rows[0]["latency_ms"]["onnx_cpu"],
                "pruned_ms": rows[1]["latency_ms"]["onnx_cpu"],
                "speedup": rows[1]["speedup_detail"]["onnx_cpu"],
                "other_load": rows[1]["latency_detail"]["onnx_cpu"]["other_load"],
            }

        results["quiet"] = side_by_side()
        procs = start_load(cores)
        try:
            time.sleep(2)
            results["loaded"] = side_by_side()
        finally:
            stop_load(procs)
        time.sleep(3)
        alone = measure_onnx_latency(files[0], args.imgsz, warmup=5, runs=args.rounds, threads=args.threads)
        procs = start_load(cores)
        try:
            time.sleep(2)
            loaded = measure_onnx_latency(files[1], args.imgsz, warmup=5, runs=args.rounds, threads=args.threads)
        finally:
            stop_load(procs)
        results["separate"] = {
            "base_ms": alone["median_ms"],
            "pruned_ms": loaded["median_ms"],
            "speedup": alone["median_ms"] / loaded["median_ms"],
        }
    q, ld, sep = results["quiet"], results["loaded"], results["separate"]
    results["loaded_vs_quiet"] = ld["speedup"]["median"] / q["speedup"]["median"] - 1
    results["machine"] = machine_info(" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    results["load"] = f"{cores} single-threaded NumPy matmul loops (one per usable core)"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    table = [
        f"YOLO11n vs its uniform 2x-MACs copy ({macs_x:.2f}x fewer MACs), ONNX Runtime, {args.threads} thread(s), "
        f"{args.imgsz} px, {args.rounds} rounds; load: {results['load']}. Machine: {results['machine']['cpu']}.",
        "",
        "| timing | baseline ms | pruned ms | speed-up (10-90 %) | other processes' cores |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label in (("quiet", "side by side, idle"), ("loaded", "side by side, under load")):
        r = results[key]
        s = r["speedup"]
        table.append(
            f"| {label} | {r['base_ms']:.2f} | {r['pruned_ms']:.2f} | "
            f"{s['median']:.2f}x ({s['p10']:.2f}-{s['p90']:.2f}) | {r['other_load']} |"
        )
    table.append(
        f"| separately, the load starting between the rows | {sep['base_ms']:.2f} | {sep['pruned_ms']:.2f} | "
        f"{sep['speedup']:.2f}x | - |"
    )
    table += [
        "",
        f"Side by side under load vs idle: {100 * results['loaded_vs_quiet']:+.1f} % (goal: within 15 %).",
        "",
        f"Command: `python benchmarks/timing_under_load.py --out {args.out}`",
    ]
    (args.out / "table.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
