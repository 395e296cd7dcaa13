"""``svdadapt train``: fine-tune a run's adapters (building the run first if needed) through
``transformers.Trainer``: GLUE-style classification or instruction SFT of causal LMs."""

from __future__ import annotations

import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import backend
from ..adapters.inject import adapter_state
from ..atomic import exclusive, write_json
from ..build.options import AdapterOptions, check_statistics
from ..data.options import DataOptions
from ..data.tasks import ClassificationTask, classification_task
from ..errors import SvdadaptError
from ..files import read_json
from ..method_options import given
from ..methods import Method
from ..models import load_tokenizer, resolve_location
from ..options import SEED, Options, flat_fields, group, opt
from ..runs import RUN_FILE, Run, copy_run, mark_stage, update_run
from ..train.checkpoints import last_checkpoint
from ..train.options import TaskOptions, TrainingOptions
from .build import BuildOptions, build_locked
from .common import DEVICE_HELP, MODEL_HELP

BUILDING = ("adapter", "calibration")  # TrainOptions' groups that only building a run reads (and --model)
BUILD_DEFAULTS = {"rank": 8, "dropout": 0.0}  # when train builds the run (None in TrainOptions: given or not)
NO_RUN = "give --model, --method and --out to build a run and train it, or an existing run: svdadapt train RUN"


@dataclass(kw_only=True)
class TrainOptions(Options):
    """Fine-tune adapters on a task with transformers.Trainer: GLUE-style sequence classification
    (the task head trains in full) or instruction fine-tuning of a causal LM (loss on responses)."""

    out: str | None = opt(
        None,
        "run directory: built here first, or with RUN a copy of RUN trained here (default with RUN: "
        "train RUN in place)",
    )
    run: str | None = opt(
        None, "an existing run (from svdadapt build) to train, in place of --model/--method", positional=True, nargs="?"
    )
    task: TaskOptions = group(TaskOptions)
    model: str | None = opt(None, MODEL_HELP)
    adapter: AdapterOptions = group(AdapterOptions, defaults={"method": None, "rank": None, "dropout": None})
    calibration: DataOptions = group(DataOptions, prefix="calib_", defaults={"data": None})  # --calib-data
    training: TrainingOptions = group(TrainingOptions)
    seed: int = opt(0, "seed for initialisation, data order and dropout", check=SEED)
    device: str | None = opt(None, DEVICE_HELP)
    overwrite: bool = opt(False, "replace a trained run at --out (a copy of RUN, or a run built there)", how=True)

    def check(self) -> None:
        if not self.out and not self.run:
            raise SvdadaptError(NO_RUN)
        if not self.run:
            check_statistics(self.adapter, self.calibration, "--calib-data")
            return
        building = [flat.flag for flat in flat_fields(TrainOptions)
                    if flat.path[0] in BUILDING and flat.get(self) != flat.default]  # fmt: skip
        building = ["--model"] * (self.model is not None) + building  # RUN names its own base
        if building:
            raise SvdadaptError(
                f"{', '.join(building)}: {'these are' if len(building) > 1 else 'this is'} for building a run, and "
                f"{self.run} is built already; leave {'them' if len(building) > 1 else 'it'} out, or build again with "
                "them (svdadapt build, or train --model M --method NAME --out DIR)"
            )


@dataclass
class TrainResult:
    run: Run
    results: dict = field(default_factory=dict)  # what train_results.json holds (empty on other processes)
    resumed_finished: bool = False  # --resume found the run trained to the end: nothing was done

    def summary(self) -> str:
        if self.resumed_finished:
            return f"{self.run.path} is trained to the end already; nothing to resume (without --resume: retrain)"
        r = self.results
        lines = [f"trained run: {self.run.path} (merge or export it like a built run)"]
        if not r:  # another process of a launch: the writer's summary says it all
            return lines[0]
        resumed = f", {r['steps_this_session']} of them now" if r["steps_this_session"] != r["steps"] else ""
        lines.append(f"  steps       {r['steps']}{resumed}, on {r['train_examples']} examples, in {r['seconds']:.1f} s")
        last = next((e.get("task_loss", e["loss"]) for e in reversed(r["log"]) if "loss" in e), None)
        shown = f"{last:.4f} at the last logged step, " if last is not None else ""
        lines.append(f"  task loss   {shown}mean {r['train_loss']:.4f} over all steps (loss terms included)")
        if r["history"]:
            main, end, best = r["main_metric"], r["history"][-1], r["best"]
            lines.append(f"  eval        {main} {_score(end, main)} at the end, on {r['eval_examples']} examples")
            if best is not None and (best.get("step"), best["epoch"]) != (end.get("step"), end["epoch"]):
                lines.append(f"  best        {main} {_score(best, main)}")
        lines.append(f"  results     {self.run.path / 'train_results.json'}")
        return "\n".join(lines)


