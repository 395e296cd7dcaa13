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

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import backend
from .commands import COMMANDS, Command, Result
from .errors import SvdadaptError
from .journal import JOURNAL_FILE, Entry, Journal
from .options import Options, flat_fields, flat_values, from_mapping, opt
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

    entry: Entry

    @property
    def outputs(self) -> dict[str, str]:
        return self.entry.outputs

    def summary(self) -> str:
        return f"{self.entry.name}: kept from the earlier run (same options, its outputs unchanged)"


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
        promised.update(command.promises(stage.options))
        stages.append(stage)
    return stages


def run_recipe(opts: RunOptions, progress: bool = True) -> RunResult:
    """Check the whole recipe, then run its stages in order, each fed by the results before it."""
    recipe = merge_mappings(load_yaml_mapping(opts.recipe), parse_overrides(opts.overrides or []))
    stages = plan(recipe, opts.recipe)
    out = Path(str(recipe["out"])).expanduser()
    alone = backend.world_size() == 1  # under a launcher: no journal (nothing to agree on it with before a stage)
    if opts.resume and not alone:
        raise SvdadaptError("run --resume works in one process; launch the stages still to run as their commands")
    journal = Journal.open(out) if alone else Journal(out / JOURNAL_FILE)
    if journal.exists and not opts.resume:
        raise SvdadaptError(
            f"{out} holds an earlier run of a pipeline ({journal.done()}); continue it with --resume, "
            "or give another out="
        )
    keep, why = kept_stages(stages, journal) if opts.resume else (0, "")
    made = set(journal.made)  # what earlier runs of the pipeline wrote
    kept = set(journal.entries[keep - 1].state) if keep else set()
    if alone:
        journal.start(keep)
    inputs = {"target": str(recipe["model"])} if "model" in recipe else {}
    written: list[str] = []
    done: list[tuple[str, Result]] = []
    for index, stage in enumerate(stages):
        if progress:
            print(f"== svdadapt run: stage {index + 1}/{len(stages)}: {stage.name}")
        if index < keep:
            result: Result = Kept(journal.entries[index])
        else:
            options = stage.with_inputs(inputs, opts.recipe)
            if opts.resume:
                stale = made - kept - set(written)  # what the earlier run left, not what this one wrote
                options = _continue_or_clear(stage, options, index == keep, why, stale, progress)
            result = stage.command.run(options, progress=progress)
        if progress:
            print(result.summary())
        written += [path for path in [stage.command.writes(stage.options)] if path]
        if index >= keep and alone:
            journal.finish(stage.name, flat_values(stage.options), result.outputs, written)
        inputs.update(result.outputs)
        done.append((stage.name, result))
    return RunResult(out, done)


def kept_stages(stages: list[Stage], journal: Journal) -> tuple[int, str]:
    """How many leading stages an earlier run finished that stand as they are, and why the next one
    runs. Options are compared as planned (with what earlier stages promise to hand over)."""
    matched, why = 0, ""
    for index, stage in enumerate(stages):
        why = journal.matches(index, stage.name, flat_values(stage.options)) or ""
        if why:
            break
        matched += 1
    for keep in range(matched, 0, -1):
        following = stages[keep] if keep < len(stages) else None  # continues from what it left, if it can
        ignore = {following.command.writes(following.options)} if following and _continues(following) else set()
        if journal.unchanged(keep - 1, ignore):
            return keep, why
        why = "what it wrote changed after it finished (a later stage writes there in place, or it was edited)"
    return 0, why


def _continues(stage: Stage) -> bool:
    return stage.command.interrupted(stage.options)


def _continue_or_clear(stage: Stage, options: Any, first: bool, why: str, stale: set[str], progress: bool) -> Any:
    """Stage options for --resume: the first stage run again continues an interrupted job it left;
    otherwise what an earlier run of the pipeline left at its output is removed first."""
    if first and stage.command.interrupted(options):
        if progress:
            print(f"   continuing the interrupted {stage.name} where it stopped")
        return from_mapping(stage.command.options, {**flat_values(options), "resume": True}, stage.name)
    if progress and first:
        print(f"   running from here: {why}")
    path = stage.command.writes(options)
    if path in stale and Path(path).expanduser().exists():
        _remove(Path(path).expanduser())
    return options


def _remove(path: Path) -> None:
    """Remove what an earlier run wrote at ``path``, moved aside first so a crash leaves no half."""
    aside = path.with_name(f".{path.name}.stale")
    if aside.exists():
        shutil.rmtree(aside) if aside.is_dir() else aside.unlink()
    path.rename(aside)
    shutil.rmtree(aside) if aside.is_dir() else aside.unlink()


__all__ = ["STAGES", "RunOptions", "RunResult", "Stage", "plan", "run_recipe"]
