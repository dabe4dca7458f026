"""INT8 for the edge formats of the Ultralytics exporter (`yolo_prune.measurement.quantize`): ``int8=onnx`` (ONNX
Runtime static INT8, Q/DQ), bad formats and missing toolchains refused in one line before any work, and ``qat=True``
(quantization-aware training through Ultralytics' ``quantize=8`` on the pruned module, with resume)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from ultralytics import YOLO

from yolo_prune import PrunedDetectionTrainer
from yolo_prune.integration.cli import main
from yolo_prune.integration.pipeline import parse_prune_args
from yolo_prune.measurement.bench import parse_bench_args
from yolo_prune.measurement.measure import count_params, load_yolo
from yolo_prune.measurement.quantize import int8_formats, measure_int8, resolve_int8

REPO = Path(__file__).resolve().parents[1]
needs_modelopt = pytest.mark.skipif(
    importlib.util.find_spec("modelopt") is None, reason="qat=True needs nvidia-modelopt (pip install nvidia-modelopt)"
)
# Loads a checkpoint or export with stock Ultralytics in a process where yolo_prune cannot be imported.
STOCK_CHILD = textwrap.dedent(
    """
    import json, sys
    sys.modules["yolo_prune"] = None  # importing it fails: stock Ultralytics alone
    from ultralytics import YOLO
    path, data, imgsz = sys.argv[1], sys.argv[2], int(sys.argv[3])
    yolo = YOLO(path, task="detect")
    m = yolo.val(data=data, imgsz=imgsz, batch=1, plots=False, verbose=False, device="cpu")
    print("RESULT " + json.dumps({"map50_95": float(m.box.map), "yolo_prune": "yolo_prune" in sys.modules
                                  and sys.modules["yolo_prune"] is not None}))
    """
)


def stock(path: Path | str, data: str, imgsz: int, cwd: Path) -> dict:
    """Validate ``path`` with stock Ultralytics in a fresh process without yolo_prune; return its mAP50-95."""
    proc = subprocess.run(
        [sys.executable, "-c", STOCK_CHILD, str(path), data, str(imgsz)],
        cwd=cwd,
        env={**os.environ, "YOLO_OFFLINE": "1"},
        capture_output=True,
        text=True,
    )
    assert "RESULT " in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])


def qdq_nodes(path: Path | str) -> tuple[int, int]:
    """(QuantizeLinear, DequantizeLinear) node counts of an ONNX file."""
    import onnx

    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    return ops.count("QuantizeLinear"), ops.count("DequantizeLinear")


def test_int8_values() -> None:
    """int8= takes False/True (= openvino) or an INT8 format of the installed exporter; anything else is one line
    listing the valid ones; the format's runtime joins the timed backends; qat=True means INT8 ONNX."""
    assert {"onnx", "openvino"} <= set(int8_formats())
    assert [resolve_int8(v) for v in (False, None, "false", True, "True", "ONNX", "openvino")] == [
        None,
        None,
        None,
        "openvino",
        "openvino",
        "onnx",
        "openvino",
    ]
    for bad in ("tflite", "int4", "yes"):
        with pytest.raises(ValueError, match="not an INT8 format") as e:
            resolve_int8(bad)
        assert "\n" not in str(e.value) and "onnx, openvino" in str(e.value)
    base = {"model": "m.pt", "data": "d.yaml"}
    args = parse_prune_args({**base, "int8": "onnx", "backends": "torch"})
    assert args["int8"] == "onnx" and args["backends"] == ("torch", "onnx")
    assert parse_bench_args({"models": "a.pt", "data": "d.yaml", "int8": "onnx"})["int8"] == "onnx"
    with pytest.raises(ValueError, match="int8=onnx needs data="):
        parse_bench_args({"models": "a.pt", "int8": "onnx"})
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(ValueError, match="int8=engine needs tensorrt"):
            parse_prune_args({**base, "int8": "engine"})
    if importlib.util.find_spec("modelopt") is not None:
        assert parse_prune_args({**base, "qat": True})["int8"] == "onnx"
    with pytest.raises(ValueError, match="qat=True exports INT8 ONNX"):
        parse_prune_args({**base, "qat": True, "int8": "openvino"})
    with pytest.raises(ValueError, match="qat_epochs"):
        parse_prune_args({**base, "qat": True, "qat_epochs": 0})


