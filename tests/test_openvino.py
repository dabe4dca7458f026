"""OpenVINO: the ``openvino`` latency backend, INT8 as the last step (`yolo_prune.measurement.quantize`) and one-line
errors when the optional packages are missing (simulated in a subprocess, the real import machinery refusing them)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from yolo_prune.integration.cli import main
from yolo_prune.integration.pipeline import parse_prune_args
from yolo_prune.measurement.bench import parse_bench_args, run_bench
from yolo_prune.measurement.measure import (
    OPENVINO_MISSING,
    count_params,
    export_openvino,
    load_yolo,
    measure_openvino_latency,
    openvino_size_mb,
    resolve_backends,
)
from yolo_prune.measurement.quantize import measure_int8

needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None,
    reason="needs the openvino extra: pip install openvino nncf",
)
IMGSZ = 64
REPO = Path(__file__).resolve().parents[1]


@needs_openvino
def test_openvino_backend_labels() -> None:
    """``openvino`` is ``openvino_cpu`` on any device, in the order given; unknown names list it among the valid."""
    assert resolve_backends("torch,onnx,openvino", "cpu") == (["torch_cpu", "onnx_cpu", "openvino_cpu"], {})
    assert resolve_backends(["openvino", "openvino_cpu"], "0")[0] == ["openvino_cpu"]
    errors = resolve_backends("tensorrt", "cpu")[1]
    assert "openvino" in errors["tensorrt"]


@pytest.mark.parametrize("command", ["bench", "prune"])
def test_unknown_backend_is_one_line(command: str, capsys: pytest.CaptureFixture) -> None:
    """An unknown backend stops bench and prune at argument-check time: exit 2, one line naming the valid ones."""
    args = ["models=a.pt"] if command == "bench" else ["model=a.pt", "data=shapes-tiny.yaml"]
    assert main([command, *args, "backends=torch,openvno"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown backend 'openvno'" in err and "openvino" in err
    with pytest.raises(ValueError, match="openvno"):
        parse_bench_args({"models": "a.pt", "backends": "openvno"})


@needs_openvino
def test_int8_adds_the_openvino_backend() -> None:
    """int8=True puts OpenVINO latency in every row (the INT8 rows are timed there); bench needs data= for it."""
    assert "openvino" in parse_prune_args({"model": "m.pt", "data": "d.yaml", "int8": True})["backends"]
    assert parse_bench_args({"models": "a.pt", "data": "d.yaml", "int8": True})["backends"] == (
        "torch",
        "onnx",
        "openvino",
    )
    with pytest.raises(ValueError, match="needs data="):
        parse_bench_args({"models": "a.pt", "int8": True})
    with pytest.raises(ValueError, match="not an INT8 format"):
        parse_prune_args({"model": "m.pt", "data": "d.yaml", "int8": "yes"})


MISSING_CHILD = textwrap.dedent(
    """
    import json, sys
    for name in sys.argv[1].split(","):
        sys.modules[name] = None  # what an uninstalled package looks like to 'import': ImportError
    from yolo_prune.integration.cli import main
    from yolo_prune.measurement.measure import measure_openvino_latency, resolve_backends
    from yolo_prune.policy.targets import check_backend

    out = {"resolve": resolve_backends("torch,openvino")}
    for key, call in {
        "latency": lambda: measure_openvino_latency("model_openvino_model"),
        "target": lambda: check_backend("openvino"),
    }.items():
        try:
            call()
        except Exception as e:
            out[key] = [type(e).__name__, str(e)]
    print("RESULT " + json.dumps(out), flush=True)
    sys.exit(main(sys.argv[2:]))
    """
)


def run_missing(modules: str, *cli: str, tmp_path: Path) -> tuple[dict, subprocess.CompletedProcess]:
    """Run ``MISSING_CHILD`` with ``modules`` made unimportable and ``cli`` as the yolo-prune arguments."""
    script = tmp_path / "missing_child.py"
    script.write_text(MISSING_CHILD)
    env = {**os.environ, "YOLO_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("YOLO_PRUNE_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, str(script), modules, *cli], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert "RESULT " in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0]), proc


def test_missing_openvino_is_one_line(tmp_path: Path) -> None:
    """Without openvino: the backend is refused by name with the pip command, by every entry point, before work."""
    out, proc = run_missing("openvino", "bench", "models=a.pt", "backends=torch,openvino", tmp_path=tmp_path)
    assert out["resolve"] == [["torch_cpu"], {"openvino": OPENVINO_MISSING}]
    assert out["latency"] == ["BackendUnavailableError", OPENVINO_MISSING]
    assert out["target"] == ["ValueError", OPENVINO_MISSING]
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"yolo-prune: error: {OPENVINO_MISSING}"]


def test_missing_nncf_is_one_line(tmp_path: Path) -> None:
    """int8=True without nncf: exit 2, one line naming the package to install, before anything runs."""
    _, proc = run_missing("nncf", "prune", "model=a.pt", "data=shapes-tiny.yaml", "int8=True", tmp_path=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["yolo-prune: error: int8=openvino needs nncf: pip install nncf"]
    assert not (tmp_path / "runs").exists()


@needs_openvino
def test_openvino_latency_of_a_tiny_model(tiny_models, tmp_path: Path) -> None:
    """The FP32 export lands in out_dir (input untouched), holds FP32 weights, and times with the threads asked for."""
    small = tiny_models[1]
    before = small.read_bytes()
    folder = export_openvino(small, IMGSZ, out_dir=tmp_path, name="narrow")
    assert folder == tmp_path / "narrow_openvino_model" and sorted(p.suffix for p in folder.iterdir()) == [
        ".bin",
        ".xml",
        ".yaml",
    ]
    assert small.read_bytes() == before and not any(p.name.startswith(".export_") for p in tmp_path.iterdir())
    params = count_params(load_yolo(str(small)).model)
    assert 0.9 < openvino_size_mb(folder) * 1e6 / (4 * params) < 1.1  # FP32: 4 bytes a parameter (BN fused)
    stats = measure_openvino_latency(folder, IMGSZ, runs=3, warmup=1, threads=1)
    assert stats["runs"] == 3 and stats["threads"] == 1 and stats["precision"] == "f32"
    assert 0 < stats["p10_ms"] <= stats["median_ms"] <= stats["p90_ms"]


@pytest.mark.slow
@needs_openvino
def test_bench_with_the_openvino_backend_and_int8(tiny_models, tiny_data, tmp_path: Path) -> None:
    """bench backends=openvino int8=True: an openvino_cpu column for each model, and after each model its INT8 row
    (smaller weights, measured mAP, the same column); the exports sit in the run folder."""
    run_dir = run_bench(
        [str(p) for p in tiny_models],
        data=tiny_data,
        imgsz=IMGSZ,
        backends="openvino",
        project=tmp_path,
        runs=2,
        warmup=1,
        threads=1,
        int8=True,
    )
    rows = json.loads((run_dir / "report.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["v8n", "v8n+int8", "v8n_narrow", "v8n_narrow+int8"]
    assert all(set(r["latency_ms"]) == {"openvino_cpu"} and r["errors"] == {} for r in rows), rows
    assert all(r["latency_ms"]["openvino_cpu"] > 0 and r["map50_95"] is not None for r in rows)
    assert rows[1]["int8_of"] == "v8n" and rows[1]["params"] == rows[0]["params"]
    assert rows[3]["size_mb"] < rows[1]["size_mb"] < rows[0]["size_mb"]
    assert (run_dir / "openvino" / "v8n_narrow_openvino_model").is_dir()
    assert (run_dir / "int8" / "v8n_narrow_int8_openvino_model").is_dir()
    assert "openvino_cpu ms" in (run_dir / "report.md").read_text()


@pytest.mark.slow
@needs_openvino
def test_int8_row_of_a_trained_detector(trained_detector, tmp_path: Path) -> None:
    """INT8 export + validation of a trained detector: mAP near its FP32 mAP, weights about a quarter of FP32.

    Mutations caught: validating anything but the INT8 model of this detector (an untrained one scores about 0);
    an FP32 export instead of INT8 (4x the size); a row without OpenVINO latency.
    """
    t = trained_detector
    source = {"name": "trained", "params": 123, "gflops": 0.5}
    row = measure_int8(
        t.model,
        t.data,
        imgsz=t.imgsz,
        out_dir=tmp_path,
        name="trained",
        source_row=source,
        runs=2,
        warmup=1,
        threads=1,
        calibration_images=32,
    )
    assert row["errors"] == {}, row["errors"]
    assert row["name"] == "trained+int8" and row["int8_of"] == "trained"
    assert (row["params"], row["gflops"]) == (123, 0.5)
    assert Path(row["openvino_path"]) == tmp_path / "trained_int8_openvino_model"
    assert row["map50"] > 0.5 * t.map50 and row["map50_95"] > 0.5 * t.map50_95, (row, t)
    fp32_mb = 4 * count_params(load_yolo(str(t.model)).model) / 1e6
    assert 0.15 * fp32_mb < row["size_mb"] < 0.4 * fp32_mb
    assert row["latency_ms"]["openvino_cpu"] > 0


@pytest.mark.slow
@needs_openvino
def test_prune_int8_rows_and_failure_exit_code(tiny_data, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """prune int8=True adds baseline+int8 and final+int8 rows with size and mAP; when calibration cannot read the
    train split, the INT8 rows record the failure and the command exits with 1 (the final FP32 model is fine)."""
    common = [
        "model=yolov8n.yaml",
        "epochs=0",
        "ratio=0.5",
        "allocation=uniform",
        "imgsz=64",
        "batch=8",
        "runs=2",
        "warmup=1",
        "threads=1",
        "backends=torch",
        "int8=True",
        "plots=False",
        f"project={tmp_path}",
    ]
    assert main(["prune", f"data={tiny_data}", *common]) == 0, capsys.readouterr().err
    rows = {r["name"]: r for r in json.loads((tmp_path / "exp" / "report.json").read_text())["rows"]}
    assert list(rows) == ["baseline", "final", "baseline+int8", "final+int8"]
    assert all(set(r["latency_ms"]) >= {"openvino_cpu"} for r in rows.values())
    assert rows["final+int8"]["size_mb"] < rows["baseline+int8"]["size_mb"]  # the pruned model quantized
    assert all(rows[n]["map50_95"] is not None and rows[n]["errors"] == {} for n in ("baseline+int8", "final+int8"))
    assert (tmp_path / "exp" / "measure" / "int8" / "final_int8_openvino_model").is_dir()

    broken = yaml.safe_load(Path(tiny_data).read_text())
    broken["path"] = str(Path(tiny_data).parent)
    broken["train"] = str(tmp_path / "no-train-images")
    broken_yaml = tmp_path / "broken.yaml"
    broken_yaml.write_text(yaml.safe_dump(broken))
    capsys.readouterr()
    assert main(["prune", f"data={broken_yaml}", *common, "name=broken"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "final+int8 [int8]" in err
    rows = {r["name"]: r for r in json.loads((tmp_path / "broken" / "report.json").read_text())["rows"]}
    assert rows["final"]["errors"] == {} and "int8" in rows["baseline+int8"]["errors"]


@needs_openvino
def test_latency_target_meter_on_openvino(tiny_models) -> None:
    """``prune(target_latency=..., backend="openvino")`` measures candidates through an OpenVINO export: a narrower
    network costs less (a real measurement, not a constant), and the given module is left as it was."""
    from yolo_prune.policy.targets import check_backend, cost_meter

    assert check_backend("OpenVINO") == "openvino"
    meter = cost_meter("latency", imgsz=160, backend="openvino", runs=15, warmup=3, threads=1)
    big, small = (load_yolo(str(p)).model for p in tiny_models)
    params = count_params(big)
    assert meter(small) < meter(big) and count_params(big) == params
