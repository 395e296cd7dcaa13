"""What ``svdadapt run --resume`` decides from a pipeline's journal: which leading stages to keep,
whether the first stage to run continues an interrupted job, and what an earlier run left at the
outputs of the stages that run again (removed when the pipeline created it, else refused)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from .errors import SvdadaptError
from .journal import Journal, holds_something
from .options import flat_values, from_mapping, result_values


def kept_stages(stages: list, journal: Journal, skips: dict[str, tuple[str, ...]]) -> tuple[int, list[str]]:
    """How many leading stages an earlier run finished that stand as they are, and why the next ones
    run. Options are compared as planned (with what earlier stages promise to hand over)."""
    if not journal.exists:
        return 0, [f"no earlier run of this pipeline is recorded ({journal.path} is missing)"]
    matched, reasons = 0, []
    for index, stage in enumerate(stages):
        why = journal.differs(index, stage.name, result_values(stage.options))
        if why:
            reasons.append(f"{stage.name} runs again: {why}")
            break
        matched += 1
    trigger = reasons[:1]  # the first stage whose options or inputs differ
    for keep in range(matched, 0, -1):
        following = stages[keep] if keep < len(stages) else None  # continues from what it left, if it can
        ignore = journal.key(following.path) if following and continues(following, journal) else None
        changed = journal.changed_output(keep - 1, skips, ignore)
        if changed is None:
            return keep, reasons
        reasons = [f"{stages[keep - 1].name} runs again: {changed} was changed after it finished "
                   "(a later stage writes there in place, or it was edited)", *trigger]  # fmt: skip
    return 0, reasons


def skips(stages: list, journal: Journal) -> dict[str, tuple[str, ...]]:
    """Per output path, what lies in it that is not part of what made it: the folders its commands
    call scratch (a run's checkpoints), and other stages' outputs inside it (eval's results in a run)."""
    found: dict[str, tuple[str, ...]] = {}
    for stage in stages:
        if stage.path:
            key = journal.key(stage.path)
            found[key] = (*found.get(key, ()), *stage.command.scratch)
    for inner in found:
        for outer in found:
            inner_path, outer_path = journal.where(inner).resolve(), journal.where(outer).resolve()
            if inner != outer and inner_path.is_relative_to(outer_path):
                found[outer] = (*found[outer], str(inner_path.relative_to(outer_path)))
    return found


def continues(stage, journal: Journal) -> bool:
    """Whether the stage continues the interrupted job found at its output: one this pipeline began
    under the same options and inputs, or another's where its command checks it is the same job."""
    if not stage.path or not stage.command.resumable(stage.options):
        return False
    if journal.running == journal.began(stage.name, result_values(stage.options), stage.path):
        return True
    return stage.command.resume_checks and not journal.owns(journal.key(stage.path))


def prepare(
    stage, options: Any, journal: Journal, standing: set[str], skipped: dict[str, tuple[str, ...]],
    reasons: list[str] | None, progress: bool,
) -> Any:  # fmt: skip
    """A stage's options to run again under --resume. The first one (``reasons``: why it runs) continues
    the interrupted job at its output where :func:`continues` allows; otherwise what the pipeline
    created there is cleared first (:func:`clear_output`)."""
    if reasons is not None and progress:
        print("\n".join(f"   {line}" for line in reasons))
    if reasons is not None and continues(stage, journal):
        if progress:
            print(f"   continuing the {stage.name} found at {stage.path}")
        return from_mapping(stage.command.options, {**flat_values(options), "resume": True}, stage.name)
    clear_output(stage, journal, standing, skipped)
    return options


def clear_output(stage, journal: Journal, standing: set[str], skipped: dict[str, tuple[str, ...]]) -> None:
    """Before a stage runs again: remove what the pipeline created at its output, unless a stage kept
    or run before it in this run made it (``standing``: their keys); refuse when it is not the
    pipeline's but an earlier run wrote into it (it cannot be rebuilt: training a run in place)."""
    if not stage.path:
        return
    key = journal.key(stage.path)
    where = journal.where(key)
    if key in standing or not holds_something(where):
        return
    if journal.owns(key):
        strangers = journal.unrecorded(key, skipped)
        if strangers:
            raise SvdadaptError(
                f"{stage.name} must run again and replace {where}, which holds {len(strangers)} file(s) no "
                f"stage of this pipeline wrote ({strangers[0]}); move them away, then --resume again"
            )
        remove(where)
        journal.forget(key)
    elif journal.wrote_into(key):
        raise SvdadaptError(
            f"{stage.name} must run again, but {where} is not what this pipeline created there (it was there "
            f"before, or was changed or replaced since) and cannot be rebuilt; move it away, or give "
            f"{stage.name}.out a new folder"
        )


def remove(path: Path) -> None:
    """Remove ``path`` (where a link leads, the link kept), moved aside first so a crash leaves no half."""
    path = Path(os.path.realpath(path))
    aside = _aside(path)
    _delete(aside)
    path.rename(aside)
    _delete(aside)


def remove_leftovers(journal: Journal) -> None:
    """What a run killed while it removed one of the pipeline's outputs left aside."""
    for key in journal.made:
        _delete(_aside(Path(os.path.realpath(journal.where(key)))))


def _aside(path: Path) -> Path:
    return path.with_name(f".{path.name}.stale")


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
