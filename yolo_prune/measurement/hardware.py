"""What the deployment hardware wants: a channel block (``round_to="auto"``), MACs padded to it, per-conv latency.

Measured on the development machine (benchmarks/RESULTS.md, benchmarks/results/latency/): a removed MAC buys less time
at an odd width than at a width the kernels can tile, because the CPU kernels of ONNX Runtime (MLAS), OpenVINO and
PyTorch (oneDNN) work on blocks of channels: 16 floats per AVX-512 register, 8 per AVX2 register. So:

* `auto_round_to` picks the width multiple for a backend and device: 16 on a CPU with AVX-512 (any backend: MLAS,
  oneDNN and OpenVINO all block by the register width), 8 on other CPUs (AVX2, NEON) and on NVIDIA GPUs, where
  NVIDIA's performance guide asks for channel counts that are multiples of 8 for FP16 Tensor Cores (16 for INT8).
  The choice and its reason are logged and written in ``prune_info``/the report; an integer still works as before.
* `padded_macs` counts conv MACs with every channel count padded up to that block: the work a blocked kernel
  executes. The MACs target is met on this count when the block is above 1, so "2x fewer MACs" means 2x less
  executed work.
* `LatencyTable` is a per-layer latency model of a backend: each conv of the network (with its activation, BN
  folded, at its real input size) is timed alone on the backend once and cached; a network's predicted latency is
  the sum over its convs plus the rest of the network (concat, upsample, attention, decoding), measured once on the
  unpruned model and held fixed. It makes a latency target cheap and deterministic to search; the final model is
  always measured for real (see ``yolo_prune.prune``'s ``target_latency``).

Examples:
    >>> from yolo_prune.measurement.hardware import LatencyTable, auto_round_to, padded_macs
    >>> auto_round_to("onnx", "cpu")
    RoundTo(value=16, reason='CPU with AVX-512 (onnx): 16-channel blocks')
    >>> table = LatencyTable("onnx", imgsz=640, threads=1, path="runs/prune/exp/latency/onnx-640-t1.json")
    >>> table.predict(model.model)  # ms, convs only

Over 400 lines: channel-block detection, padded MACs and the per-conv latency table (with its cache) share one
description of a conv (`ConvSpec`).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import platform
import statistics
import time
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config.checks import check_round_to

__all__ = [
    "TABLE_BACKENDS",
    "auto_round_to",
    "compare_latency",
    "conv_specs",
    "ConvSpec",
    "cpu_name",
    "LatencyTable",
    "padded_macs",
    "resolve_round_to",
    "RoundTo",
]

TABLE_BACKENDS = ("torch", "onnx")
# ONNX Runtime node types that a single-conv table entry also contains: the conv (fused with its activation or not),
# SiLU as ORT fuses it, and the NCHWc layout reorders its blocked kernels add around convs.
CONV_OPS = frozenset({"Conv", "FusedConv", "NchwcConv", "QuickGelu", "Sigmoid", "Mul", "ReorderInput", "ReorderOutput"})


@dataclass(frozen=True)
class RoundTo:
    """A width multiple and why it was chosen."""

    value: int
    reason: str


def cpu_name() -> str:
    """Return the CPU model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpu_capability() -> str:
    """Return PyTorch's view of the CPU's vector unit (``AVX512``, ``AVX2``, ``DEFAULT``, ...)."""
    with contextlib.suppress(Exception):
        return str(torch.backends.cpu.get_cpu_capability())
    return "DEFAULT"


def auto_round_to(backend: str = "onnx", device: str | None = "cpu") -> RoundTo:
    """Pick the channel multiple for ``backend`` on ``device`` (this machine's CPU, or a GPU).

    Args:
        backend: Deployment backend (``torch``, ``onnx``, ``openvino``); CPU kernels of all three block channels by the
            vector register width.
        device: ``cpu`` (or None) for this machine's CPU; a GPU index or ``cuda:N`` for an NVIDIA GPU.

    Returns:
        The multiple and a one-line reason for logs and reports.
    """
    backend = str(backend).lower()
    if device is not None and str(device).lower() not in {"cpu", ""}:
        return RoundTo(8, f"GPU ({backend}): multiples of 8 for FP16 Tensor Cores (NVIDIA performance guide)")
    capability = _cpu_capability()
    if capability.startswith("AVX512"):
        return RoundTo(16, f"CPU with AVX-512 ({backend}): 16-channel blocks")
    return RoundTo(8, f"CPU with {capability} ({backend}): 8-channel blocks")


