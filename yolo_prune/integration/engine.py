"""`PruneRun`: a pruning run (``yolo-prune prune``) as one small method per stage, with callbacks between them.

The stages, in order: ``setup`` (check the arguments once, load the input model and the teacher, make the run
folder), ``baseline`` (measure the input model), ``sparse`` (optional sparse training), ``scan`` (the sensitivity
curves), then per step ``prune``, ``finetune`` and ``measure``, then ``final`` (choose and copy the final model),
``quantize`` (INT8 and QAT rows), ``time`` (every row timed side by side) and ``report``. The run's state (arguments,
the models in memory, rows, notes) lives on the object between stages, so a model is read from disk once per run:
the input model by ``setup``, each fine-tuned model once when its training ends (the pruned models are trained in
memory).

Callbacks take the run and are added per event, as in Ultralytics' trainer: ``on_<stage>_start`` and
``on_<stage>_end`` for every stage above.

Examples:
    >>> from yolo_prune.integration.engine import PruneRun
    >>> run = PruneRun(model="best.pt", data="data.yaml", target_macs=0.5, epochs=10)
    >>> run.add_callback("on_prune_end", lambda r: print(r.pruned.prune_info["target"]))
    >>> run_dir = run.run()

Over 400 lines: one small method per stage (eleven stages) plus the run's state; the work inside the stages lives in
`yolo_prune.integration.stages`.
"""

from __future__ import annotations

import copy
import shutil
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config.options import PRUNE_OPTIONS, check_prune_args
from .stages import (
    PruneInterrupted,
    budget_exceeded,
    check_dataset_matches,
    copy_atomic,
    int8_rows,
    latency_note,
    load_input,
    load_teacher,
    measure_row,
    sensitivity_curves,
    step_ratio,
    time_side_by_side,
    train_module,
    trained_checkpoints,
)

__all__ = ["STAGES", "PruneRun", "parse_prune_args"]

STAGES = ("setup", "baseline", "sparse", "scan", "prune", "finetune", "measure", "final", "quantize", "time", "report")
PER_STEP = ("prune", "finetune", "measure")  # stages that run once per step (their ids in the state: "prune:2")
STATE_FILE = "state.json"  # in the run folder: the arguments, the finished stages and what they left, for resume


def parse_prune_args(overrides: dict[str, Any]) -> dict[str, Any]:
    """Check a run's arguments (`yolo_prune.config.options.check_prune_args`) and resolve ``round_to=auto`` to this
    hardware's channel block (``round_to_reason`` says why); see `check_prune_args` for keys and errors."""
    from ..measurement.hardware import resolve_round_to

    args = check_prune_args(overrides)
    rounding = resolve_round_to(args["round_to"], args["backend"], args["device"])
    args["round_to"], args["round_to_reason"] = rounding.value, rounding.reason
    return args


