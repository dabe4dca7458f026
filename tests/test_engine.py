"""One engine, one config: the run's options declared once (CLI help and README generated from them), every value
check in yolo_prune/config, no import circles, `run_prune` a thin function over `PruneRun`, whose stages run between
callbacks and read each checkpoint once."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import yolo_prune
from yolo_prune.config import checks
from yolo_prune.config.options import PRUNE_OPTIONS, check_prune_args, options_table
from yolo_prune.integration.cli import usage
from yolo_prune.integration.engine import STAGES, PruneRun
from yolo_prune.integration.pipeline import run_prune

PACKAGE = Path(yolo_prune.__file__).parent
REPO = PACKAGE.parent


def module_imports(package: Path) -> dict[str, set[str]]:
    """Map every module of ``package`` to the modules of the same package it imports anywhere (lazy imports inside
    functions and ``TYPE_CHECKING`` blocks included: they are circles too once the function runs)."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                targets = [module, *(f"{module}.{alias.name}" for alias in node.names)]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), i.e. the import circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def quick_run(detector, folder: Path, **overrides) -> dict:
    """Arguments of a seconds-long run on the trained test detector: 30 % uniform cut, one epoch, torch timing."""
    return {
        "model": str(detector.model),
        "data": detector.data,
        "ratio": 0.3,
        "allocation": "uniform",
        "epochs": 1,
        "imgsz": detector.imgsz,
        "batch": 8,
        "workers": 0,
        "plots": False,
        "amp": False,
        "reconstruct_images": 8,
        "backends": "torch",
        "runs": 2,
        "warmup": 1,
        "device": "cpu",
        "project": str(folder),
        "name": "run",
        **overrides,
    }


def test_the_import_walk_finds_a_circle(tmp_path: Path) -> None:
    """The walker itself: a lazy import back from b to a is a circle; a one-way import is not."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import f\n")
    (package / "b.py").write_text("def f():\n    from . import a\n")
    (package / "c.py").write_text("from pkg.a import f\n")
    assert circles(module_imports(package)) == [["pkg.a", "pkg.b"]]


def test_no_import_circles_in_the_package() -> None:
    """No two modules of yolo_prune import each other, directly or around a loop (the package root included)."""
    graph = module_imports(PACKAGE)
    assert len(graph) > 40  # every module was walked
    assert circles(graph) == []


def test_config_is_the_bottom_floor() -> None:
    """yolo_prune.config imports nothing from the rest of the package, so every module can check through it."""
    graph = module_imports(PACKAGE)
    outside = {m: sorted(t for t in targets if not t.startswith("yolo_prune.config")) for m, targets in graph.items()}
    assert {m: t for m, t in outside.items() if m.startswith("yolo_prune.config") and t} == {}


def test_cli_help_lists_exactly_the_config_options_with_their_defaults() -> None:
    """``yolo-prune help prune`` lists every option of the config, once, with its default; nothing else."""
    text = usage("prune").split("options (key=default, meaning):\n", 1)[1]
    listed = re.findall(r"^    (\w+)=(\S+)", text, flags=re.M)
    assert [key for key, _ in listed] == list(PRUNE_OPTIONS)

    def shown(key: str, value: object) -> str:
        if value is None and key in ("model", "data"):
            return "..."
        return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)

    assert dict(listed) == {k: shown(k, o.default) for k, o in PRUNE_OPTIONS.items()}


def test_readme_key_table_is_the_config() -> None:
    """README's key table is the one generated from the config (same keys, defaults, meanings, order)."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- options table: python -m yolo_prune.config.options -->\n", 1)[1]
    block = block.split("\n<!-- end of options table -->", 1)[0]
    assert block == options_table()
    assert re.findall(r"^\| `(\w+)` \|", block, flags=re.M) == list(PRUNE_OPTIONS)