def test_bad_int8_format_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """yolo-prune prune int8=<not an INT8 format>: exit 2, one line listing the formats, no run folder."""
    assert main(["prune", "model=a.pt", "data=shapes-tiny.yaml", "int8=tflite", f"project={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "int8='tflite' is not an INT8 format" in err[0] and "openvino" in err[0], err
    assert not (tmp_path / "runs").exists()


MISSING_CHILD = textwrap.dedent(
    """
    import sys
    for name in sys.argv[1].split(","):
        sys.modules[name] = None  # what an uninstalled package looks like to 'import': ImportError
    from yolo_prune.integration.cli import main
    sys.exit(main(sys.argv[2:]))
    """
)


@pytest.mark.parametrize(
    ("missing", "arg", "line"),
    [
        ("onnxruntime", "int8=onnx", "int8=onnx needs onnxruntime: pip install onnxruntime"),
        ("modelopt", "qat=True", "qat=True needs nvidia-modelopt: pip install nvidia-modelopt"),
    ],
)
def test_missing_toolchain_is_one_line(missing: str, arg: str, line: str, tmp_path: Path) -> None:
    """A missing INT8 toolchain (or ModelOpt for qat=True) is refused by name with the pip command, before any work."""
    proc = subprocess.run(
        [sys.executable, "-c", MISSING_CHILD, missing, "prune", "model=a.pt", "data=shapes-tiny.yaml", arg],
        cwd=tmp_path,
        env={**os.environ, "YOLO_OFFLINE": "1", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"yolo-prune: error: {line}"]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_onnx_int8_of_a_trained_detector(trained_detector, tmp_path: Path) -> None:
    """int8=onnx on a trained detector: an INT8 ONNX file with Q/DQ nodes, about a quarter of the FP32 weights, mAP
    near the FP32 model's, and stock Ultralytics validates it to the same mAP in a process without yolo_prune.

    Mutations caught: an FP32 export (no Q/DQ nodes, 4x the size); validating another model (an untrained one scores
    about 0); an export stock Ultralytics cannot run.
    """
    t = trained_detector
    row = measure_int8(
        t.model, t.data, imgsz=t.imgsz, out_dir=tmp_path, name="trained", runs=0, calibration_images=32, format="onnx"
    )
    assert row["errors"] == {}, row["errors"]
    assert (row["name"], row["int8_format"]) == ("trained+int8", "onnx")
    assert Path(row["int8_path"]) == tmp_path / "trained_int8.onnx"
    q, dq = qdq_nodes(row["int8_path"])
    assert q >= 40 and dq >= q, (q, dq)  # every Conv's input and weight go through Q/DQ
    fp32_mb = 4 * count_params(load_yolo(str(t.model)).model) / 1e6
    assert 0.15 * fp32_mb < row["size_mb"] < 0.45 * fp32_mb
    assert row["map50_95"] > 0.7 * t.map50_95, (row["map50_95"], t.map50_95)
    assert row["latency_ms"] == {}  # runs=0: the caller times it beside the FP32 rows
    out = stock(row["int8_path"], t.data, t.imgsz, tmp_path)
    assert abs(out["map50_95"] - row["map50_95"]) < 1e-3 and not out["yolo_prune"], out


@pytest.mark.slow
@needs_modelopt
def test_prune_with_qat(trained_detector, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """prune int8=onnx qat=True: rows baseline+int8, final+int8 and final+qat (INT8 ONNX with Q/DQ from the trained
    ranges) timed on ONNX Runtime beside the FP32 rows; weights/best.pt stays a plain checkpoint, the QAT run's
    checkpoint carries the ModelOpt state, and stock Ultralytics validates the QAT ONNX without yolo_prune."""
    t = trained_detector
    argv = ["prune", f"model={t.model}", f"data={t.data}", "ratio=0.3", "allocation=uniform", "epochs=0", "qat=True"]
    argv += ["qat_epochs=1", f"imgsz={t.imgsz}", "batch=16", "runs=3", "warmup=1", "threads=1", "backends=torch"]
    argv += ["plots=False", "workers=0", f"project={tmp_path}"]
    assert main(argv) == 0, capsys.readouterr().err
    run = tmp_path / "exp"
    rows = {r["name"]: r for r in json.loads((run / "report.json").read_text())["rows"]}
    assert list(rows) == ["baseline", "final", "baseline+int8", "final+int8", "final+qat"]
    assert all("onnx_cpu" in r["latency_ms"] for r in rows.values())  # int8=onnx adds the ONNX Runtime backend
    qat = rows["final+qat"]
    assert qat["errors"] == {} and qat["map50_95"] is not None and qat["qat_epochs"] == 1
    assert min(qdq_nodes(qat["int8_path"])) >= 40
    assert not torch.load(run / "weights" / "best.pt", weights_only=False).get("modelopt")
    assert torch.load(run / "qat" / "weights" / "last.pt", weights_only=False).get("modelopt")
    out = stock(qat["int8_path"], t.data, t.imgsz, tmp_path)
    assert abs(out["map50_95"] - qat["map50_95"]) < 1e-3, out


@needs_modelopt
def test_qat_of_a_pruned_model_resumes(pruned_v5_ckpt, tiny_data, tmp_path: Path) -> None:
    """Quantization-aware training (Ultralytics quantize=8) of a pruned module with the pruned trainer, interrupted
    after its first epoch and resumed: the resumed run finishes on the pruned architecture with its QAT state.

    Mutations caught: the trainer handing the loader's fake-quantized module to ModelOpt again on resume (ModelOpt
    refuses a second conversion); a rebuild from yaml (the unpruned parameter count).
    """
    path, pruned_params, _ = pruned_v5_ckpt
    yolo = YOLO(str(path))

    def stop(trainer) -> None:
        if trainer.epoch == 0:
            raise KeyboardInterrupt

    yolo.add_callback("on_fit_epoch_end", stop)
    common = {"imgsz": 64, "batch": 8, "device": "cpu", "plots": False, "workers": 0}
    with pytest.raises(KeyboardInterrupt):
        yolo.train(
            trainer=PrunedDetectionTrainer, data=tiny_data, epochs=2, quantize=8, project=str(tmp_path), **common
        )
    last = tmp_path / "train" / "weights" / "last.pt"
    assert torch.load(last, weights_only=False)["epoch"] == 0
    resumed = YOLO(str(last))
    resumed.train(resume=True, trainer=PrunedDetectionTrainer)
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["epoch"] == -1 and ckpt.get("modelopt")  # finished, still quantization-aware
    assert count_params(ckpt["model"]) == pruned_params
