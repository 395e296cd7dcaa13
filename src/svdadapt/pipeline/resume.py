"""What ``svdadapt run --resume`` decides from a pipeline's journal: which leading stages to keep,
whether the first stage to run continues an interrupted job, and what an earlier run left at the
outputs of the stages that run again (removed when the pipeline created it, else refused)."""

from __future__ import annotations

from typing import Any

from ..errors import SvdadaptError
from ..options import flat_values, from_mapping, result_values
from .journal import Journal
from .listing import holds_something
from .removal import remove
from .stage import Stage


def kept_stages(stages: list[Stage], journal: Journal) -> tuple[int, list[str]]:
    """How many leading stages an earlier run finished that stand as they are, and why the next ones
    run. Options are compared as planned (with what earlier stages hand over)."""
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
        changed = journal.changed_output(keep - 1, ignore)
        if changed is None:
            return keep, reasons
        reasons = [f"{stages[keep - 1].name} runs again: {changed} was changed after it finished "
                   "(a later stage writes there in place, or it was edited)", *trigger]  # fmt: skip
    return 0, reasons


def continues(stage: Stage, journal: Journal) -> bool:
    """Whether the stage continues the interrupted job found at its output: one this pipeline began
    under the same options and inputs, or another's where its command checks it is the same job."""
    if not stage.path or not stage.command.resumable(stage.options):
        return False
    if journal.running == journal.began(stage.name, result_values(stage.options), stage.path):
        return True
    return stage.command.resume_checks and not journal.made.owns(journal.key(stage.path))


def prepare(stage: Stage, journal: Journal, written: list[str], reasons: list[str] | None, progress: bool) -> Any:
    """A stage's options to run again under --resume. The first one (``reasons``: why it runs) continues
    the interrupted job at its output where :func:`continues` allows; otherwise what the pipeline
    created there is cleared first (:func:`clear_output`)."""
    if reasons is not None and progress:
        print("\n".join(f"   {line}" for line in reasons))
    if reasons is not None and continues(stage, journal):
        if progress:
            print(f"   continuing the {stage.name} found at {stage.path}")
        return from_mapping(stage.command.options, {**flat_values(stage.options), "resume": True}, stage.name)
    clear_output(stage, journal, written)
    return stage.options


def clear_output(stage: Stage, journal: Journal, written: list[str]) -> None:
    """Before a stage runs again: remove what the pipeline created at its output, unless a stage kept
    or run before it in this run wrote it (``written``: their paths); refuse when it is not the
    pipeline's but an earlier run wrote into it (it cannot be rebuilt: training a run in place)."""
    if not stage.path:
        return
    key = journal.key(stage.path)
    where = journal.where(key)
    if key in {journal.key(path) for path in written} or not holds_something(where):
        return
    if journal.made.owns(key):
        strangers = journal.unrecorded(key)
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