def test_defaults_in_the_table_are_what_a_run_gets() -> None:
    """An empty command line gets each option's declared default (after checking), and every option has a meaning."""
    args = check_prune_args({"model": "m.pt", "data": "d.yaml"})
    for key, option in PRUNE_OPTIONS.items():
        assert option.help, key
        if key in ("model", "data", "device", "latency_imgsz", "backends", "int8", "scan_ratios"):
            continue  # required, resolved or normalised (checked below)
        assert args[key] == option.default, key
    assert args["latency_imgsz"] == args["imgsz"] and args["backends"] == ("torch", "onnx") and args["int8"] is None


def test_option_values_are_checked_in_config_only() -> None:
    """No module outside yolo_prune/config defines a value check of an option (``check_<option>``, the checks of
    yolo_prune.config.checks, or the old ``_as_int``/``_as_float``)."""
    names = {n for n in checks.__all__ if n.startswith(("check_", "resolve_"))} | {f"check_{k}" for k in PRUNE_OPTIONS}
    names |= {"_as_int", "_as_float", "_non_negative_int", "is_none", "did_you_mean", "check_int8_request"}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "config":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name in names:
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.name}")
    assert offenders == []


def test_old_homes_of_the_checks_still_work() -> None:
    """The checks moved to yolo_prune.config stay importable from where they were (deprecated names keep working)."""
    from yolo_prune.integration.args import did_you_mean, is_none, resolve_device
    from yolo_prune.integration.distill import check_projector_init
    from yolo_prune.measurement.quantize import check_int8_request, resolve_int8
    from yolo_prune.policy.importance import IMPORTANCE_METHODS
    from yolo_prune.policy.prune import check_layer_ratios, check_ratio
    from yolo_prune.policy.reconstruct import check_reconstruct
    from yolo_prune.policy.sensitivity import check_ratios
    from yolo_prune.policy.targets import check_backend, check_target
    from yolo_prune.rules.attention import check_attention

    assert check_ratio is checks.check_ratio and check_target is checks.check_target
    assert (check_backend, check_attention, check_reconstruct) == (
        checks.check_backend,
        checks.check_attention,
        checks.check_reconstruct,
    )
    assert check_layer_ratios({"3": 0.5}) == {3: 0.5} and check_ratios("0.5,0.3") == [0.3, 0.5]
    assert check_projector_init("FIT") == "fit" and resolve_int8(True) == "openvino" and callable(check_int8_request)
    assert is_none("null") and did_you_mean("ratoi", ["ratio"]) and resolve_device("cpu") == "cpu"
    assert tuple(IMPORTANCE_METHODS) == checks.IMPORTANCE_NAMES  # the config's names are the implemented criteria


def test_run_prune_is_a_thin_function_over_the_engine() -> None:
    """`run_prune` is under 60 lines (docstring included) and hands the run to `PruneRun`."""
    source = inspect.getsource(run_prune)
    assert len(source.splitlines()) < 60
    assert "PruneRun(" in source


def test_bad_callbacks_and_arguments_fail_before_any_work(tmp_path: Path) -> None:
    """Arguments are checked when the run is made (nothing written); an unknown event is refused in one line."""
    with pytest.raises(ValueError, match="did you mean 'ratio'"):
        PruneRun(model="m.pt", data="d.yaml", ratoi=0.5, project=str(tmp_path / "p"))
    run = PruneRun(model="m.pt", data="d.yaml", ratio=0.3, project=str(tmp_path / "p"))
    with pytest.raises(ValueError, match="unknown PruneRun event 'on_prunning_end'"):
        run.add_callback("on_prunning_end", print)
    assert not (tmp_path / "p").exists()


