"""yolo-prune against stock torch-pruning at the same MACs: how much of the cut turns into speed.

Stock torch-pruning (``MetaPruner``, L2 group magnitude, the whole Detect head in ``ignored_layers``, as its YOLO
examples do) runs only on the families it can trace: YOLOv3u, v5u and v6 (v8 and later fail or hang, see
``shared/ULTRALYTICS_NOTES.md`` section 7). For each such model, built from its yaml (widths, and so latency, do not
depend on the weights), the script

1. prunes with stock torch-pruning at ``--tp-ratio`` (0.5: half of every prunable group);
2. prunes with ``yolo_prune.prune(model, target_macs=...)`` at its defaults (``round_to="auto"``, padded-MACs
   target), the target searched so that it keeps at most the plain MACs that torch-pruning kept; and the same with
   ``round_to=8`` (does eager PyTorch, where the early high-resolution layers are memory-bound, gain from widths
   below one 16-channel block?);
3. exports every variant once through the Ultralytics exporter and times them side by side in interleaved rounds on
   ONNX Runtime (CPU, 1 thread) and in eager PyTorch (fused, 1 thread), 640 px, batch 1.

``eff`` = speed-up / MACs cut, with MACs counted as Ultralytics counts them (THOP GFLOPs, unpadded). The widths of the
first layers and of the head's hidden convs are written beside the timings: they are where the two differ.

Usage:
    python benchmarks/peer.py                                   # yolov5nu, yolov3-tinyu, yolov6n; ~10 min on 2 cores
    python benchmarks/peer.py --models yolov5nu --rounds 5 --out /tmp/peer   # quick check

Outputs in ``--out`` (default ``benchmarks/results/peer``): ``results.json`` and ``PEER.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # use this checkout's yolo_prune when run from the repo
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402

MODELS = ("yolov5nu", "yolov3-tinyu", "yolov6n")


def torch_pruning_stock(model: nn.Module, ratio: float, imgsz: int = 640) -> nn.Module:
    """Prune a copy of ``model`` the way torch-pruning's own YOLO example does: L2, ``MetaPruner``, Detect ignored."""
    import copy

    import torch_pruning as tp
    from ultralytics.nn.modules import Detect

    module = copy.deepcopy(model).eval()
    for p in module.parameters():
        p.requires_grad_(True)
    example = torch.zeros(1, 3, imgsz, imgsz)
    ignored = [m for m in module.modules() if isinstance(m, Detect)]
    pruner = tp.pruner.MetaPruner(
        module,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=ignored,
    )
    pruner.step()
    return module


