"""`yolo_prune.measurement.hardware`: round_to="auto", MACs padded to the channel block, the per-conv latency table, and
the latency target that uses it (`prune(target_latency=..., sensitivity=...)`, `yolo-prune prune
target_latency=...`)."""

from __future__ import annotations

import json

import pytest
import torch
from test_allocate import synthetic_scan
from torch import nn
from ultralytics import YOLO

from yolo_prune import prune
from yolo_prune.integration.pipeline import parse_prune_args
from yolo_prune.measurement.hardware import (
    ConvSpec,
    LatencyTable,
    auto_round_to,
    compare_latency,
    conv_specs,
    padded_macs,
    resolve_round_to,
)
from yolo_prune.policy.prune import CALIBRATION_PASSES, CALIBRATION_TOLERANCE


def _widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_auto_round_to_follows_the_cpu_and_device() -> None:
    """16 on an AVX-512 CPU, 8 elsewhere and on a GPU; integers pass through; bad values are one-line errors.

    Mutations caught: a fixed 8 (or 16) whatever the CPU; the GPU branch ignored; "auto" not resolved; 0 or a float
    accepted.
    """
    wanted = 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8
    chosen = auto_round_to("onnx", "cpu")
    assert chosen.value == wanted and ("AVX-512" in chosen.reason) == (wanted == 16)
    assert auto_round_to("onnx", "0").value == 8 and "GPU" in auto_round_to("torch", "cuda:0").reason
    assert resolve_round_to("auto", "onnx", "cpu") == chosen
    assert resolve_round_to(32).value == 32 and resolve_round_to(32).reason == "given"
    for bad in (0, -8, 2.5, "eight", True):
        with pytest.raises(ValueError, match="round_to must be 'auto' or a positive integer"):
            resolve_round_to(bad)


def test_prune_round_to_auto_is_the_default_and_reported() -> None:
    """`prune` rounds kept widths to the auto multiple by default and writes the value, its reason and the MACs block.

    Mutations caught: the default left at 8 on an AVX-512 machine; the value or the reason missing from prune_info.
    """
    chosen = auto_round_to("torch", "cpu")
    pruned = prune("yolov8n.yaml", ratio=0.5, imgsz=64, device="cpu", verbose=False)
    info = pruned.prune_info
    assert info["round_to"] == chosen.value and info["round_to_reason"] == chosen.reason
    assert info["macs_block"] == chosen.value
    before = _widths(YOLO("yolov8n.yaml").model)
    after = _widths(pruned.model)
    shrunk = [a for b, a in zip(before, after, strict=True) if a < b]
    assert shrunk and all(a % chosen.value == 0 for a in shrunk)


def test_padded_macs_counts_the_blocks_a_kernel_executes() -> None:
    """A 3 -> 20 3x3 conv on 8x8 (stride 1, pad 1) is 20*3*9*64 MACs plain and 32*16*9*64 at block 16; depthwise
    convs pad only their channels.

    Mutations caught: padding skipped, padding the output only, the depthwise case padded twice, wrong output size.
    """
    plain = nn.Sequential(nn.Conv2d(3, 20, 3, 1, 1), nn.Conv2d(20, 20, 3, 2, 1, groups=20))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = plain

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    assert padded_macs(Net(), imgsz=8) == 20 * 3 * 9 * 64 + 20 * 9 * 16
    assert padded_macs(Net(), imgsz=8, block=16) == 32 * 16 * 9 * 64 + 32 * 9 * 16
    spec = ConvSpec(3, 20, (3, 3), (1, 1), (1, 1), (1, 1), 1, 8, 8, "silu")
    assert spec.macs() == 20 * 3 * 9 * 64 and spec.key() == "3-20-k3x3-s1x1-p1x1-d1x1-g1-8x8-silu"


def test_target_macs_is_met_on_padded_macs() -> None:
    """The MACs target is measured on MACs padded to the hardware block and the achieved value is that measurement.

    Mutation caught: the search still counting plain THOP MACs (achieved differs from the padded measurement).
    """
    base = YOLO("yolov8n.yaml")
    pruned = prune(base, target_macs=0.5, imgsz=64, device="cpu", verbose=False)
    block = pruned.prune_info["macs_block"]
    kept = padded_macs(pruned.model, 64, block) / padded_macs(base.model, 64, block)
    found = pruned.prune_info["target"]
    assert found["achieved"] == pytest.approx(kept, rel=1e-9) and kept <= 0.5


def test_conv_specs_see_every_conv_call_with_bn_folded() -> None:
    """One spec per conv call at its real input size, activation named, and the input model left untouched.

    Mutations caught: hooks left registered, the model fused in place, a wrong input size for the stem.
    """
    model = YOLO("yolov8n.yaml").model
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    specs = conv_specs(model, imgsz=64)
    assert len(specs) == convs
    assert specs[0].cin == 3 and (specs[0].height, specs[0].width) == (64, 64) and specs[0].act == "silu"
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), "the caller's model is not fused"
    assert all(not m._forward_hooks for m in model.modules())