class PruneRun:
    """One pruning run: its checked arguments, its models in memory, its rows and notes, one method per stage.

    Args:
        command (str, optional): The command line, recorded in the report.
        callbacks (dict, optional): ``{event: [function(run), ...]}`` to add (see `add_callback`).
        **kwargs: ``model``, ``data`` (required) and any other `yolo_prune.config.options.PRUNE_OPTIONS` key or
            Ultralytics training argument; checked here, once (``ValueError`` on bad input, before any work).

    Attributes:
        args (dict): The checked arguments.
        run_dir (Path): The run folder (set by ``setup``).
        baseline: The input model (``YOLO``), loaded once.
        current: The model the next step prunes (``YOLO``; the sparse-trained model, or the last step's).
        pruned: The model the last ``prune`` stage made (``YOLO``, in memory).
        rows (list[dict]): The report's rows so far; ``models`` maps row names to their modules for timing.
        steps (list[dict]): Per finished step: its row and its best/last checkpoints.
        notes (list[str]): Lines for the report.
        last_good (Path | None): The newest complete checkpoint the run wrote.
    """

    def __init__(self, command: str | None = None, callbacks: dict[str, list[Callable]] | None = None, **kwargs: Any):
        """Check the arguments; nothing is loaded or written before `run`."""
        self.args = parse_prune_args(kwargs)
        self.command = command
        self.callbacks: dict[str, list[Callable[[PruneRun], None]]] = defaultdict(list)
        for event, functions in (callbacks or {}).items():
            for function in functions:
                self.add_callback(event, function)
        self.run_dir: Path | None = None
        self.baseline: Any = None
        self.current: Any = None
        self.pruned: Any = None
        self.teacher: str | None = None
        self.teacher_yolo: Any = None
        self.curves: list | None = None
        self.train_args: dict[str, Any] = {}
        self.recipe_reason = ""
        self.budget_note: str | None = None
        self.rows: list[dict] = []
        self.models: dict[str, Any] = {}
        self.steps: list[dict] = []
        self.notes: list[str] = []
        self.step = 0
        self.stopped_at: int | None = None
        self.final: dict | None = None
        self.last_good: Path | None = None
        self.prune_info: dict = {}  # what the last prune stage did (allocation, target, re-fit)
        self.base_map: float | None = None  # the input model's mAP50-95 and GFLOPs (baseline stage)
        self.base_macs: float | None = None
        self.pruned_path: Path | None = None  # the step's pruned.pt, then its fine-tuned best/last checkpoints
        self.best: Path | None = None
        self.last: Path | None = None
        self.before_ft: float | None = None  # the step's mAP50-95 before fine-tuning
        self.best_out: Path | None = None  # weights/best.pt once the final model is chosen
        self.done: list[str] = []  # finished stages ("baseline", "prune:1", ...), saved in STATE_FILE after each
        self.state: dict | None = None  # the saved state of the run being resumed

    # ----------------------------------------------------------------------------------------------------------------
    def add_callback(self, event: str, function: Callable[[PruneRun], None]) -> None:
        """Call ``function(run)`` at ``event`` (``on_<stage>_start`` / ``on_<stage>_end``; stages in `STAGES`)."""
        stage = event.removeprefix("on_").removesuffix("_start").removesuffix("_end")
        if stage not in STAGES or not event.startswith("on_") or not event.endswith(("_start", "_end")):
            raise ValueError(
                f"unknown PruneRun event '{event}': use on_<stage>_start or _end, stages {', '.join(STAGES)}"
            )
        self.callbacks[event].append(function)

    def _stage(self, name: str, work: Callable[[], Any]) -> None:
        """Run one stage between its callbacks and record it as finished; a stage a resumed run already finished is
        restored from what it left instead (no callbacks)."""
        stage = f"{name}:{self.step}" if name in PER_STEP else name
        if stage in self.done and name != "setup":
            self._restore(name)
            return
        for function in self.callbacks.get(f"on_{name}_start", []):
            function(self)
        work()
        for function in self.callbacks.get(f"on_{name}_end", []):
            function(self)
        if stage not in self.done:
            self.done.append(stage)
        self._save_state()

    @classmethod
    def resume(cls, run_dir: str | Path, callbacks: dict[str, list[Callable]] | None = None) -> PruneRun:
        """Continue an interrupted run in its own folder: finished stages are restored from what they left (the scan,
        ``weights/pruned.pt``, fine-tuned checkpoints, measured rows), an interrupted fine-tune resumes from its
        trainer's ``last.pt``, and the remaining stages run.

        Raises:
            ValueError: If ``run_dir`` has no ``state.json`` (not a run folder of this version) or its arguments no
                longer check.
        """
        import json

        file = Path(run_dir) / STATE_FILE
        try:
            state = json.loads(file.read_text())
        except (OSError, ValueError):
            raise ValueError(
                f"cannot resume '{run_dir}': no readable {STATE_FILE} (not a run folder of yolo-prune prune)"
            ) from None
        saved = dict(state["args"])
        overrides = {**saved.pop("train_args", {}), **{k: v for k, v in saved.items() if k in PRUNE_OPTIONS}}
        run = cls(command=state.get("command"), callbacks=callbacks, **overrides)
        run.state, run.run_dir, run.done = state, Path(run_dir), list(state["done"])
        # round_to was saved resolved (an int reads back as "given"): keep why the first run chose it
        run.args["round_to_reason"] = state["args"].get("round_to_reason", run.args["round_to_reason"])
        return run

    def _save_state(self) -> None:
        """Write what the finished stages left to ``state.json`` (atomically), for `resume`."""
        import json

        from .checkpoint import _write_atomic

        fields = ("rows", "steps", "notes", "teacher", "train_args", "recipe_reason", "budget_note", "stopped_at")
        state = {
            "version": 1,
            "command": self.command,
            "args": self.args,
            "done": self.done,
            **{k: getattr(self, k) for k in fields},
            **{k: getattr(self, k) for k in ("base_map", "base_macs", "prune_info", "before_ft")},
            **{k: getattr(self, k) for k in ("pruned_path", "best", "last", "best_out")},
        }
        _write_atomic(self.run_dir / STATE_FILE, json.dumps(state, indent=1, default=str).encode())

    def _restore(self, name: str) -> None:
        """Take over what a finished stage of the resumed run left (a model is read where a later stage needs it)."""
        from .checkpoint import load_yolo

        state, step = self.state or {}, self.step
        if name == "sparse" and self.args["sparse_epochs"]:
            self.current = load_yolo(str(self.run_dir / "sparse" / "weights" / "last.pt"))
            self.models["sparse"] = self.current.model
        elif name == "scan" and self.args["allocation"] == "sensitivity":
            from ..policy.allocate import curves_from_sensitivity

            self.curves = curves_from_sensitivity(self.args["sensitivity"] or self.run_dir / "sensitivity")
        elif name == "prune":
            self.pruned = None  # read from its file only if its fine-tune has yet to run
            self.pruned_path = self.weights / (f"step{step}-pruned.pt" if self.args["steps"] > 1 else "pruned.pt")
            measured = self._measured(step)
            self.prune_info = {} if measured else (state.get("prune_info") or {})
            self.last_good = self.pruned_path
        elif name == "finetune":
            done = self._measured(step)
            self.best = Path(done["best"]) if done else Path(state["best"])
            self.last = Path(done["last"]) if done else Path(state["last"])
            self.before_ft = done["row"].get("map50_95_before_ft") if done else state.get("before_ft")
            self.current = load_yolo(str(self.best))
            self.last_good = self.best
        elif name == "measure":
            self.models[f"step{step}"] = self.current.model
        elif name == "final":
            self.best_out = self.last_good = self.weights / "best.pt"
            self.final = next(r for r in self.rows if r.get("name") == "final")
            self.models["final"] = self.models[f"step{self.final['from_step']}"]

    def _measured(self, step: int) -> dict | None:
        """The resumed run's record of ``step`` (row, best, last) if it was measured."""
        return next((s for s in self.steps if s["row"]["step"] == step), None)

    def log(self, message: str, warning: bool = False) -> None:
        """Log one line with the run's prefix (a warning also goes into the report's notes)."""
        from ultralytics.utils import LOGGER, colorstr

        (LOGGER.warning if warning else LOGGER.info)(f"{colorstr('prune: ')}{message}")
        if warning:
            self.notes.append(message)

    def run(self) -> Path:
        """Run every stage; return the run folder.

        Raises:
            PruneInterrupted: On Ctrl-C, with the last good checkpoint written so far.
        """
        self._stage("setup", self.setup)
        if "report" in self.done:
            self.log(f"{self.run_dir} is a finished run: nothing to resume")
            return self.run_dir
        try:
            self._stage("baseline", self.measure_baseline)
            self._stage("sparse", self.sparse_train)
            self._stage("scan", self.scan)
            for step in range(1, self.args["steps"] + 1):
                self.step = step
                self._stage("prune", self.prune_step)
                self._stage("finetune", self.finetune)
                self._stage("measure", self.measure_step)
                if self.stopped_at is not None:
                    break
            self._stage("final", self.choose_final)
            self._stage("quantize", self.quantize)
            self._stage("time", self.time_rows)
        except KeyboardInterrupt as e:
            raise self._interrupted() from e
        self._stage("report", self.write_report)
        return self.run_dir

    # ----------------------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Resolve the data, load the input model (once), check data and teacher against it, make the run folder and
        derive the fine-tuning recipe and budget."""
        from ultralytics.utils import colorstr
        from ultralytics.utils.files import increment_path

        from ..config.checks import check_output_folder
        from ..data.builtin import resolve_data
        from .recipe import count_images, finetune_defaults, finetune_epochs

        args = self.args
        check_output_folder(args["project"])
        args["data"] = resolve_data(args["data"])
        self.baseline = self.current = load_input(args["model"], args["data"])  # ValueError for a bad model
        head = self.baseline.model.model[-1]
        info = check_dataset_matches(args["data"], int(head.nc), getattr(head, "kpt_shape", None))
        args["epochs"], self.budget_note = finetune_epochs(
            args["epochs"], count_images(info.get("train")), args["min_images"]
        )
        self.teacher, self.teacher_yolo = load_teacher(args, self.baseline) if args["distill"] else (None, None)
        self.models = {"baseline": self.baseline.model}
        if self.state is not None:
            self._take_over_state()
            return
        self.run_dir = increment_path(Path(args["project"]) / args["name"], mkdir=True)
        self.log(
            f"{args['model']} -> {colorstr('bold', self.run_dir)}: {self.goal} in {args['steps']} step(s), "
            f"allocation={args['allocation']}, {args['epochs']} fine-tuning epoch(s) each"
            f"{', distilled from ' + self.teacher if self.teacher else ''}, method={args['method']}"
        )
        ckpt = getattr(self.baseline, "ckpt", None) or {}
        recipe, self.recipe_reason = finetune_defaults(ckpt.get("train_args"), int(head.nc))
        self.train_args = {**recipe, "seed": args["seed"], **args["train_args"]}
        if not {"optimizer", "lr0"} & set(args["train_args"]):
            self.log(f"fine-tuning {self.recipe_reason}")
        if self.budget_note:
            self.log(self.budget_note)
        if self.teacher:
            self.train_args["distill_model"] = self.teacher
            if args["distill_projector"] != "random":
                self.train_args["distill_projector"] = args["distill_projector"]

    def _take_over_state(self) -> None:
        """On resume: the rows, notes, recipe and measurements the finished stages left."""
        state = self.state
        for key in ("rows", "steps", "notes", "train_args", "recipe_reason", "budget_note", "stopped_at"):
            setattr(self, key, state[key])
        self.base_map, self.base_macs = state.get("base_map"), state.get("base_macs")
        for step in self.steps:
            step["best"], step["last"] = Path(step["best"]), Path(step["last"])
        self.log(f"resuming {self.run_dir}: finished stages {', '.join(self.done)} are taken as they are")

    @property
    def goal(self) -> str:
        """The run's target as the user gave it (``target_macs=0.5``, ``ratio=0.3``, ...)."""
        return next(
            f"{k}={self.args[k]}" for k in ("ratio", "target_latency", "target_macs") if self.args[k] is not None
        )

    @property
    def weights(self) -> Path:
        """The run's ``weights/`` folder."""
        return self.run_dir / "weights"

    def measure_baseline(self) -> None:
        """Measure the input model (mAP, params, GFLOPs, size); its latency is timed with every row at the end."""
        from ..measurement.measure import count_gflops

        self.log("measuring the baseline")
        self.rows = [measure_row(self.baseline.model, "baseline", self.args["model"], self.args, self.measure_dir)]
        self.base_map = self.rows[0].get("map50_95")
        self.base_macs = count_gflops(self.baseline.model, self.args["imgsz"])
        self.log(f"baseline mAP50-95={_f(self.base_map)} mAP50={_f(self.rows[0].get('map50'))}")
        if self.args["max_map_drop"] is not None and self.base_map is None:
            self.log(
                f"max_map_drop={self.args['max_map_drop']} is not applied: the baseline could not be validated, so "
                "there is no mAP50-95 to measure the drop from; every step of the schedule runs",
                warning=True,
            )

    @property
    def measure_dir(self) -> Path:
        """Where validation output and exports of the measured models go."""
        return self.run_dir / "measure"

    def sparse_train(self) -> None:
        """With ``sparse_epochs``: train the input model that many epochs with the sparsity penalty; its last epoch
        (strongest sparsity) is what gets pruned. The input is saved as ``weights/input.pt`` (FP32) first."""
        if not self.args["sparse_epochs"]:
            return
        from .callbacks import PruneCallback
        from .checkpoint import load_yolo, save_checkpoint

        args = self.args
        source = save_checkpoint(self.baseline, self.weights / "input.pt")
        penalty = PruneCallback(
            ratio=0.0, sparsity=args["sparsity"], sparse=args["sparse"], sparse_epochs=args["sparse_epochs"]
        )
        plain = {k: v for k, v in self.train_args.items() if k not in ("distill_model", "dis", "distill_projector")}
        module = copy.deepcopy(self.baseline.model)
        trainer = train_module(
            module, source, self.run_dir, "sparse", args, plain, args["sparse_epochs"], penalty.callbacks
        )
        _, last = trained_checkpoints(trainer)
        self.current = load_yolo(str(last))
        self.rows.append(measure_row(self.current.model, "sparse", last, args, self.measure_dir))
        self.models["sparse"] = self.current.model
        self.last_good = last

    def scan(self) -> None:
        """With ``allocation=sensitivity``: the per-layer sensitivity curves (read from ``sensitivity=``, or scanned
        into ``<run>/sensitivity``)."""
        if self.args["allocation"] == "sensitivity":
            self.curves = sensitivity_curves(self.current, self.run_dir, self.args)

    def step_amount(self) -> dict[str, float]:
        """What this step prunes to: the per-step ratio, the latency target, or the cumulative MACs target after this
        step relative to what the current model keeps."""
        from ..measurement.measure import count_gflops

        args, step = self.args, self.step
        if args["ratio"] is not None:
            return {"ratio": step_ratio(args["ratio"], args["steps"])}
        if args["target_latency"] is not None:
            return {"target_latency": args["target_latency"]}
        kept = count_gflops(self.current.model, args["imgsz"]) / self.base_macs
        return {"target_macs": min(1.0, args["target_macs"] ** (step / args["steps"]) / kept)}

    def prune_step(self) -> None:
        """Prune the current model (in memory) and save it at once as ``weights/pruned.pt`` (FP32)."""
        from ..policy.prune import prune
        from .checkpoint import save_checkpoint

        args, step = self.args, self.step
        amount = self.step_amount()
        self.log(f"step {step}/{args['steps']}: pruning the current model to {amount}")
        threads = args["threads"] or 1
        self.pruned = prune(
            self.current,
            **amount,
            method=args["method"],
            round_to=args["round_to"],
            attention=args["attention"],
            reconstruct=args["reconstruct"],
            reconstruct_images=args["reconstruct_images"],
            seed=args["seed"],
            global_pruning=args["allocation"] == "global",
            sensitivity=self.curves,
            data=args["data"],  # calibration images for gradient methods (taylor, hessian) and the re-fit
            device=args["device"],
            imgsz=args["imgsz"],
            backend=args["backend"],
            threads=args["threads"],
            latency_table=self.run_dir / "latency" / f"{args['backend']}-{args['imgsz']}-t{threads}.json",
        )
        info = self.prune_info = self.pruned.prune_info
        meta = {
            **{k: args[k] for k in ("ratio", "target_macs", "target_latency", "backend", "allocation", "steps")},
            "layer_ratios": info.get("layer_ratios"),
            "target": info.get("target"),
            "distill_model": self.teacher,
            "step_ratio": amount.get("ratio"),
            "step": step,
            **{k: args[k] for k in ("method", "round_to", "attention")},
            "source": str(args["model"]),
            "fine_tuned_epochs": 0,
        }
        self.pruned_path = save_checkpoint(self.pruned, self.weights / "pruned.pt", yolo_prune=meta)
        if args["target_latency"] is not None:
            self.notes.append(latency_note(info["target"]))
        self.last_good = self.pruned_path
        if args["steps"] > 1:
            self.pruned_path = copy_atomic(self.pruned_path, self.weights / f"step{step}-pruned.pt")

    def finetune(self) -> None:
        """Fine-tune the pruned model in memory with the pruned trainer of its task (``<run>/step<k>``), then read
        its best checkpoint once; with ``epochs=0`` the pruned model is the step's model."""
        from ultralytics import YOLO

        from ..rules.tasks import trainer_for
        from .checkpoint import load_yolo

        self.before_ft = None
        folder = self.run_dir / f"step{self.step}"
        interrupted = folder / "weights" / "last.pt"
        if folder.is_dir() and not interrupted.is_file():
            shutil.rmtree(folder)  # a fine-tune interrupted before its first checkpoint: it starts again
        if self.pruned is None and not interrupted.is_file():
            self.pruned = load_yolo(str(self.pruned_path))  # resumed after pruning: the saved pruned model
        if self.args["epochs"] <= 0:
            self.best = self.last = self.pruned_path
            self.current = self.pruned
            return
        if interrupted.is_file():  # resumed: Ultralytics continues the fine-tune from its last epoch
            yolo = YOLO(str(interrupted))
            if yolo.ckpt.get("epoch", -1) >= 0 and yolo.ckpt.get("optimizer") is not None:
                self.log(f"resuming the fine-tune from {interrupted}")
                yolo.train(resume=True, trainer=trainer_for(yolo.model))
                self.best, self.last = trained_checkpoints(yolo.trainer)
            else:  # it had finished (Ultralytics strips the optimizer at the end): take its checkpoints
                best = interrupted.with_name("best.pt")
                self.best, self.last = (best if best.is_file() else interrupted), interrupted
            self.last_good = self.best
            self.current = load_yolo(str(self.best))
            return
        trainer = train_module(
            self.pruned.model,
            self.pruned_path,
            self.run_dir,
            f"step{self.step}",
            self.args,
            self.train_args,
            self.args["epochs"],
            teacher=copy.deepcopy(self.teacher_yolo.model) if self.teacher else None,  # not read again from disk
        )
        self.best, self.last = trained_checkpoints(trainer)
        self.last_good = self.best
        start = (getattr(trainer, "start_metrics", None) or {}).get("metrics/mAP50-95(B)")
        self.before_ft = None if start is None else float(start)
        self.current = load_yolo(str(self.best))

    def measure_step(self) -> None:
        """Measure the step's model; with ``max_map_drop``, stop the schedule when it falls outside the budget."""
        step = self.step
        row = measure_row(self.current.model, f"step{step}", self.best, self.args, self.measure_dir)
        self.models[f"step{step}"] = self.current.model
        row["step"] = step
        if self.before_ft is not None:
            row["map50_95_before_ft"] = self.before_ft
        if "reconstruct" in self.prune_info:
            row["reconstruct"] = self.prune_info["reconstruct"]
        self.steps.append({"row": row, "best": self.best, "last": self.last})
        self.log(
            f"step {step}: mAP50-95={_f(row.get('map50_95'))} (baseline {_f(self.base_map)}"
            + (f", {_f(self.before_ft)} before fine-tuning)" if self.before_ft is not None else ")")
        )
        if budget_exceeded(self.base_map, row.get("map50_95"), self.args["max_map_drop"]):
            self.stopped_at = step

    def choose_final(self) -> None:
        """Choose the final model (the last step, or the last one within ``max_map_drop``) and copy it to
        ``weights/best.pt`` and ``weights/last.pt``."""
        steps, drop = self.steps, self.args["max_map_drop"]
        chosen = steps[-1]
        if self.stopped_at is not None:
            within = [s for s in steps if not budget_exceeded(self.base_map, s["row"].get("map50_95"), drop)]
            if within:
                chosen = within[-1]
                self.log(
                    f"stopped after step {self.stopped_at}: mAP50-95 {_f(steps[-1]['row'].get('map50_95'))} is more "
                    f"than max_map_drop={drop} below the baseline {_f(self.base_map)}; the final model is step "
                    f"{chosen['row']['step']}, the last one within the budget",
                    warning=True,
                )
            else:
                self.log(
                    f"step 1 already drops mAP50-95 more than max_map_drop={drop} below the baseline "
                    f"({_f(steps[0]['row'].get('map50_95'))} vs {_f(self.base_map)}); the final model is step 1, the "
                    "least pruned one; try a smaller ratio, more steps or more epochs",
                    warning=True,
                )
        self.best_out = copy_atomic(chosen["best"], self.weights / "best.pt")
        copy_atomic(chosen["last"], self.weights / "last.pt")
        self.last_good = self.best_out
        self.final = {
            **copy.deepcopy(chosen["row"]),
            "name": "final",
            "path": str(self.best_out),
            "from_step": chosen["row"]["step"],
        }
        self.rows += [s["row"] for s in steps] if self.args["steps"] > 1 else []
        self.rows.append(self.final)
        self.models["final"] = self.models[f"step{chosen['row']['step']}"]

    def quantize(self) -> None:
        """With ``int8=<format>``: INT8 rows of the baseline and the final model; with ``qat=True``: quantization-aware
        training of the final model (``qat_epochs``, Ultralytics ``quantize=8``) and its INT8 ONNX row."""
        args, out_dir = self.args, self.measure_dir / "int8"
        if args["int8"]:
            self.rows += int8_rows(self.baseline.model, self.rows[0], self.models["final"], self.final, args, out_dir)
        if not args["qat"]:
            return
        from ..measurement.quantize import measure_int8

        self.log(f"QAT: {args['qat_epochs']} epoch(s) of quantization-aware training")
        distill_keys = ("distill_model", "dis", "distill_projector")
        plain = {k: v for k, v in self.train_args.items() if k not in distill_keys}  # the student alone is quantized
        module = copy.deepcopy(self.models["final"])
        trainer = train_module(
            module, self.best_out, self.run_dir, "qat", args, {**plain, "quantize": 8}, args["qat_epochs"]
        )
        best, _ = trained_checkpoints(trainer)
        row = measure_int8(
            best, args["data"], args["imgsz"], out_dir, "final_qat", self.final, runs=0, format="onnx", qat=True
        )  # validated here, timed beside the other rows
        row.update(name="final+qat", path=str(best), int8_of="final", qat_epochs=args["qat_epochs"])
        self.rows.append(row)

    def time_rows(self) -> None:
        """Time every row on every backend side by side (interleaved rounds)."""
        self.notes += time_side_by_side(self.rows, self.models, self.args, self.measure_dir)

    def write_report(self) -> None:
        """Write ``report.json``/``report.md``/``results.csv``/``pareto.png`` and log the table."""
        from ultralytics.utils import colorstr

        from ..measurement.report import format_table, write_report

        args, notes = self.args, self.notes
        notes.append(
            f"{self.goal} in {args['steps']} step(s), allocation={args['allocation']} ({args['method']}, round_to="
            f"{args['round_to']}: {args['round_to_reason']}), {args['epochs']} fine-tuning epoch(s) per step at "
            f"imgsz={args['imgsz']}"
            + (f", distilled from {self.teacher}" if self.teacher else "")
            + (
                f"; {args['sparse_epochs']} sparse epoch(s) first (sparsity={args['sparsity']:g})"
                if args["sparse_epochs"]
                else ""
            )
        )
        fine_tune = {k: v for k, v in self.train_args.items() if k != "distill_model"}
        notes.append(
            f"fine-tuning arguments: {', '.join(f'{k}={v}' for k, v in fine_tune.items())} ({self.recipe_reason})"
        )
        if self.budget_note:
            notes.append(self.budget_note)
        if args["max_map_drop"] is not None:
            notes.append(f"max_map_drop={args['max_map_drop']} (absolute mAP50-95 below the baseline)")
        notes.append("size_mb: the model saved as YOLO.save() writes it (FP16); weights/pruned.pt is FP32")
        if args["int8"]:
            from ..measurement.quantize import int8_note

            notes.append(int8_note(args["int8"], args["qat_epochs"] if args["qat"] else None))
        files = write_report(self.rows, self.run_dir, title="yolo-prune prune", command=self.command, notes=notes)
        self.log(f"results (first row is the baseline):\n{format_table(self.rows)}")
        self.log(
            f"final model {colorstr('bold', self.weights / 'best.pt')}; report: "
            f"{', '.join(str(p.relative_to(self.run_dir)) for p in files.values())} in {self.run_dir}"
        )

    def _interrupted(self) -> PruneInterrupted:
        """The `PruneInterrupted` for a Ctrl-C now: the newest complete checkpoint (a running fine-tune's last epoch
        is newer than the pruned model)."""
        from ..rules.tasks import trainer_for

        last_good = self.last_good
        trainer_last = self.run_dir / f"step{self.step}" / "weights" / "last.pt"
        if self.step and trainer_last.is_file() and (last_good is None or last_good.name == "pruned.pt"):
            last_good = trainer_last
        return PruneInterrupted(self.run_dir, last_good, trainer_for(self.baseline.model).__name__)


def _f(x: Any) -> str:
    """Format an mAP value for the log."""
    return "-" if x is None else f"{float(x):.4f}"