def test_cli_resume_refuses_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``yolo-prune resume`` without run=, with another key, or on a folder without state: exit 2, one line."""
    from yolo_prune.integration.cli import main

    for argv, message in (
        (["resume"], "resume needs run="),
        (["resume", "rnu=x"], "did you mean 'run'"),
        (["resume", f"run={tmp_path}"], "cannot resume"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_stages_run_in_order_between_callbacks_and_read_each_checkpoint_once(
    trained_detector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A distilled run with a fine-tune: every stage's callbacks fire in order, and the pipeline reads the input model
    once (the teacher and the pruned model are handed over in memory) and the fine-tuned best.pt once.

    Reads are counted at Ultralytics' checkpoint reader (``torch_safe_load``); the trainer's own finalisation
    (``strip_optimizer`` and the final validation of ``best.pt``) is Ultralytics' and not counted.
    """
    import ultralytics.nn.tasks as tasks

    reads: list[Path] = []
    real = tasks.torch_safe_load

    def counting(weight, *args, **kwargs):
        stack = [frame.filename for frame in inspect.stack()[1:]]
        if not any(f.endswith(("engine/trainer.py", "engine/validator.py", "utils/torch_utils.py")) for f in stack):
            reads.append(Path(str(weight)).resolve())
        return real(weight, *args, **kwargs)

    monkeypatch.setattr(tasks, "torch_safe_load", counting)
    events: list[str] = []
    run = PruneRun(**quick_run(trained_detector, tmp_path))
    for stage in STAGES:
        run.add_callback(f"on_{stage}_start", lambda r, s=stage: events.append(f"{s}+"))
        run.add_callback(f"on_{stage}_end", lambda r, s=stage: events.append(f"{s}-"))
    run_dir = run.run()
    assert events == [f"{s}{e}" for s in STAGES for e in "+-"]  # one step: each stage once, in order
    assert run.args["distill"] and run.teacher == str(trained_detector.model.resolve())
    counts = {path: reads.count(path) for path in set(reads)}
    assert counts.get(trained_detector.model.resolve()) == 1, counts
    assert counts.get((run_dir / "step1" / "weights" / "best.pt").resolve()) == 1, counts
    assert (run_dir / "weights" / "pruned.pt").resolve() not in counts  # trained in memory, not read back
    assert max(counts.values()) == 1, counts
    assert [r["name"] for r in run.rows] == ["baseline", "final"]


@pytest.mark.slow
def test_an_interrupted_run_resumes_by_stage(trained_detector, tmp_path: Path) -> None:
    """Ctrl-C as the fine-tune starts, then again as the measuring starts: each `PruneRun.resume` takes the finished
    stages as they are (pruned.pt untouched, the baseline row not measured again) and runs only the rest; a finished
    run resumes to nothing, and a folder without state is refused in one line."""
    import hashlib
    import json

    from yolo_prune.integration.stages import PruneInterrupted

    def stop(run: PruneRun) -> None:
        raise KeyboardInterrupt

    first = PruneRun(**quick_run(trained_detector, tmp_path, distill=False), callbacks={"on_finetune_start": [stop]})
    with pytest.raises(PruneInterrupted) as interrupted:
        first.run()
    run_dir = interrupted.value.run_dir
    pruned = run_dir / "weights" / "pruned.pt"
    digest = hashlib.sha256(pruned.read_bytes()).hexdigest()
    state = json.loads((run_dir / "state.json").read_text())
    assert state["done"] == ["setup", "baseline", "sparse", "scan", "prune:1"]

    second = PruneRun.resume(run_dir, callbacks={"on_measure_start": [stop]})
    with pytest.raises(PruneInterrupted):
        second.run()
    assert json.loads((run_dir / "state.json").read_text())["done"][-1] == "finetune:1"

    events: list[str] = []
    third = PruneRun.resume(run_dir, callbacks={f"on_{s}_start": [lambda r, s=s: events.append(s)] for s in STAGES})
    assert third.run() == run_dir
    assert third.args["round_to_reason"] == state["args"]["round_to_reason"] != "given"  # auto's reason, kept
    assert events == ["setup", "measure", "final", "quantize", "time", "report"]
    assert hashlib.sha256(pruned.read_bytes()).hexdigest() == digest
    rows = json.loads((run_dir / "report.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["baseline", "final"]
    assert rows[0]["map50_95"] == state["rows"][0]["map50_95"] and rows[1]["map50_95"] is not None
    assert (run_dir / "weights" / "best.pt").is_file() and not (tmp_path / "run-2").exists()

    assert PruneRun.resume(run_dir).run() == run_dir  # finished: nothing to do
    with pytest.raises(ValueError, match="cannot resume"):
        PruneRun.resume(tmp_path)
