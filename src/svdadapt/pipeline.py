"""``svdadapt run recipe.yaml``: a pipeline (calibrate → build → train → merge → export → eval →
compress) described in YAML, each stage a mapping of that command's options (the names of its
flags), with dotted overrides on the command line (``train.epochs=1``).

Top-level ``model``, ``device`` and ``seed`` go to every stage that takes them; ``out`` is the
pipeline's directory, where each stage writes by default (``out/covariances``, ``out/run``,
``out/merged``, ``out/exported``, ``out/eval.json``, ``out/compress``). Each stage's result hands
what it made to later stages: the covariance store to build, train and compress (``covariances``),
the run to train, merge, export and eval (``run``, ``target``). The whole recipe is checked before
its first stage runs.

``OUT/pipeline.json`` records each finished stage (see :mod:`svdadapt.journal`). Run again with
``--resume``, the stages that finished with the same options, whose outputs are as they left them,
are kept; the first stage that is not continues an interrupted calibration or checkpointed training
where it can, and from there on every stage runs again, replacing what the earlier run of this
pipeline wrote.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import backend
from .commands import COMMANDS, Command, Result
from .errors import SvdadaptError
from .journal import Journal
from .options import Options, flat_fields, flat_values, from_mapping, opt, result_values
from .recipes import load_yaml_mapping, merge_mappings, parse_overrides

STAGES = ("calibrate", "build", "train", "merge", "export", "eval", "compress")
SHARED = ("model", "device", "seed")
STAGE_OUT = {
    "calibrate": "covariances", "build": "run", "train": "run", "merge": "merged", "export": "exported",
    "eval": "eval.json", "compress": "compress",
}  # fmt: skip


@dataclass(kw_only=True)
class RunOptions(Options):
    """Run a pipeline described in a YAML recipe (see examples/): calibrate → build → train → merge →
    export → eval → compress, each stage with the options of its command; KEY=VALUE arguments
    override recipe keys (dotted for stages: train.epochs=1)."""

    recipe: str = opt(help="YAML recipe", positional=True)
    overrides: list[str] = opt(
        help="KEY=VALUE overrides, e.g. out=runs/x train.epochs=1", positional=True, nargs="*"
    )  # fmt: skip
    resume: bool = opt(
        False,
        "continue an earlier run of this pipeline into its out: keep the stages that finished with the "
        "same options, continue an interrupted calibration (or training with checkpoints), run the rest",
    )


@dataclass
class Stage:
    name: str
    command: Command
    values: dict[str, Any]  # from the recipe: shared keys, the default out, the stage's own mapping
    options: Any  # checked, with what earlier stages promise to hand over

    def with_inputs(self, inputs: dict[str, str], where: str) -> Any:
        """The stage's options with what earlier results handed over (where the recipe says nothing)."""
        names = {flat.dest for flat in flat_fields(self.command.options)}
        chained = {k: v for k, v in inputs.items() if k in names and k not in self.values}
        if "run" in chained or "run" in self.values:  # a stage handed a run is not handed what builds one
            chained.pop("covariances", None)
        return from_mapping(self.command.options, {**self.values, **chained}, f"{where}: {self.name}")


@dataclass
class Kept:
    """A stage an earlier run of the pipeline finished, kept by --resume."""

    name: str
    outputs: dict[str, str]

    def summary(self) -> str:
        return f"{self.name}: kept from the earlier run (same options and inputs, its outputs unchanged)"


