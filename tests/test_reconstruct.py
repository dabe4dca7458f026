"""Tests for yolo_prune.policy.reconstruct: re-fitting a pruned network to the unpruned one before any training."""

import os

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported: nothing may be downloaded

import copy  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from yolo_prune import load_yolo, prune, save_checkpoint  # noqa: E402
from yolo_prune.measurement.measure import validate  # noqa: E402
from yolo_prune.policy.reconstruct import check_reconstruct, reconstruct  # noqa: E402


def conv_errors(pruned: nn.Module, reference: nn.Module, kept: dict[str, torch.Tensor], x: torch.Tensor) -> dict:
    """Relative squared error of each conv's output against the unpruned conv's kept output channels, on ``x``."""
    outs: dict[tuple[str, str], torch.Tensor] = {}
    handles = []
    for tag, model in (("p", pruned), ("r", reference)):
        for name in kept:
            module = model.get_submodule(name)
            handles.append(module.register_forward_hook(lambda m, i, o, k=(tag, name): outs.__setitem__(k, o)))
    with torch.no_grad():
        pruned.eval()(x)
        reference.eval()(x)
    for h in handles:
        h.remove()
    errors = {}
    for name, idx in kept.items():
        y = outs[("r", name)][:, idx]
        errors[name] = float((outs[("p", name)] - y).pow(2).sum() / y.pow(2).sum())
    return errors


@pytest.fixture(scope="module")
def pruned_pair(trained_detector):
    """(unpruned, pruned copy) of the trained tiny detector at ratio 0.3, not fine-tuned."""
    base = load_yolo(str(trained_detector.model))
    pruned = prune(base, ratio=0.3, round_to=8, verbose=False)
    return base, pruned


def test_least_squares_lowers_each_fitted_convs_error_on_held_out_images(trained_detector, pruned_pair):
    """On validation images (never used for the fit), the re-fitted convs reproduce the unpruned ones better.

    Mutations caught: a fit that is computed but not written (errors unchanged); a fit on the wrong channels or
    positions (errors rise); an offset folded with the wrong sign into the BatchNorm mean (errors rise).
    """
    from yolo_prune.policy.reconstruct import _bn_after, _kept_outputs

    base, pruned = pruned_pair
    t = trained_detector
    fitted = copy.deepcopy(pruned)
    stats = reconstruct(fitted.model, base.model, t.data, images=32, batch=16, imgsz=t.imgsz)
    applied = [f.name for f in stats.layers if f.applied]
    assert len(applied) >= 10, stats.as_dict()
    assert all(f.error_after < f.error_before for f in stats.layers if f.applied)
    summary = stats.as_dict()
    assert summary["mean_error_after"] < 0.5 * summary["mean_error_before"], summary

    bns, ref_bns = _bn_after(pruned.model), _bn_after(base.model)
    kept = {  # output channels each conv kept, read off the unfitted pruned copy
        n: _kept_outputs(pruned.model.get_submodule(n), base.model.get_submodule(n), bns.get(n), ref_bns.get(n))
        for n in applied
    }
    val = _val_images(t, 8)
    before = conv_errors(pruned.model, base.model, kept, val)
    after = conv_errors(fitted.model, base.model, kept, val)
    improved = sum(after[n] < before[n] for n in applied)
    assert improved >= 0.8 * len(applied), (improved, len(applied))
    assert sum(after.values()) < 0.7 * sum(before.values()), (sum(before.values()), sum(after.values()))


def _val_images(t, n: int) -> torch.Tensor:
    """``n`` validation images of the trained detector's data, letterboxed to its size, as a batch."""
    import cv2
    import numpy as np
    from ultralytics.data.augment import LetterBox
    from ultralytics.data.utils import check_det_dataset

    info = check_det_dataset(t.data)
    files = sorted(p for p in Path(info["val"]).iterdir() if p.suffix == ".jpg")[:n]
    imgs = [LetterBox((t.imgsz, t.imgsz), auto=False)(image=cv2.imread(str(f))) for f in files]
    batch = np.stack([im[..., ::-1].transpose(2, 0, 1) for im in imgs]).copy()
    return torch.from_numpy(batch).float() / 255


@pytest.mark.slow
def test_reconstruction_keeps_shapes_and_a_stock_checkpoint_and_recovers_map(
    trained_detector, pruned_pair, tmp_path, stock_param_counts
):
    """prune(reconstruct="ls") keeps every shape (stock classes, same parameter count), saves a checkpoint that stock
    Ultralytics loads, and gets back at least half of the mAP50-95 that the same cut without it loses, before any
    training.

    Mutations caught: reconstruction skipped (mAP equal); a fit that changes a module's shape or class (parameter
    count / stock load); ``prune_info`` without the reconstruction summary.
    """
    base, plain = pruned_pair
    t = trained_detector
    fitted = prune(base, ratio=0.3, round_to=8, verbose=False, reconstruct="ls", data=t.data, imgsz=t.imgsz)
    assert fitted.prune_info["reconstruct"]["layers_fitted"] > 0
    shapes = {n: p.shape for n, p in plain.model.named_parameters()}
    assert {n: p.shape for n, p in fitted.model.named_parameters()} == shapes
    assert {n: type(m) for n, m in fitted.model.named_modules()} == {n: type(m) for n, m in plain.model.named_modules()}
    path = save_checkpoint(fitted, tmp_path / "fitted.pt")
    assert stock_param_counts([path]) == [sum(p.numel() for p in plain.model.parameters())]
    without = validate(plain, t.data, imgsz=t.imgsz, batch=16)["map50_95"]
    with_ls = validate(str(path), t.data, imgsz=t.imgsz, batch=16)["map50_95"]
    lost = t.map50_95 - without
    assert lost > 0.005, (t.map50_95, without)  # the cut did cost accuracy
    assert with_ls - without > 0.5 * lost, (without, with_ls, t.map50_95)  # at least half of it back, no training


def test_bad_reconstruct_values_are_refused():
    """Unknown methods are a one-line ValueError; off spellings map to None; prune() needs data for it."""
    assert check_reconstruct("LS") == "ls" and check_reconstruct("bn") == "bn" and check_reconstruct("seq") == "seq"
    assert check_reconstruct(None) is None and check_reconstruct("none") is None and check_reconstruct(False) is None
    with pytest.raises(ValueError, match="reconstruct='lsq' is not valid"):
        check_reconstruct("lsq")
    with pytest.raises(ValueError, match="give data="):
        prune("yolov8n.yaml", ratio=0.3, reconstruct="ls", verbose=False)
