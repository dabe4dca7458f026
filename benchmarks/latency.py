"""Speed per removed MAC: how much of a 2x MACs cut turns into speed on CPU backends, with default settings.

For each model (built from its yaml: latency does not depend on the weights) the script prunes to 2x fewer MACs with
``yolo_prune.prune(model, target_macs=0.5)`` at the default settings (``round_to="auto"``) and, for comparison, with
``round_to=8`` (the default before 0.3.0). All variants are exported once through the Ultralytics exporter (ONNX,
static 1x3xSxS) and timed side by side, in interleaved rounds (each round runs every variant once, the order rotating),
on ONNX Runtime (CPUExecutionProvider) and OpenVINO (CPU plugin, reading the same ONNX file, latency hint), at 1 thread
and at every core. ``eff`` = speed-up / MACs cut (1.0: every removed MAC turned into time).

With ``--profile``, ONNX Runtime's per-node profile (1 thread) of the base and the default-pruned model says where the
time goes: time per op type, and the layers whose time fell least compared with their MACs.

Usage:
    python benchmarks/latency.py                        # the five models, ~15 minutes on a 2-core CPU
    python benchmarks/latency.py --models yolo11n --rounds 5 --out /tmp/lat   # quick check

Outputs in ``--out`` (default ``benchmarks/results/latency``): ``results.json`` (every median, spread, width and the
machine), ``LATENCY.md`` (the tables) and ``profiles/`` (aggregated per-node profiles).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # use this checkout's yolo_prune when run from the repo

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

MODELS = ("yolov8s", "yolo11n", "yolo11s", "yolo26n", "yolo12n")
GOALS = {"yolov8s": 0.9, "yolo11s": 0.9, "yolo26n": 0.9, "yolo11n": 0.85}  # the bar (eff at 1 thread, ORT)


def _variants(name: str, imgsz: int) -> dict[str, nn.Module]:
    """Return the base model and its 2x-MACs prunes (default round_to, and round_to=8)."""
    from ultralytics import YOLO

    from yolo_prune import prune

    base = YOLO(f"{name}.yaml")
    out = {"base": base.model}
    for label, extra in (("default", {}), ("round_to=8", {"round_to": 8})):
        pruned = prune(base, target_macs=0.5, imgsz=imgsz, verbose=False, **extra)
        out[label] = pruned.model
        out[label].prune_info = pruned.prune_info
    return out


def _sessions(paths: dict[str, Path], backend: str, threads: int) -> dict:
    """Return ``label -> run()`` callables for one backend."""
    out = {}
    for label, path in paths.items():
        if backend == "onnxruntime":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            shape = session.get_inputs()[0].shape
            x = np.random.default_rng(0).random(shape, dtype=np.float32)
            out[label] = lambda s=session, n=name, x=x: s.run(None, {n: x})
        else:
            import openvino as ov

            core = ov.Core()
            compiled = core.compile_model(
                core.read_model(str(path)),
                "CPU",
                {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1},
            )
            request = compiled.create_infer_request()
            shape = list(compiled.inputs[0].shape)
            x = np.random.default_rng(0).random(shape, dtype=np.float32)
            out[label] = lambda r=request, x=x: r.infer({0: x})
    return out


def interleaved(runs: dict, rounds: int, warmup: int = 3) -> dict[str, list[float]]:
    """Time every callable once per round, rotating the order; return the ms of each run per label."""
    labels = list(runs)
    for _ in range(warmup):
        for label in labels:
            runs[label]()
    times: dict[str, list[float]] = {label: [] for label in labels}
    for i in range(rounds):
        order = labels[i % len(labels) :] + labels[: i % len(labels)]
        for label in order:
            t0 = time.perf_counter()
            runs[label]()
            times[label].append((time.perf_counter() - t0) * 1e3)
    return times


def speed_cells(times: dict[str, list[float]], gflops: dict[str, float]) -> dict[str, dict]:
    """Summarise interleaved timings against the ``base`` label: median ms, speed-up, MACs cut, eff = speed-up / MACs
    cut, and the 10-90 % range of the per-round speed-ups."""
    base = statistics.median(times["base"])
    cells = {}
    for label, t in times.items():
        median = statistics.median(t)
        cut = gflops["base"] / gflops[label]
        q = statistics.quantiles(sorted(b / p for b, p in zip(times["base"], t, strict=True)), n=10)
        cells[label] = {
            "median_ms": median,
            "speedup": base / median,
            "macs_cut": cut,
            "eff": base / median / cut,
            "speedup_10_90": [q[0], q[-1]],
        }
    return cells


def _layer_macs(model: nn.Module, imgsz: int) -> dict[int, float]:
    """Conv MACs per top-level layer index (``model.model[i]``)."""
    from copy import deepcopy

    from yolo_prune.measurement.hardware import ConvSpec

    module = deepcopy(model).float().eval()
    owner = {conv: i for i, layer in enumerate(module.model) for conv in layer.modules() if isinstance(conv, nn.Conv2d)}
    macs: dict[int, float] = defaultdict(float)

    def hook(conv, inputs, _out):
        h, w = inputs[0].shape[-2:]
        pad = conv.padding if isinstance(conv.padding, tuple) else (0, 0)
        spec = ConvSpec(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            pad,
            conv.dilation,
            conv.groups,
            h,
            w,
            "",
        )
        macs[owner[conv]] += spec.macs()

    handles = [c.register_forward_hook(hook) for c in owner]
    with torch.inference_mode():
        module(torch.zeros(1, 3, imgsz, imgsz))
    for h in handles:
        h.remove()
    return dict(macs)


def ort_profile(path: Path, runs: int = 10) -> dict:
    """Run ONNX Runtime's profiler (1 thread) and return median µs per op type and per layer index."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        inp = session.get_inputs()[0]
        x = np.random.default_rng(0).random(inp.shape, dtype=np.float32)
        for _ in range(runs + 2):
            session.run(None, {inp.name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    per_run: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_run[e["name"]].append(float(e["dur"]))
    by_op: dict[str, float] = defaultdict(float)
    by_layer: dict[int, float] = defaultdict(float)
    ops = {e["name"]: e["args"].get("op_name", "?") for e in events if e.get("cat") == "Node"}
    for name, durs in per_run.items():
        median = statistics.median(durs[2:] or durs)
        by_op[ops.get(name, "?")] += median
        m = re.search(r"model\.(\d+)", name)
        by_layer[int(m.group(1)) if m else -1] += median
    return {"by_op_us": dict(by_op), "by_layer_us": {str(k): v for k, v in sorted(by_layer.items())}}


def _widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark and return the results dict."""
    from yolo_prune.measurement.hardware import auto_round_to, cpu_name
    from yolo_prune.measurement.measure import count_gflops, export_onnx

    out = Path(args.out)
    (out / "profiles").mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    thread_counts = sorted({1, cores})
    backends = ["onnxruntime"]
    try:
        import openvino  # noqa: F401

        backends.append("openvino")
    except ImportError:
        print("openvino not installed: ONNX Runtime only (pip install openvino)")
    results: dict = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_name(),
            "cores": cores,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "auto_round_to": auto_round_to("onnx", "cpu").__dict__,
        },
        "imgsz": args.imgsz,
        "rounds": args.rounds,
        "models": {},
    }
    import onnxruntime

    results["machine"]["onnxruntime"] = onnxruntime.__version__
    if "openvino" in backends:
        import openvino

        results["machine"]["openvino"] = openvino.__version__
    for name in args.models:
        print(f"== {name}", flush=True)
        models = _variants(name, args.imgsz)
        gflops = {k: count_gflops(m, args.imgsz) for k, m in models.items()}
        entry: dict = {
            "gflops": gflops,
            "widths": {k: _widths(m) for k, m in models.items()},
            "round_to": {k: getattr(m, "prune_info", {}).get("round_to") for k, m in models.items()},
            "timings": {},
        }
        with tempfile.TemporaryDirectory() as tmp:
            paths = {
                k: export_onnx(m, imgsz=args.imgsz, out_dir=tmp, name=k.replace("=", "")) for k, m in models.items()
            }
            for backend in backends:
                for threads in thread_counts:
                    cell = speed_cells(interleaved(_sessions(paths, backend, threads), args.rounds), gflops)
                    entry["timings"][f"{backend}/t{threads}"] = cell
                    print(
                        f"{name} {backend} t{threads}: "
                        + ", ".join(f"{k} {v['median_ms']:.1f} ms eff {v['eff']:.2f}" for k, v in cell.items()),
                        flush=True,
                    )
            if args.profile:
                prof = {k: ort_profile(paths[k]) for k in ("base", "default")}
                macs = {k: _layer_macs(models[k], args.imgsz) for k in ("base", "default")}
                entry["profile"] = {
                    "ort_t1": prof,
                    "layer_macs": {k: {str(i): v for i, v in m.items()} for k, m in macs.items()},
                }
                (out / "profiles" / f"{name}.json").write_text(json.dumps(entry["profile"], indent=1))
        results["models"][name] = entry
        (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "LATENCY.md").write_text(markdown(results))
    return results


def markdown(results: dict) -> str:
    """Return the tables of ``results`` as markdown."""
    m = results["machine"]
    lines = [
        "# Speed per removed MAC at 2x fewer MACs (CPU)",
        "",
        f"- date: {results['date']}; CPU: {m['cpu']} ({m['cores']} cores); torch {m['torch']}, onnxruntime "
        f"{m.get('onnxruntime')}, openvino {m.get('openvino', '-')}",
        f"- command: `{results['command']}`",
        f"- imgsz {results['imgsz']}, batch 1, {results['rounds']} interleaved rounds per cell (every variant once per "
        "round, order rotating), medians. `eff` = speed-up / MACs cut (GFLOPs as Ultralytics counts them); `x` = "
        f"speed-up. round_to=auto chose {m['auto_round_to']['value']} here ({m['auto_round_to']['reason']}).",
        "",
    ]
    keys = sorted({k for e in results["models"].values() for k in e["timings"]})
    header = (
        "| model | MACs cut (default / r8) | "
        + " | ".join(f"{k} default x (eff) | {k} r8 x (eff)" for k in keys)
        + " |"
    )
    lines += [header, "|" + "---|" * (2 + 2 * len(keys))]
    for name, e in results["models"].items():
        g = e["gflops"]
        row = [name, f"{g['base'] / g['default']:.2f} / {g['base'] / g['round_to=8']:.2f}"]
        for k in keys:
            cell = e["timings"].get(k, {})
            for label in ("default", "round_to=8"):
                c = cell.get(label)
                row.append("-" if c is None else f"{c['speedup']:.2f}x ({c['eff']:.2f})")
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Medians (ms):",
        "",
        "| model | backend/threads | base | default | round_to=8 |",
        "|---|---|---:|---:|---:|",
    ]
    for name, e in results["models"].items():
        for k, cell in e["timings"].items():
            lines.append(
                f"| {name} | {k} | "
                + " | ".join(f"{cell[v]['median_ms']:.1f}" for v in ("base", "default", "round_to=8"))
                + " |"
            )
    profiled = {n: e["profile"] for n, e in results["models"].items() if "profile" in e}
    if profiled:
        lines += ["", "## Where the time goes (ONNX Runtime profile, 1 thread, base -> default prune)", ""]
        for name, p in profiled.items():
            lines += profile_lines(name, p)
    return "\n".join(lines) + "\n"


def profile_lines(name: str, p: dict) -> list[str]:
    """Markdown lines for one model's profile: op types, then the five layers whose time fell least per MAC cut."""
    prof, macs = p["ort_t1"], p["layer_macs"]
    base_ops, pruned_ops = prof["base"]["by_op_us"], prof["default"]["by_op_us"]
    total_b, total_p = sum(base_ops.values()), sum(pruned_ops.values())
    lines = [
        f"### {name}: {total_b / 1e3:.1f} ms -> {total_p / 1e3:.1f} ms in kernels",
        "",
        "| op | base ms | pruned ms | x |",
        "|---|---:|---:|---:|",
    ]
    for op in sorted(base_ops, key=base_ops.get, reverse=True)[:8]:
        b, q = base_ops[op], pruned_ops.get(op, 0.0)
        lines.append(f"| {op} | {b / 1e3:.2f} | {q / 1e3:.2f} | {b / q if q else float('inf'):.2f} |")
    layers = []
    for k, b in prof["base"]["by_layer_us"].items():
        q = prof["default"]["by_layer_us"].get(k)
        mb, mp = macs["base"].get(k, 0.0), macs["default"].get(k, 0.0)
        if q and mb and mp and b > 0.01 * total_b:
            layers.append((k, b, q, mb / mp))
    layers.sort(key=lambda r: (r[1] / r[2]) / r[3])
    lines += ["", "| layer | base ms | pruned ms | time x | MACs x | time saved ms |", "|---|---:|---:|---:|---:|---:|"]
    for k, b, q, cut in layers[:6]:
        lines.append(f"| {k} | {b / 1e3:.2f} | {q / 1e3:.2f} | {b / q:.2f} | {cut:.2f} | {(b - q) / 1e3:.2f} |")
    return [*lines, ""]


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--profile", action="store_true", help="ONNX Runtime per-node profile of base vs default")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "latency"))
    run(parser.parse_args())


if __name__ == "__main__":
    main()