def _score(entry: dict, metric: str) -> str:
    """``0.6123 (epoch 1, step 40)`` of a history entry or the best one."""
    step = f", step {entry['step']}" if entry.get("step") is not None else ""
    return f"{entry[metric]:.4f} (epoch {entry['epoch']}{step})"


def written(opts: TrainOptions) -> str:
    """The run this training writes: OUT, or RUN trained in place."""
    return opts.out or opts.run


def resumable(opts: TrainOptions) -> bool:
    """Whether the run it writes was left mid-training with a checkpoint that ``--resume`` continues."""
    path = Path(written(opts)).expanduser()
    try:
        stage = Run.open(path).meta.get("stage")
    except SvdadaptError:
        return False
    return stage == "training" and last_checkpoint(path) is not None


@dataclass
class TrainPlan:
    """What a training resolves once from its options, before any model loads: the run it writes and
    where that run comes from, the task, the method row with its training parameters, the tokenizer."""

    target: Path  # the run directory this training writes: OUT, or RUN in place
    created: bool  # nothing was at ``target``: a failed training removes it (and only then)
    source: Run | None  # RUN, when given
    resuming: Run | None  # the run at OUT that --resume continues
    task: ClassificationTask | None  # None: instruction SFT
    row: Method  # the run's method row, with the training parameters given (loss weights)
    tokenizer: Any


def launchable(opts: TrainOptions) -> bool:
    """Whether it may run in each process of a launch: it trains a run that exists, in place (RUN,
    or OUT resumed); building or copying one is one process's work."""
    out = Path(opts.out).expanduser() if opts.out else None
    if out is not None and opts.training.resume and (out / RUN_FILE).is_file():
        return True
    return bool(opts.run) and (out is None or out.resolve() == Path(opts.run).expanduser().resolve())


def plan_training(opts: TrainOptions) -> TrainPlan:
    """Resolve ``opts`` once (see :class:`TrainPlan`); one line for a run that cannot take the task
    or a method parameter the row does not have."""
    target = Path(written(opts)).expanduser()
    created = not os.path.lexists(target)  # decided before anything can fail: only a new folder is ours
    task = classification_task(opts.task.task)
    source = Run.open(opts.run) if opts.run else None
    out = Path(opts.out).expanduser() if opts.out else None
    resumes = out is not None and opts.training.resume and (out / RUN_FILE).is_file()
    resuming = Run.open(out) if resumes and (source is None or out.resolve() != source.path.resolve()) else None
    if source is not None:
        _check_head(source, task)
    if source is None and resuming is None and (not opts.model or not opts.adapter.method):
        raise SvdadaptError(NO_RUN)
    existing = resuming or source
    row = existing.method if existing is not None else opts.adapter.row()
    row = row.configured(**given(opts.training.params))  # --beta on a run of a method without it: one line
    location = existing.base_location if existing is not None else resolve_location(opts.model)
    return TrainPlan(target, created, source, resuming, task, row, load_tokenizer(location))


def _check_head(run: Run, task: ClassificationTask | None) -> None:
    """RUN's model head fits the task: a classification head of as many outputs, or none for SFT."""
    if task is not None and run.meta.get("head") != "seq-cls":
        raise SvdadaptError(
            f"{run.path} was built without a classification head; build it with --head seq-cls "
            f"--num-labels {task.num_labels}, or let train build the run"
        )
    if task is not None and run.meta.get("num_labels") != task.num_labels:
        kind = "a regression task (1 output)" if task.regression else f"{task.num_labels} classes"
        raise SvdadaptError(
            f"{run.path} has a head with {run.meta.get('num_labels')} outputs but {task.name} is {kind}; "
            f"build it with --num-labels {task.num_labels}"
        )
    if task is None and run.meta.get("head") == "seq-cls":
        raise SvdadaptError(f"{run.path} has a classification head; --task sft needs a causal LM run")