def _widths(model: nn.Module) -> dict[str, int]:
    """Output widths of the first five convs and of the Detect head's hidden convs (first level)."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    first = {n.removesuffix(".conv"): m.out_channels for n, m in convs[:5]}
    head_index = len(model.model) - 1
    head = {
        n.removesuffix(".conv"): m.out_channels
        for n, m in convs
        if n.startswith(f"model.{head_index}.cv") and ".0.0." in n
    }
    return {**first, **head}


def _match_macs(base, kept: float, g_base: float, imgsz: int, steps: int = 10, **options):
    """Return ``prune(base, target_macs=t)`` (defaults otherwise) for the largest ``t`` whose plain MACs (THOP, as
    torch-pruning's result is counted) are at most ``kept`` of the base, and ``t``.

    The target of `yolo_prune.prune` counts MACs padded to the channel block, so the same number would cut more plain
    MACs than torch-pruning did; searching ``t`` compares the two at equal plain MACs.
    """
    from yolo_prune import prune
    from yolo_prune.measurement.measure import count_gflops

    lo, hi, best = kept * 0.8, 1.0, None
    for _ in range(steps):
        t = (lo + hi) / 2
        pruned = prune(base, target_macs=t, imgsz=imgsz, verbose=False, **options)
        if count_gflops(pruned.model, imgsz) / g_base <= kept:
            lo, best = t, (pruned, t)
        else:
            hi = t
    if best is None:
        best = (prune(base, target_macs=lo, imgsz=imgsz, verbose=False, **options), lo)
    return best


def _file_name(label: str) -> str:
    """A file stem for a variant label (``yolo-prune round_to=8`` -> ``yolo_prune_round_to8``)."""
    return label.replace("-", "_").replace(" ", "_").replace("=", "")


def run(args: argparse.Namespace) -> dict:
    """Run the comparison and return the results dict."""
    import torch_pruning
    from latency import _sessions, interleaved, speed_cells
    from ultralytics import YOLO

    from yolo_prune.measurement.hardware import _runner, auto_round_to, cpu_name
    from yolo_prune.measurement.measure import count_gflops, export_onnx

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import onnxruntime

    results: dict = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_name(),
            "cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_pruning": getattr(torch_pruning, "__version__", "?"),
            "onnxruntime": onnxruntime.__version__,
            "auto_round_to": auto_round_to("onnx", "cpu").__dict__,
        },
        "imgsz": args.imgsz,
        "rounds": args.rounds,
        "tp_ratio": args.tp_ratio,
        "models": {},
    }
    for name in args.models:
        print(f"== {name}", flush=True)
        base = YOLO(f"{name}.yaml")
        models: dict[str, nn.Module] = {"base": base.model}
        models["torch-pruning"] = torch_pruning_stock(base.model, args.tp_ratio, args.imgsz)
        g_base = count_gflops(base.model, args.imgsz)
        kept = count_gflops(models["torch-pruning"], args.imgsz) / g_base
        pruned, target = _match_macs(base, kept, g_base, args.imgsz)
        models["yolo-prune"] = pruned.model
        models["yolo-prune round_to=8"] = _match_macs(base, kept, g_base, args.imgsz, round_to=8)[0].model
        gflops = {k: count_gflops(m, args.imgsz) for k, m in models.items()}
        entry: dict = {
            "gflops": gflops,
            "yolo_prune_target_macs": target,
            "yolo_prune_info": {k: pruned.prune_info.get(k) for k in ("round_to", "round_to_reason", "ratio")},
            "widths": {k: _widths(m) for k, m in models.items()},
            "timings": {},
        }
        with tempfile.TemporaryDirectory() as tmp:
            paths = {k: export_onnx(m, imgsz=args.imgsz, out_dir=tmp, name=_file_name(k)) for k, m in models.items()}
            backends = {
                "onnxruntime/t1": _sessions(paths, "onnxruntime", 1),
                "torch/t1": {k: _runner(m, "torch", args.imgsz, 1, Path(tmp), k) for k, m in models.items()},
            }
            for key, runs in backends.items():
                cell = speed_cells(interleaved(runs, args.rounds), gflops)
                entry["timings"][key] = cell
                print(
                    f"{name} {key}: "
                    + ", ".join(
                        f"{k} {v['median_ms']:.1f} ms x{v['speedup']:.2f} eff {v['eff']:.2f}" for k, v in cell.items()
                    ),
                    flush=True,
                )
        results["models"][name] = entry
        (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "PEER.md").write_text(markdown(results))
    return results


def markdown(results: dict) -> str:
    """Return the tables of ``results`` as markdown."""
    m = results["machine"]
    lines = [
        "# yolo-prune against stock torch-pruning at the same MACs (CPU)",
        "",
        f"- date: {results['date']}; CPU: {m['cpu']} ({m['cores']} cores); torch {m['torch']}, torch-pruning "
        f"{m['torch_pruning']}, onnxruntime {m['onnxruntime']}",
        f"- command: `{results['command']}`",
        f"- imgsz {results['imgsz']}, batch 1, 1 thread, {results['rounds']} interleaved rounds (every variant once "
        "per round, order rotating), medians; [10-90 %] of the per-round speed-ups. `eff` = speed-up / MACs cut "
        f"(THOP GFLOPs). torch-pruning: MetaPruner, L2, pruning_ratio={results['tp_ratio']}, Detect ignored. "
        "yolo-prune: `prune(target_macs=t)` at its defaults, t searched so that its plain MACs cut is at least "
        f"torch-pruning's (round_to=auto -> {m['auto_round_to']['value']}).",
        "",
        "| model | variant | GFLOPs | MACs cut | ONNX Runtime ms | x (eff) [10-90 %] | PyTorch ms "
        "| x (eff) [10-90 %] |",
        "|---|---|---:|---:|---:|---|---:|---|",
    ]
    for name, e in results["models"].items():
        for label in e["gflops"]:
            row = [name, label, f"{e['gflops'][label]:.2f}", f"{e['gflops']['base'] / e['gflops'][label]:.2f}x"]
            for key in ("onnxruntime/t1", "torch/t1"):
                c = e["timings"][key][label]
                lo, hi = c["speedup_10_90"]
                row += [f"{c['median_ms']:.1f}", f"{c['speedup']:.2f}x ({c['eff']:.2f}) [{lo:.2f}-{hi:.2f}]"]
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Widths (first five convs; the Detect head's first-level hidden convs):", ""]
    for name, e in results["models"].items():
        keys = list(e["widths"]["base"])
        lines += [f"### {name}", "", "| layer | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
        for label, w in e["widths"].items():
            lines.append(f"| {label} | " + " | ".join(str(w.get(k, "-")) for k in keys) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--tp-ratio", type=float, default=0.5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "peer"))
    run(parser.parse_args())


if __name__ == "__main__":
    main()
