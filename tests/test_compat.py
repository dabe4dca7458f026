"""Layout migrations: YOLO12 checkpoints saved by Ultralytics 8.3.x (AAttn with separate qk and v convs)."""

from __future__ import annotations

import copy
import types
from pathlib import Path

import pytest
import torch
from ultralytics.nn.modules import Conv
from ultralytics.nn.modules.block import AAttn
from ultralytics.nn.tasks import DetectionModel

from yolo_prune import prune, save_checkpoint
from yolo_prune.integration.checkpoint import load_yolo
from yolo_prune.integration.cli import main
from yolo_prune.integration.compat import aattn_qkv_order

IMGSZ = 64


def _rows(conv: Conv, rows: torch.Tensor) -> Conv:
    """A copy of ``conv`` keeping output rows ``rows`` (weights and BatchNorm)."""
    part = Conv(conv.conv.in_channels, len(rows), 1, act=False)
    with torch.no_grad():
        part.conv.weight.copy_(conv.conv.weight[rows])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(part.bn, name).copy_(getattr(conv.bn, name)[rows])
    return part


def _to_old_layout(model: DetectionModel) -> int:
    """Rewrite every ``AAttn`` into the 8.3.x layout: ``qk`` (all q, then all k) and ``v`` convs, no ``qkv``."""
    count = 0
    for m in model.modules():
        if isinstance(m, AAttn):
            width = m.num_heads * m.head_dim
            source = torch.empty(3 * width, dtype=torch.long)
            source[aattn_qkv_order(m.num_heads, m.head_dim)] = torch.arange(3 * width)  # old row -> qkv row
            m.qk, m.v = _rows(m.qkv, source[: 2 * width]), _rows(m.qkv, source[2 * width :])
            del m.qkv
            count += 1
    return count


def _old_forward(self: AAttn, x: torch.Tensor) -> torch.Tensor:
    """The area attention of Ultralytics 8.3.x, written from its published math (qk and v convs)."""
    B, C, H, W = x.shape
    N = H * W
    qk = self.qk(x).flatten(2).transpose(1, 2)
    v = self.v(x)
    pp = self.pe(v)
    v = v.flatten(2).transpose(1, 2)
    if self.area > 1:
        qk = qk.reshape(B * self.area, N // self.area, C * 2)
        v = v.reshape(B * self.area, N // self.area, C)
        B, N, _ = qk.shape
    q, k = qk.split([C, C], dim=2)
    q = q.transpose(1, 2).view(B, self.num_heads, self.head_dim, N)
    k = k.transpose(1, 2).view(B, self.num_heads, self.head_dim, N)
    v = v.transpose(1, 2).view(B, self.num_heads, self.head_dim, N)
    attn = ((q.transpose(-2, -1) @ k) * (self.head_dim**-0.5)).softmax(dim=-1)
    x = (v @ attn.transpose(-2, -1)).permute(0, 3, 1, 2)
    if self.area > 1:
        x = x.reshape(B // self.area, N * self.area, C)
        B, N, _ = x.shape
    x = x.reshape(B, H, W, C).permute(0, 3, 1, 2)
    return self.proj(x + pp)


@pytest.fixture(scope="module")
def old_yolo12(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """``(path, reference output)`` of a yolo12n checkpoint in the 8.3.x AAttn layout, as 8.3.80 would save it."""
    torch.manual_seed(0)
    model = DetectionModel("yolo12n.yaml", nc=3, verbose=False).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so a wrong row order shows in the outputs
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    assert _to_old_layout(model) == 8
    reference = copy.deepcopy(model)
    for m in reference.modules():
        if isinstance(m, AAttn):
            m.forward = types.MethodType(_old_forward, m)
    x = torch.linspace(0, 1, 3 * IMGSZ * IMGSZ).reshape(1, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        expected = reference(x)[0]
    path = tmp_path_factory.mktemp("yolo12-83") / "yolo12n-83.pt"
    torch.save({"model": model, "version": "8.3.80", "train_args": {}, "date": "2025-02-20"}, path)
    return path, expected


def test_old_aattn_checkpoint_is_migrated_with_equal_outputs_and_prunes(old_yolo12, tmp_path, stock_param_counts):
    """An 8.3.x YOLO12 checkpoint loads in the qkv layout with the old math's outputs, then prunes and runs.

    Catches: a wrong row order in the qk/v -> qkv merge (outputs differ), BatchNorm rows not merged, or no migration
    (the smoke forward refuses the file).
    """
    path, expected = old_yolo12
    yolo = load_yolo(path)
    attns = [m for m in yolo.model.modules() if isinstance(m, AAttn)]
    assert attns and all(hasattr(m, "qkv") and not hasattr(m, "qk") and not hasattr(m, "v") for m in attns)
    x = torch.linspace(0, 1, 3 * IMGSZ * IMGSZ).reshape(1, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        got = yolo.model.eval()(x)[0]
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)

    pruned = prune(yolo, ratio=0.5, verbose=False)
    assert pruned.prune_info["params_after"] < pruned.prune_info["params_before"]
    with torch.no_grad():
        assert pruned.model.eval()(x)[0].shape == expected.shape
    saved = save_checkpoint(pruned, tmp_path / "pruned.pt")
    assert stock_param_counts([saved]) == [pruned.prune_info["params_after"]]  # stock Ultralytics, no yolo_prune


def test_checkpoint_that_does_not_run_is_refused_before_any_work(old_yolo12, tiny_data, tmp_path, capsys):
    """A checkpoint that unpickles but cannot run is refused with one line naming both versions; exit != 0, nothing
    written. Catches: the smoke forward removed (the CLI would prune and save a model that cannot run)."""
    path, _ = old_yolo12
    model = torch.load(path, map_location="cpu", weights_only=False)["model"]
    broken = next(m for m in model.modules() if isinstance(m, AAttn))
    del broken.proj  # no known migration brings this back
    bad = tmp_path / "broken.pt"
    torch.save({"model": model, "version": "8.3.80", "train_args": {}}, bad)
    versions = r"does not run under the installed Ultralytics 8\.4\S* \(saved by Ultralytics 8\.3\.80\)"
    with pytest.raises(ValueError, match=versions) as info:
        load_yolo(bad)
    assert "\n" not in str(info.value) and "AttributeError" in str(info.value)

    project = tmp_path / "runs"
    code = main(["prune", f"model={bad}", f"data={tiny_data}", f"project={project}", "epochs=0", "imgsz=64"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "does not run" in err
    assert not project.exists()