def prepare_run(opts: TrainOptions, plan: TrainPlan, progress: bool) -> Run:
    """The run to train: RUN (in place, or copied to OUT), the run at OUT that --resume continues, or
    one built into OUT now."""
    if plan.resuming is not None:
        return plan.resuming
    if plan.source is not None:
        if plan.target.resolve() == plan.source.path.resolve():
            return plan.source
        return copy_run(plan.source, plan.target, opts.overwrite)
    given_now = {k: getattr(opts.adapter, k) for k in BUILD_DEFAULTS if getattr(opts.adapter, k) is not None}
    adapter = replace(opts.adapter, **{**BUILD_DEFAULTS, **given_now})
    task = plan.task
    build_opts = BuildOptions(
        model=opts.model, out=opts.out, adapter=adapter, calibration=opts.calibration, device=opts.device,
        seed=opts.seed, head="seq-cls" if task is not None else "auto", num_labels=task.num_labels if task else None,
        overwrite=opts.overwrite,
    )  # fmt: skip
    return build_locked(build_opts, plan.target, progress).run  # under train's lock of OUT


def train(opts: TrainOptions, progress: bool = True) -> TrainResult:
    """Train as the CLI does: the run ends at stage "trained" with its training results. One process
    of a launch writes (and holds the run's lock); a run created here is removed if training fails
    (not when interrupted: with --save-checkpoints it continues with --resume)."""
    from ..train.session import nothing_to_resume, prepare_data, run_training  # Trainer's: seconds, only here

    device = backend.resolve_device(opts.device)
    launch = backend.launch(device)  # not joined: the processes' group is Trainer's
    plan = plan_training(opts)
    data = prepare_data(opts.task, plan.task, plan.tokenizer, opts.seed)  # bad data fails before a run is built
    with exclusive(plan.target) if launch.writer else nullcontext():
        try:
            return _train(opts, plan, data, device, run_training, nothing_to_resume, progress, launch)
        except Exception:
            if plan.created and launch.writer:
                shutil.rmtree(plan.target, ignore_errors=True)
            raise


def _train(
    opts: TrainOptions,
    plan: TrainPlan,
    data,
    device: str,
    run_training,
    nothing_to_resume,
    progress: bool,
    launch: backend.Launch,
) -> TrainResult:
    started = time.monotonic()
    run = prepare_run(opts, plan, progress)
    before = run
    if opts.training.resume and run.meta["stage"] == "trained" and nothing_to_resume(run.path, opts.training):
        results = read_json(run.path / "train_results.json", "training results", "train without --resume")
        return TrainResult(run, results, resumed_finished=True)  # the run stays as it was
    if launch.writer:
        run = mark_stage(run, "training")  # until the trained adapter is written
    loaded = run.load_adapted(device=device)
    result = run_training(opts.training, plan.task, plan.row, opts.seed, run, loaded, data, progress, launch.writer)
    head = result.pop("head_state")
    if not launch.writer:  # one writer: the other processes of a launch only trained
        return TrainResult(run)
    if opts.training.resume and result["steps_this_session"] == 0 and before.meta["stage"] == "trained":
        mark_stage(before, "trained")  # the checkpoint was the end: the run stays as it was
        results = read_json(run.path / "train_results.json", "training results", "train without --resume")
        return TrainResult(Run.open(run.path), results, resumed_finished=True)
    trained = adapter_state(loaded.model, run.meta["method"])
    summary = {
        **result, "seconds": round(time.monotonic() - started, 1), "task": opts.task.task,
        **({"params": plan.row.stage_values("train")} if plan.row.stage_values("train") else {}),
    }  # fmt: skip
    run = update_run(run, trained, head=head or None, training=summary)
    write_json(run.path / "train_results.json", summary)
    return TrainResult(run, summary)
