"""``svdadapt train``: fine-tune a run's adapters (building the run first if needed) through
``transformers.Trainer``: GLUE-style classification or instruction SFT of causal LMs."""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import backend
from ..adapters.inject import adapter_state
from ..atomic import exclusive, write_json
from ..build.options import AdapterOptions, check_statistics
from ..data.options import DataOptions
from ..data.tasks import classification_task
from ..errors import SvdadaptError
from ..files import read_json
from ..models import load_tokenizer, resolve_location
from ..options import Options, flat_fields, group, opt
from ..runs import RUN_FILE, Run, copy_run, mark_stage, update_run
from ..train.checkpoints import last_checkpoint
from ..train.options import TaskOptions, TrainingOptions
from .build import BuildOptions, build_locked
from .common import DEVICE_HELP, MODEL_HELP

BUILDING = ("adapter", "calibration")  # TrainOptions' groups that only building a run reads
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
    seed: int = opt(0, "seed for initialisation, data order and dropout")
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
        shown = {k: v for k, v in self.results.items() if k not in ("history", "log")}
        return f"{json.dumps(shown)}\ntrained run: {self.run.path} (merge or export it like a built run)"


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


def _existing_out(opts: TrainOptions) -> Path | None:
    """OUT when it already holds a run to resume."""
    out = Path(opts.out).expanduser() if opts.out else None
    return out if out is not None and opts.training.resume and (out / RUN_FILE).is_file() else None


def prepare_run(opts: TrainOptions, progress: bool) -> Run:
    """The run to train: `RUN`, an existing run at OUT (resume), or one built into OUT now."""
    task = classification_task(opts.task.task)
    if opts.run:
        run = Run.open(opts.run)
        if task is not None and run.meta.get("head") != "seq-cls":
            raise SvdadaptError(
                f"{opts.run} was built without a classification head; build it with --head seq-cls "
                f"--num-labels {task.num_labels}, or let train build the run"
            )
        if task is not None and run.meta.get("num_labels") != task.num_labels:
            kind = "a regression task (1 output)" if task.regression else f"{task.num_labels} classes"
            raise SvdadaptError(
                f"{opts.run} has a head with {run.meta.get('num_labels')} outputs but {task.name} is {kind}; "
                f"build it with --num-labels {task.num_labels}"
            )
        if task is None and run.meta.get("head") == "seq-cls":
            raise SvdadaptError(f"{opts.run} has a classification head; --task sft needs a causal LM run")
        out = Path(opts.out).expanduser() if opts.out else run.path
        if out.resolve() == run.path.resolve():
            return run
        if _existing_out(opts):
            return Run.open(out)
        if backend.world_size() > 1:
            raise SvdadaptError("under a multi-process launcher, train RUN in place (leave out --out)")
        return copy_run(run, out, opts.overwrite)
    if _existing_out(opts):
        return Run.open(_existing_out(opts))
    if not opts.model or not opts.adapter.method:
        raise SvdadaptError(NO_RUN)
    if backend.world_size() > 1:
        raise SvdadaptError(
            "under a multi-process launcher, train an existing run: `svdadapt build ... --out RUN` first, "
            "then launch `svdadapt train RUN ...`"
        )
    given = {k: getattr(opts.adapter, k) for k in BUILD_DEFAULTS if getattr(opts.adapter, k) is not None}
    adapter = replace(opts.adapter, **{**BUILD_DEFAULTS, **given})
    build_opts = BuildOptions(
        model=opts.model, out=opts.out, adapter=adapter, calibration=opts.calibration, device=opts.device,
        seed=opts.seed, head="seq-cls" if task is not None else "auto", num_labels=task.num_labels if task else None,
        overwrite=opts.overwrite,
    )  # fmt: skip
    return build_locked(build_opts, Path(opts.out).expanduser(), progress).run  # under train's lock of OUT


def _tokenizer(opts: TrainOptions):
    if opts.run:
        return load_tokenizer(Run.open(opts.run).base_location)
    if _existing_out(opts):
        return load_tokenizer(Run.open(_existing_out(opts)).base_location)
    if not opts.model:
        raise SvdadaptError(NO_RUN)
    return load_tokenizer(resolve_location(opts.model))


def _trained_dir(opts: TrainOptions) -> Path:
    """The directory this training writes: OUT, or RUN trained in place."""
    return Path(opts.out or opts.run).expanduser()


def train(opts: TrainOptions, progress: bool = True) -> TrainResult:
    """Train as the CLI does: the run ends at stage "trained" with its training results. One process
    of a launch writes (and holds the run's lock); a run created here is removed if training fails
    (not when interrupted: with --save-checkpoints it continues with --resume)."""
    from ..train.session import nothing_to_resume, prepare_data, run_training  # Trainer's: seconds, only here

    device = backend.resolve_device(opts.device)
    data = prepare_data(opts.task, _tokenizer(opts), opts.seed)  # bad data fails before a run is built
    target = _trained_dir(opts)
    created = not os.path.lexists(target)  # decided before anything can fail: only a new folder is ours
    with exclusive(target) if backend.is_main_process() else nullcontext():
        try:
            return _train(opts, data, device, run_training, nothing_to_resume, progress)
        except Exception:
            if created and backend.is_main_process():
                shutil.rmtree(target, ignore_errors=True)
            raise


def _train(opts: TrainOptions, data, device: str, run_training, nothing_to_resume, progress: bool) -> TrainResult:
    started = time.monotonic()
    run = prepare_run(opts, progress)
    before = run
    if opts.training.resume and run.meta["stage"] == "trained" and nothing_to_resume(run.path, opts.training):
        results = read_json(run.path / "train_results.json", "training results", "train without --resume")
        return TrainResult(run, results, resumed_finished=True)  # the run stays as it was
    if backend.is_main_process():
        run = mark_stage(run, "training")  # until the trained adapter is written
    loaded = run.load_adapted(device=device)
    result = run_training(opts.training, opts.task.task, opts.seed, run, loaded, data, progress)
    head = result.pop("head_state")
    if not backend.is_main_process():  # one writer: the other processes of a launch only trained
        return TrainResult(run)
    if opts.training.resume and result["steps_this_session"] == 0 and before.meta["stage"] == "trained":
        mark_stage(before, "trained")  # the checkpoint was the end: the run stays as it was
        results = read_json(run.path / "train_results.json", "training results", "train without --resume")
        return TrainResult(Run.open(run.path), results, resumed_finished=True)
    trained = adapter_state(loaded.model, run.meta["method"])
    summary = {**result, "seconds": round(time.monotonic() - started, 1), "task": opts.task.task}
    run = update_run(run, trained, head=head or None, training=summary)
    write_json(run.path / "train_results.json", summary)
    return TrainResult(run, summary)
