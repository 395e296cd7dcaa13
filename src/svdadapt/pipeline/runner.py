"""Running a pipeline's stages in order, each a command with its planned options.

In one process, ``OUT/pipeline.json`` records each stage (:mod:`.journal`), one run of a pipeline at a
time. Run again with ``resume``, the stages that finished with the same options and inputs, whose
outputs are as they left them, are kept; the first stage that is not continues an interrupted
calibration or checkpointed training where it may, and from there on every stage runs again,
replacing what the pipeline created at its output (:mod:`.resume`). Under a launcher there is no
journal (nothing to agree on it with before a stage): every stage runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import backend
from ..atomic import exclusive
from ..commands import Result
from ..errors import SvdadaptError
from ..options import result_values
from .journal import JOURNAL_FILE, Journal
from .removal import remove_leftovers
from .resume import kept_stages, prepare
from .stage import Kept, Stage


@dataclass
class Done:
    name: str
    result: Result  # or Kept
    seconds: float  # how long it took in this run


@dataclass
class RunResult:
    out: Path
    stages: list[Done]

    def summary(self) -> str:
        kept = [done.name for done in self.stages if isinstance(done.result, Kept)]
        said = f"; {len(kept)} kept from the earlier run" if kept else ""
        names = ", ".join(done.name for done in self.stages)
        return f"pipeline {self.out}: {len(self.stages)} stages done ({names}){said}"


def recorded(out: Path) -> bool:
    """Whether an earlier run of a pipeline into ``out`` left its journal."""
    return (out / JOURNAL_FILE).is_file()


def run_stages(
    stages: list[Stage], out: Path, resume: bool, progress: bool = True, label: str = "svdadapt run"
) -> RunResult:
    """Run ``stages`` into the pipeline folder ``out``; ``resume``: continue an earlier run there
    (without it, finding one is refused). ``label`` starts each stage's progress line."""
    alone = backend.launch().size == 1  # under a launcher: no journal (nothing to agree on it with before a stage)
    if resume and not alone:
        raise SvdadaptError("run --resume works in one process; launch the stages still to run as their commands")
    if not alone:
        return _run_plain(stages, out, progress, label)
    with exclusive(out / JOURNAL_FILE):  # one run of a pipeline at a time
        return _run_journaled(stages, out, resume, progress, label)


def _run_plain(stages: list[Stage], out: Path, progress: bool, label: str) -> RunResult:
    """Every stage in order, without a journal (under a launcher)."""
    done = []
    for index, stage in enumerate(stages):
        _header(label, index, stages, progress)
        started = time.monotonic()
        done.append(Done(stage.name, _run(stage, stage.options, progress), time.monotonic() - started))
    return RunResult(out, done)


def _run_journaled(stages: list[Stage], out: Path, resume: bool, progress: bool, label: str) -> RunResult:
    journal = Journal.open(out, [(stage.path, stage.command.scratch) for stage in stages if stage.path])
    if journal.exists and not resume:
        raise SvdadaptError(
            f"{out} holds an earlier run of a pipeline ({journal.done()}); continue it with --resume, "
            "or give another out="
        )
    remove_leftovers(journal.where(key) for key in journal.made.identities)
    keep, reasons = kept_stages(stages, journal) if resume else (0, [])
    written = [stage.path for stage in stages[:keep] if stage.path]  # by the stages kept, or run in this run
    done = []
    for index, stage in enumerate(stages):
        _header(label, index, stages, progress)
        started = time.monotonic()
        if index < keep:
            result: Result = Kept(stage.name)
            if progress:
                print(result.summary())
        else:
            options = stage.options
            if resume:  # the first stage to run says why, and may continue an interrupted job
                options = prepare(stage, journal, written, reasons if index == keep else None, progress)
            journal.begin(stage.name, result_values(stage.options), stage.path)
            try:
                result = _run(stage, options, progress)
            finally:
                journal.ended()
            written += [stage.path] if stage.path else []
            journal.finish(index, stage.hands_over, written)
        done.append(Done(stage.name, result, time.monotonic() - started))
    return RunResult(out, done)


def _header(label: str, index: int, stages: list[Stage], progress: bool) -> None:
    if progress:
        print(f"== {label}: stage {index + 1}/{len(stages)}: {stages[index].name}")


def _run(stage: Stage, options: Any, progress: bool) -> Result:
    result = stage.command.start(options, progress=progress)
    if progress:
        print(result.summary())
    return result
