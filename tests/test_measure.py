"""Tests for yolo_prune.measurement.measure: counts, latency, ONNX export and validation on tiny models."""

import os

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported

import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from yolo_prune.measurement.measure import (  # noqa: E402
    count_gflops,
    count_params,
    export_onnx,
    file_size_mb,
    load_yolo,
    measure_model,
    measure_onnx_latency,
    measure_torch_latency,
    resolve_backends,
    validate,
)

IMGSZ = 64
LATENCY_KEYS = {"median_ms", "p10_ms", "p90_ms", "runs", "threads", "device"}


def test_counts_smaller_model_and_no_side_effects(tiny_models):
    """The narrower model has fewer params and GFLOPs; counting leaves the model untouched."""
    from ultralytics.utils.torch_utils import get_flops

    big, small = (load_yolo(p).model for p in tiny_models)
    before = {k: v.clone() for k, v in big.state_dict().items()}
    g_big, g_small = count_gflops(big, IMGSZ), count_gflops(small, IMGSZ)
    assert count_params(small) < count_params(big)
    assert 0 < g_small < g_big
    assert g_big == pytest.approx(get_flops(big, IMGSZ), rel=1e-6)  # Ultralytics semantics (2 x MACs)
    assert count_gflops(big, 2 * IMGSZ) == pytest.approx(4 * g_big, rel=0.05)
    after = big.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not big.is_fused()
    assert count_params(load_yolo(tiny_models[0])) == count_params(big)  # YOLO objects are unwrapped
    assert file_size_mb(tiny_models[0]) == pytest.approx(tiny_models[0].stat().st_size / 1e6)


def test_torch_latency_fuses_a_copy(tiny_models):
    """Eager latency runs a fused copy and reports finite stats; the caller's model stays unfused."""
    model = load_yolo(tiny_models[1]).model
    threads = torch.get_num_threads()
    stats = measure_torch_latency(model, imgsz=IMGSZ, warmup=1, runs=3, threads=1)
    assert set(stats) == LATENCY_KEYS
    assert stats["runs"] == 3 and stats["threads"] == 1 and stats["device"] == "cpu"
    assert 0 < stats["p10_ms"] <= stats["median_ms"] <= stats["p90_ms"]
    assert not model.is_fused()
    assert torch.get_num_threads() == threads


def test_onnx_export_matches_torch(tiny_models, tmp_path):
    """The exported ONNX runs in onnxruntime, matches the PyTorch model, and nothing is written beside the input."""
    import onnxruntime as ort

    src = tiny_models[1]
    beside_before = sorted(p.name for p in src.parent.iterdir())
    onnx_path = export_onnx(src, imgsz=IMGSZ, out_dir=tmp_path / "export")
    assert onnx_path.parent == tmp_path / "export" and onnx_path.suffix == ".onnx"
    assert [p.name for p in onnx_path.parent.iterdir()] == [onnx_path.name]  # the temporary .pt copy is removed
    assert sorted(p.name for p in src.parent.iterdir()) == beside_before

    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    model = load_yolo(src).model.eval()
    with torch.inference_mode():
        expected = model(x)[0].numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3 * float(np.abs(expected).max()))

    stats = measure_onnx_latency(onnx_path, imgsz=IMGSZ, warmup=1, runs=3, threads=1)
    assert set(stats) == LATENCY_KEYS and stats["threads"] == 1
    assert math.isfinite(stats["median_ms"]) and stats["median_ms"] > 0


def test_export_from_module_keeps_it_unchanged(tiny_models, tmp_path):
    """An in-memory module is exported from a saved copy; the module itself is not fused or frozen."""
    model = load_yolo(tiny_models[1]).model
    onnx_path = export_onnx(model, imgsz=IMGSZ, out_dir=tmp_path, name="mem")
    assert onnx_path == tmp_path / "mem.onnx" and onnx_path.is_file()
    assert not model.is_fused()


def test_validate_returns_map(tiny_models, tiny_data, tmp_path):
    """The Ultralytics validator runs and its box mAP comes back as floats in [0, 1]."""
    m = validate(tiny_models[1], tiny_data, imgsz=IMGSZ, batch=4, project=str(tmp_path), name="val")
    assert set(m) == {"map50_95", "map50"}
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in m.values())


def test_resolve_backends():
    """`torch`/`onnx` map to device labels; a GPU adds onnx_cuda; unknown names give an error naming valid ones."""
    assert resolve_backends(("torch", "onnx"), "cpu") == (["torch_cpu", "onnx_cpu"], {})
    assert resolve_backends("torch,onnx", "0")[0] == ["torch_cuda", "onnx_cpu", "onnx_cuda"]
    labels, errors = resolve_backends(["onnx", "tensorrt", "onnx_cpu"], "cpu")
    assert labels == ["onnx_cpu"]
    assert "tensorrt" in errors and "torch" in errors["tensorrt"] and "onnx" in errors["tensorrt"]


def test_measure_model_records_errors(tiny_models, tmp_path):
    """Unknown backends and unloadable files become error entries; measured values are still filled in."""
    row = measure_model(
        tiny_models[1], imgsz=IMGSZ, backends=("torch", "nope"), runs=2, warmup=1, out_dir=tmp_path, threads=1
    )
    assert row["name"] == "v8n_narrow" and row["params"] > 0 and row["gflops"] > 0 and row["size_mb"] > 0
    assert row["map50_95"] is None and row["map50"] is None
    assert set(row["latency_ms"]) == {"torch_cpu"} and row["latency_detail"]["torch_cpu"]["runs"] == 2
    assert set(row["errors"]) == {"nope"}

    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    for path in (bad, tmp_path / "missing.pt"):
        row = measure_model(path, imgsz=IMGSZ, runs=1, warmup=0, out_dir=tmp_path)
        assert "load" in row["errors"] and row["params"] is None and row["latency_ms"] == {}


def test_validate_measures_the_given_trained_model(trained_detector):
    """A trained detector scores a clearly non-zero mAP, with mAP50 >= mAP50-95, from a file and from a module alone.

    Mutations caught: swapping ``map50`` and ``map50_95`` in ``validate``; validating another (untrained) model
    instead of the one given (its mAP is about 0); ``measure_model`` dropping the mAP of an in-memory module.
    """
    t = trained_detector
    got = validate(str(t.model), t.data, imgsz=t.imgsz, batch=16)
    assert got["map50"] > got["map50_95"] > 0.04, got
    assert got == pytest.approx({"map50": t.map50, "map50_95": t.map50_95}, abs=1e-3)
    row = measure_model(load_yolo(t.model).model, t.data, imgsz=t.imgsz, backends="torch", runs=1, warmup=0)
    assert row["map50_95"] == pytest.approx(t.map50_95, abs=1e-3) and row["map50"] == pytest.approx(t.map50, abs=1e-3)


def test_export_onnx_needs_an_output_folder(tiny_models):
    """Without ``out_dir`` the export refuses instead of leaving a temporary folder that nobody removes.

    Mutation caught: falling back to ``tempfile.mkdtemp`` (the folder leaked on every call).
    """
    with pytest.raises(ValueError, match="out_dir"):
        export_onnx(tiny_models[1], imgsz=IMGSZ)