def resolve_round_to(round_to: int | str, backend: str = "onnx", device: str | None = "cpu") -> RoundTo:
    """Return the channel multiple for ``round_to`` (``"auto"``: `auto_round_to`, or a positive integer), or raise a
    one-line error (the value is checked by `yolo_prune.config.checks.check_round_to`)."""
    value = check_round_to(round_to)
    return auto_round_to(backend, device) if value == "auto" else RoundTo(int(value), "given")


@dataclass(frozen=True)
class ConvSpec:
    """One conv call of a network as a kernel sees it (BN folded): shapes, hyper-parameters and activation."""

    cin: int
    cout: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    height: int
    width: int
    act: str

    def key(self) -> str:
        """Return a stable text key for the cache."""
        k, s, p, d = (f"{a}x{b}" for a, b in (self.kernel, self.stride, self.padding, self.dilation))
        return f"{self.cin}-{self.cout}-k{k}-s{s}-p{p}-d{d}-g{self.groups}-{self.height}x{self.width}-{self.act}"

    def macs(self, block: int = 1) -> int:
        """Return the MACs of this conv, channel counts padded up to ``block`` (1: the plain count)."""

        def pad(n: int) -> int:
            return math.ceil(n / block) * block

        kh, kw = self.kernel
        oh = (self.height + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        ow = (self.width + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        if self.groups == self.cin == self.cout:  # depthwise: one filter per channel
            return pad(self.cout) * kh * kw * oh * ow
        return pad(self.cout) * pad(self.cin // self.groups) * kh * kw * oh * ow


def _activations(model: nn.Module) -> dict[nn.Conv2d, str]:
    """Map each ``nn.Conv2d`` to the activation applied right after it by its Ultralytics wrapper (or ``none``)."""
    out: dict[nn.Conv2d, str] = {}
    for module in model.modules():
        conv, act = getattr(module, "conv", None), getattr(module, "act", None)
        if isinstance(conv, nn.Conv2d) and isinstance(act, nn.Module) and not isinstance(act, nn.Identity):
            out[conv] = type(act).__name__.lower()
    return out


def conv_specs(model: nn.Module, imgsz: int = 640) -> list[ConvSpec]:
    """Return every conv call of ``model`` on a ``1 x 3 x imgsz x imgsz`` input, BN folded, in call order.

    Args:
        model: An Ultralytics detection module (never modified: a fused copy is traced).
        imgsz: Square input size.

    Returns:
        One `ConvSpec` per call (a conv called twice appears twice).
    """
    module = deepcopy(model).float().cpu().eval()
    if hasattr(module, "fuse"):
        with contextlib.redirect_stdout(io.StringIO()):
            module = module.fuse(verbose=False)
    acts = _activations(module)
    specs: list[ConvSpec] = []

    def hook(conv: nn.Conv2d, inputs: tuple, _output: torch.Tensor) -> None:
        h, w = inputs[0].shape[-2:]
        pad = conv.padding if isinstance(conv.padding, tuple) else (0, 0)
        specs.append(
            ConvSpec(
                conv.in_channels,
                conv.out_channels,
                tuple(conv.kernel_size),
                tuple(conv.stride),
                tuple(pad),
                tuple(conv.dilation),
                conv.groups,
                int(h),
                int(w),
                acts.get(conv, "none"),
            )
        )

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.inference_mode():
            module(torch.zeros(1, 3, imgsz, imgsz))
    finally:
        for h in handles:
            h.remove()
    return specs


def padded_macs(model: nn.Module, imgsz: int = 640, block: int = 1) -> float:
    """Return the conv MACs of ``model`` at ``imgsz`` with channel counts padded up to ``block``.

    Args:
        model: An Ultralytics detection module.
        imgsz: Square input size.
        block: Channel block of the target kernels (1: the plain count of conv MACs).

    Returns:
        MACs (multiply-accumulates) of all conv calls.
    """
    return float(sum(spec.macs(block) for spec in conv_specs(model, imgsz)))


_ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


def _spec_module(spec: ConvSpec) -> nn.Module:
    """Build the conv (+ activation) that ``spec`` describes, with seeded random weights."""
    torch.manual_seed(0)
    conv = nn.Conv2d(spec.cin, spec.cout, spec.kernel, spec.stride, spec.padding, spec.dilation, spec.groups, bias=True)
    act = _ACTIVATIONS.get(spec.act)
    return (nn.Sequential(conv, act()) if act else conv).eval()


class LatencyTable:
    """Per-conv latency of one backend at one input size and thread count, measured lazily and cached in a JSON file.

    Args:
        backend: ``torch`` (eager PyTorch) or ``onnx`` (ONNX Runtime); CPU only.
        imgsz: Input size of the networks it will predict (a conv's input size is part of its key).
        threads: Intra-op threads for the measurements (1 is steadiest on a shared machine).
        path: JSON cache file; read if it exists and was written for the same backend, threads and CPU, written
            after each new measurement batch (`save`). None keeps the table in memory only.
        runs: Timed runs per conv, after ``warmup`` untimed ones; the fastest is kept (the run least disturbed by other
            load on the machine, which only ever adds time).
        warmup: Untimed runs per conv.
    """

    def __init__(
        self,
        backend: str = "onnx",
        imgsz: int = 640,
        threads: int = 1,
        path: str | Path | None = None,
        runs: int = 15,
        warmup: int = 3,
    ) -> None:
        backend = str(backend).lower()
        if backend not in TABLE_BACKENDS:
            raise ValueError(f"no latency table for backend '{backend}': choose one of {', '.join(TABLE_BACKENDS)}")
        self.backend, self.imgsz, self.threads = backend, int(imgsz), max(1, int(threads))
        self.runs, self.warmup = max(1, int(runs)), max(0, int(warmup))
        self.path = None if path is None else Path(path)
        self.meta = {"backend": backend, "threads": self.threads, "cpu": cpu_name(), "versions": self._versions()}
        self.entries: dict[str, float] = {}
        self.measured = 0  # convs timed by this object (not read from the cache)
        if self.path is not None and self.path.is_file():
            data = json.loads(self.path.read_text())
            if data.get("meta") == self.meta:
                self.entries = {str(k): float(v) for k, v in data.get("convs_ms", {}).items()}

    def _versions(self) -> dict[str, str]:
        versions = {"torch": torch.__version__}
        if self.backend == "onnx":
            import onnxruntime

            versions["onnxruntime"] = onnxruntime.__version__
        return versions

    def conv_ms(self, spec: ConvSpec) -> float:
        """Return the latency of one conv (+ activation) in ms (fastest run), timing it if it is not in the table."""
        key = spec.key()
        if key not in self.entries:
            self.entries[key] = self._time(spec)
            self.measured += 1
        return self.entries[key]

    def predict(self, model: nn.Module) -> float:
        """Return the summed latency of every conv call of ``model`` (ms), timing convs the table lacks."""
        total = sum(self.conv_ms(spec) for spec in conv_specs(model, self.imgsz))
        self.save()
        return total

    def save(self) -> None:
        """Write the table to ``path`` atomically (no-op without a path)."""
        if self.path is None:
            return
        from .report import write_atomic

        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps({"meta": self.meta, "convs_ms": self.entries}, indent=1, sort_keys=True))

    def _time(self, spec: ConvSpec) -> float:
        module = _spec_module(spec)
        x = torch.rand(1, spec.cin, spec.height, spec.width)
        if self.backend == "torch":
            held = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                with torch.inference_mode():
                    return fastest_ms(lambda: module(x), self.runs, self.warmup)
            finally:
                torch.set_num_threads(held)
        import onnxruntime as ort

        buffer = io.BytesIO()
        with warnings_silenced():
            torch.onnx.export(module, (x,), buffer, input_names=["x"], opset_version=17, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = self.threads, 1
        session = ort.InferenceSession(buffer.getvalue(), sess_options=opts, providers=["CPUExecutionProvider"])
        feed = {"x": x.numpy()}
        return fastest_ms(lambda: session.run(None, feed), self.runs, self.warmup)

    def rest_ms(self, model: nn.Module, convs_ms: float) -> float:
        """Return the time ``model`` spends outside its convs (concat, upsample, pooling, attention, decoding), in ms.

        ONNX Runtime: from its per-node profile of the whole model (1 run of warm-up, then 10 profiled), the share of
        kernel time in nodes that are not convs (or the activations and layout reorders fused with them), scaled to
        ``convs_ms``; a ratio within the same runs, so other load on the machine cancels out. PyTorch: the fastest
        whole-model run minus ``convs_ms``.
        """
        if self.backend == "torch":
            return max(0.0, self.whole_ms(model) - convs_ms)
        import tempfile

        import onnxruntime as ort

        from .measure import export_onnx

        with tempfile.TemporaryDirectory(prefix="yolo_prune_latency_") as tmp:
            path = export_onnx(model, imgsz=self.imgsz, out_dir=tmp, name="whole")
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = self.threads, 1
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(tmp) / "profile")
            session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
            inp = session.get_inputs()[0]
            feed = {inp.name: torch.rand(1, 3, self.imgsz, self.imgsz).numpy()}
            for _ in range(11):
                session.run(None, feed)
            events = json.loads(Path(session.end_profiling()).read_text())
        conv = rest = 0.0
        for e in events:
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                if e.get("args", {}).get("op_name") in CONV_OPS:
                    conv += float(e["dur"])
                else:
                    rest += float(e["dur"])
        return convs_ms * rest / conv if conv > 0 else 0.0

    def whole_ms(self, model: nn.Module) -> float:
        """Return the fastest of ``runs`` runs of the whole ``model`` on this table's backend and threads (ms)."""
        import tempfile

        held = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with tempfile.TemporaryDirectory(prefix="yolo_prune_latency_") as tmp:
                run = _runner(model, self.backend, self.imgsz, self.threads, Path(tmp), "whole")
                return fastest_ms(run, self.runs, self.warmup)
        finally:
            torch.set_num_threads(held)


def fastest_ms(fn, runs: int, warmup: int) -> float:
    """Call ``fn`` ``warmup`` times, then time ``runs`` calls and return the fastest in ms."""
    for _ in range(warmup):
        fn()
    best = math.inf
    for _ in range(max(1, runs)):
        t0 = time.perf_counter()
        fn()
        best = min(best, (time.perf_counter() - t0) * 1e3)
    return best


@contextlib.contextmanager
def warnings_silenced():
    """Silence the exporter's deprecation chatter while a single conv is exported."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _runner(module: nn.Module, backend: str, imgsz: int, threads: int, folder: Path, name: str):
    """Return a no-argument callable that runs ``module`` once on ``backend`` (CPU)."""
    x = torch.rand(1, 3, imgsz, imgsz)
    if backend == "torch":
        fused = deepcopy(module).float().cpu().eval()
        if hasattr(fused, "fuse"):
            with contextlib.redirect_stdout(io.StringIO()):
                fused = fused.fuse(verbose=False)

        def run_torch() -> None:
            with torch.inference_mode():
                fused(x)

        return run_torch
    import onnxruntime as ort

    from .measure import export_onnx

    path = export_onnx(module, imgsz=imgsz, out_dir=folder, name=name)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


def compare_latency(
    base: nn.Module, pruned: nn.Module, backend: str = "onnx", imgsz: int = 640, threads: int = 1, rounds: int = 20
) -> dict:
    """Time two networks side by side on a CPU backend (interleaved rounds) and return the latency ratio.

    Each round runs the base and the pruned network once, in alternating order, so both see the same machine load.

    Args:
        base: The unpruned module.
        pruned: The pruned module.
        backend: ``torch`` (eager, fused) or ``onnx`` (Ultralytics export, ONNX Runtime).
        imgsz: Square input size.
        threads: Intra-op threads.
        rounds: Interleaved rounds (after 3 untimed ones each).

    Returns:
        ``base_ms`` and ``pruned_ms`` (medians), ``ratio`` (pruned / base medians) and ``spread`` (the 10th and 90th
        percentiles of the per-round ratios: the noise of this measurement).
    """
    import tempfile

    backend = str(backend).lower()
    if backend not in TABLE_BACKENDS:
        raise ValueError(f"cannot compare latency on backend '{backend}': choose one of {', '.join(TABLE_BACKENDS)}")
    held = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        with tempfile.TemporaryDirectory(prefix="yolo_prune_latency_") as tmp:
            runs = [_runner(m, backend, imgsz, threads, Path(tmp), n) for m, n in ((base, "base"), (pruned, "pruned"))]
            for _ in range(3):
                for run in runs:
                    run()
            times: list[list[float]] = [[], []]
            for i in range(max(1, int(rounds))):
                order = (0, 1) if i % 2 == 0 else (1, 0)
                for k in order:
                    t0 = time.perf_counter()
                    runs[k]()
                    times[k].append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(held)
    per_round = sorted(p / b for b, p in zip(*times, strict=True))
    q = statistics.quantiles(per_round, n=10) if len(per_round) > 1 else per_round * 9
    base_ms, pruned_ms = statistics.median(times[0]), statistics.median(times[1])
    return {
        "backend": backend,
        "threads": int(threads),
        "imgsz": int(imgsz),
        "rounds": len(per_round),
        "base_ms": base_ms,
        "pruned_ms": pruned_ms,
        "ratio": pruned_ms / base_ms,
        "spread": [q[0], q[-1]],
    }