def test_latency_table_is_cached_per_backend_threads_and_cpu(tmp_path) -> None:
    """Convs are timed once and cached; a table for other threads does not reuse the file; bad backend -> one line.

    Mutations caught: the cache not written or not read (convs timed again), the meta not checked (a 2-thread table
    reused for 1 thread), a non-positive time accepted.
    """
    model = YOLO("yolov8n.yaml").model
    path = tmp_path / "latency" / "onnx-64-t1.json"
    first = LatencyTable("onnx", imgsz=64, threads=1, path=path, runs=3, warmup=1)
    predicted = first.predict(model)
    unique = len({s.key() for s in conv_specs(model, 64)})
    assert first.measured == unique and predicted > 0 and path.is_file()
    saved = json.loads(path.read_text())
    assert saved["meta"]["threads"] == 1 and len(saved["convs_ms"]) == unique
    assert all(v > 0 for v in saved["convs_ms"].values())
    again = LatencyTable("onnx", imgsz=64, threads=1, path=path, runs=3, warmup=1)
    assert again.predict(model) == pytest.approx(predicted) and again.measured == 0
    other = LatencyTable("onnx", imgsz=64, threads=2, path=path, runs=3, warmup=1)
    assert other.entries == {}
    with pytest.raises(ValueError, match="no latency table for backend 'tensorrt'"):
        LatencyTable("tensorrt")


def test_compare_latency_reports_medians_ratio_and_spread() -> None:
    """Interleaved timing returns both medians, their ratio and a 10-90 % spread of per-round ratios.

    Mutation caught: the ratio taken the wrong way round, or the spread not ordered.
    """
    base = YOLO("yolov8n.yaml").model
    pruned = prune("yolov8n.yaml", ratio=0.5, imgsz=64, device="cpu", verbose=False).model
    timed = compare_latency(base, pruned, backend="torch", imgsz=64, threads=1, rounds=6)
    assert timed["rounds"] == 6 and timed["ratio"] == pytest.approx(timed["pruned_ms"] / timed["base_ms"])
    assert timed["spread"][0] <= timed["spread"][1]


@pytest.mark.slow
def test_target_latency_with_sensitivity_uses_the_latency_table(tmp_path) -> None:
    """A latency target with sensitivity curves is allocated on the table's predicted latency, the final model is
    timed against the unpruned one, and the table is cached in the given file.

    The table is only a model of the network's latency, so each allocation is timed and, when the measured ratio misses
    the target by more than the noise, re-allocated at the goal the measurement implies (at most three passes); the
    pass closest to the target without exceeding it (by more than the noise) is kept.

    Mutations caught: the allocation measured in MACs (kind), a prediction above its goal, no real measurement of the
    final model, the table not written, no re-allocation after a miss, a goal not corrected by the measured ratio,
    keeping the last pass instead of the best one.
    """
    table = tmp_path / "onnx-96-t1.json"
    pruned = prune(
        "yolov8n.yaml",
        target_latency=0.7,
        backend="onnx",
        sensitivity=synthetic_scan(),
        imgsz=96,
        device="cpu",
        threads=1,
        runs=5,
        latency_table=table,
        verbose=False,
    )
    target = pruned.prune_info["target"]
    assert pruned.prune_info["allocation"]["kind"] == "latency" and target["kind"] == "latency"
    assert target["model"] == "latency table"
    timed = target["measured"]
    assert timed["backend"] == "onnx" and timed["rounds"] >= 10 and 0 < timed["ratio"]
    passes = target["calibration"]
    assert 1 <= len(passes) <= CALIBRATION_PASSES and passes[0]["goal"] == 0.7
    for k, step in enumerate(passes):
        assert step["predicted"] <= step["goal"] + 1e-9
        lo, hi = step["spread"]
        missed = abs(step["measured"] - 0.7) > max(CALIBRATION_TOLERANCE, (hi - lo) / 2)
        if k + 1 < len(passes):  # a pass is followed by another only after a miss, at the corrected goal
            assert missed
            corrected = min(1.0, max(0.01, step["predicted"] * 0.7 / step["measured"]))
            assert passes[k + 1]["goal"] == pytest.approx(corrected)
        elif len(passes) < CALIBRATION_PASSES:
            assert not missed  # stopped early only on a hit

    def rank(step: dict) -> tuple:
        tolerance = max(CALIBRATION_TOLERANCE, (step["spread"][1] - step["spread"][0]) / 2)
        return step["measured"] - 0.7 > tolerance, abs(step["measured"] - 0.7)

    best = min(passes, key=rank)
    assert timed["ratio"] == best["measured"] and target["achieved"] == best["predicted"]
    assert target["table"] == str(table) and json.loads(table.read_text())["convs_ms"]
    assert pruned.prune_info["channels_removed"] > 0


def test_prune_cli_latency_keys_are_checked() -> None:
    """`target_latency` and `backend` are prune keys; conflicting goals and a bad backend are one-line errors.

    Mutations caught: target_latency accepted together with ratio or target_macs, or with steps > 1; an unknown
    backend accepted; round_to=auto not resolved to an integer.
    """
    base = {"model": "yolov8n.yaml", "data": "shapes-tiny.yaml", "device": "cpu"}
    args = parse_prune_args({**base, "target_latency": 0.5})
    assert args["target_latency"] == 0.5 and args["target_macs"] is None and args["backend"] == "onnx"
    assert args["round_to"] == auto_round_to("onnx", "cpu").value
    assert parse_prune_args(base)["target_macs"] == 0.5
    with pytest.raises(ValueError, match="give one of ratio=, target_macs= and target_latency="):
        parse_prune_args({**base, "target_latency": 0.5, "ratio": 0.3})
    with pytest.raises(ValueError, match="give one of"):
        parse_prune_args({**base, "target_latency": 0.5, "target_macs": 0.5})
    with pytest.raises(ValueError, match="steps=1"):
        parse_prune_args({**base, "target_latency": 0.5, "steps": 2})
    with pytest.raises(ValueError, match="unknown latency backend 'tflite'"):
        parse_prune_args({**base, "backend": "tflite"})
    with pytest.raises(ValueError, match="target_latency"):
        parse_prune_args({**base, "target_latency": 1.5})