@dataclass
class RunResult:
    out: Path
    stages: list[tuple[str, Result]]

    @property
    def outputs(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for _, result in self.stages:
            merged.update(result.outputs)
        return merged

    def summary(self) -> str:
        kept = [name for name, result in self.stages if isinstance(result, Kept)]
        said = f"; {len(kept)} kept from the earlier run" if kept else ""
        return f"pipeline {self.out}: {len(self.stages)} stages done ({', '.join(n for n, _ in self.stages)}){said}"


def plan(recipe: dict[str, Any], where: str) -> list[Stage]:
    """The stages to run, in order, each with its options checked."""
    unknown = sorted(set(recipe) - set(STAGES) - set(SHARED) - {"out", "description"})
    if unknown:
        raise SvdadaptError(f"unknown recipe key {unknown[0]!r} in {where}; stages are {', '.join(STAGES)}")
    if "out" not in recipe:
        raise SvdadaptError(f"{where} has no `out` key (the pipeline's directory)")
    present = [s for s in STAGES if s in recipe]
    if not present:
        raise SvdadaptError(f"{where} names no stage ({', '.join(STAGES)})")
    out = Path(str(recipe["out"])).expanduser()
    promised = {"target": str(recipe["model"])} if "model" in recipe else {}
    stages = []
    for name in present:
        own = recipe[name] or {}
        if not isinstance(own, dict):
            raise SvdadaptError(f"stage {name!r} in {where} must be a mapping of its options")
        command = COMMANDS[name]
        names = {flat.dest for flat in flat_fields(command.options)}
        shared = {k: recipe[k] for k in SHARED if k in recipe and k in names}
        values = {**shared, "out": str(out / STAGE_OUT[name]), **own}
        stage = Stage(name, command, values, None)
        stage.options = stage.with_inputs(promised, where)
        written = command.writes(stage.options)
        if written and out.absolute().resolve().is_relative_to(Path(written).expanduser().absolute().resolve()):
            raise SvdadaptError(
                f"{name}.out {written} in {where} is the pipeline's folder or holds it; name a folder inside it"
            )
        promised.update(command.promises(stage.options))
        stages.append(stage)
    return stages


def run_recipe(opts: RunOptions, progress: bool = True) -> RunResult:
    """Check the whole recipe, then run its stages in order, each fed by the results before it."""
    recipe = merge_mappings(load_yaml_mapping(opts.recipe), parse_overrides(opts.overrides or []))
    stages = plan(recipe, opts.recipe)
    out = _pipeline_dir(recipe, opts.recipe)
    alone = backend.world_size() == 1  # under a launcher: no journal (nothing to agree on it with before a stage)
    if opts.resume and not alone:
        raise SvdadaptError("run --resume works in one process; launch the stages still to run as their commands")
    paths = {_writes(stage) for stage in stages if _writes(stage)}
    journal = Journal.open(out, paths) if alone else Journal(out, stage_paths=paths)
    if journal.exists and not opts.resume:
        raise SvdadaptError(
            f"{out} holds an earlier run of a pipeline ({journal.done()}); continue it with --resume, "
            "or give another out="
        )
    _remove_stale_leftovers(paths)
    keep, reasons = kept_stages(stages, journal) if opts.resume else (0, [])
    kept = set(journal.entries[keep - 1].state) if keep else set()
    skips = _skips(stages, journal)
    inputs = {"target": str(recipe["model"])} if "model" in recipe else {}
    written: list[str] = []
    done: list[tuple[str, Result]] = []
    for index, stage in enumerate(stages):
        if progress:
            print(f"== svdadapt run: stage {index + 1}/{len(stages)}: {stage.name}")
        if index < keep:
            result: Result = Kept(stage.name, journal.outputs(index))
        else:
            options = stage.with_inputs(inputs, opts.recipe)
            if opts.resume and index == keep and progress:
                print("\n".join(f"   {line}" for line in reasons))
            if opts.resume:
                ours = set(journal.made) - kept - {journal.key(p) for p in written}  # an earlier run's, stale
                options = _continue_or_clear(stage, options, journal, index == keep, ours, progress)
            if alone:
                journal.begin(stage.name, result_values(stage.options), _writes(stage))
            result = stage.command.run(options, progress=progress)
        if progress:
            print(result.summary())
        written += [_writes(stage)] if _writes(stage) else []
        if index >= keep and alone:
            journal.finish(index, stage.name, result.outputs, written, skips)
        inputs.update(result.outputs)
        done.append((stage.name, result))
    return RunResult(out, done)


def _pipeline_dir(recipe: dict[str, Any], where: str) -> Path:
    """The recipe's ``out``, checked: a folder's name, not a file."""
    value = recipe["out"]
    if not isinstance(value, str) or not value.strip():
        raise SvdadaptError(f"`out` in {where} must name the pipeline's folder (got {value!r})")
    out = Path(value).expanduser()
    existing = next((p for p in (out, *out.absolute().parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise SvdadaptError(f"`out` {out} in {where}: {existing} is a file; name a folder")
    return out


def kept_stages(stages: list[Stage], journal: Journal) -> tuple[int, list[str]]:
    """How many leading stages an earlier run finished that stand as they are, and why the next one
    runs. Options are compared as planned (with what earlier stages promise to hand over)."""
    if not journal.exists:
        return 0, [f"no earlier run of this pipeline is recorded ({journal.path} is missing)"]
    matched, reasons = 0, []
    for index, stage in enumerate(stages):
        why = journal.differs(index, stage.name, result_values(stage.options))
        if why:
            reasons.append(f"{stage.name} runs again: {why}")
            break
        matched += 1
    skips = _skips(stages, journal)
    for keep in range(matched, 0, -1):
        following = stages[keep] if keep < len(stages) else None  # continues from what it left, if it can
        continues = following is not None and _continues(following, journal)
        changed = journal.changed_output(keep - 1, skips, journal.key(_writes(following)) if continues else None)
        if changed is None:
            return keep, reasons
        writer = stages[keep - 1].name
        reasons.insert(0, f"{writer} runs again: {changed} was changed after it finished "
                          "(a later stage writes there in place, or it was edited)")  # fmt: skip
    return 0, reasons


def _writes(stage: Stage) -> str:
    return stage.command.writes(stage.options) or ""


def _skips(stages: list[Stage], journal: Journal) -> dict[str, tuple[str, ...]]:
    """Per output path, what lies in it that is not part of what made it: the folders its commands
    call scratch (a run's checkpoints), and other stages' outputs inside it (eval's results in a run)."""
    keys = {journal.key(_writes(stage)): stage for stage in stages if _writes(stage)}
    found: dict[str, tuple[str, ...]] = {key: () for key in keys}
    for stage in stages:
        if _writes(stage):
            key = journal.key(_writes(stage))
            found[key] = (*found[key], *stage.command.scratch)
    for key in keys:
        inner = journal.where(key).resolve()
        for outer in keys:
            outer_path = journal.where(outer).resolve()
            if outer != key and inner.is_relative_to(outer_path):
                found[outer] = (*found[outer], str(inner.relative_to(outer_path)))
    return found


def _continues(stage: Stage, journal: Journal) -> bool:
    """Whether the stage continues an interrupted job at its output (begun with these options)."""
    return stage.command.resumable(stage.options) and journal.continues(
        stage.name, result_values(stage.options), _writes(stage)
    )


def _continue_or_clear(
    stage: Stage, options: Any, journal: Journal, first: bool, ours: set[str], progress: bool
) -> Any:  # fmt: skip
    """Stage options for --resume: the first stage run again continues an interrupted job it left;
    otherwise what an earlier run of the pipeline left at its output is removed first."""
    if first and _continues(stage, journal):
        if progress:
            print(f"   continuing the {stage.name} found at {_writes(stage)}")
        return from_mapping(stage.command.options, {**flat_values(options), "resume": True}, stage.name)
    key = journal.key(_writes(stage)) if _writes(stage) else None
    if key in ours and journal.where(key).exists():
        _remove(journal.where(key))
    return options


def _remove(path: Path) -> None:
    """Remove what an earlier run wrote at ``path`` (where a link leads, the link kept), moved aside
    first so a crash leaves no half."""
    path = Path(os.path.realpath(path))
    aside = _aside(path)
    _delete(aside)
    path.rename(aside)
    _delete(aside)


def _aside(path: Path) -> Path:
    return path.with_name(f".{path.name}.stale")


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _remove_stale_leftovers(paths: set[str]) -> None:
    """What a run killed while it removed an output left aside (``.NAME.stale``)."""
    for path in paths:
        _delete(_aside(Path(path).expanduser()))


__all__ = ["STAGES", "RunOptions", "RunResult", "Stage", "plan", "run_recipe"]
