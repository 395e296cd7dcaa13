"""``svdadapt run recipe.yaml``: a pipeline (calibrate → build → train → merge → export → eval →
compress) described in YAML, each stage a mapping of that command's options (the names of its
flags), with dotted overrides on the command line (``train.epochs=1``).

Top-level ``model``, ``device`` and ``seed`` go to every stage that takes them; ``out`` is the
pipeline's directory, where each stage writes by default (``out/covariances``, ``out/run``,
``out/merged``, ``out/exported``, ``out/eval.json``, ``out/compress``). Each stage's result hands
what it made to later stages: the covariance store to build, train and compress (``covariances``),
the run to train, merge, export and eval (``run``, ``target``). The whole recipe is checked before
its first stage runs.

``OUT/pipeline.json`` records each stage (see :mod:`svdadapt.journal`). Run again with ``--resume``,
the stages that finished with the same options and inputs, whose outputs are as they left them, are
kept; the first stage that is not continues an interrupted calibration or checkpointed training
where it may, and from there on every stage runs again, replacing what the pipeline created at its
output (see :mod:`svdadapt.resuming`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import backend, errors, resuming
from .atomic import exclusive
from .commands import COMMANDS, Command, Result
from .errors import SvdadaptError
from .journal import JOURNAL_FILE, Journal
from .options import Options, flat_fields, from_mapping, opt, result_values
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
    options: Any = None  # checked, with what earlier stages promise to hand over
    path: str = ""  # what it writes (from the planned options)
    shared: frozenset[str] = frozenset()  # keys of ``values`` that came from the recipe's top level

    def with_inputs(self, inputs: dict[str, str], where: str) -> Any:
        """The stage's options with what earlier results handed over (where the recipe says nothing)."""
        names = {flat.dest for flat in flat_fields(self.command.options)}
        chained = {k: v for k, v in inputs.items() if k in names and k not in self.values}
        values = self.values
        if "run" in chained or "run" in values:  # a stage handed a run is not handed what builds one
            chained.pop("covariances", None)
            values = {k: v for k, v in values.items() if not (k == "model" and k in self.shared)}
        return from_mapping(self.command.options, {**values, **chained}, f"{where}: {self.name}")


@dataclass
class Kept:
    """A stage an earlier run of the pipeline finished, kept by --resume."""

    name: str
    outputs: dict[str, str]

    def summary(self) -> str:
        return f"{self.name}: kept from the earlier run (the same options and inputs)"


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
        raise errors.unknown("recipe key", unknown[0], [*STAGES, *SHARED, "out"], where=where)
    if "out" not in recipe:
        raise SvdadaptError(f"{where} has no `out` key (the pipeline's directory)")
    present = [s for s in STAGES if s in recipe]
    if not present:
        raise SvdadaptError(f"{where} names no stage ({', '.join(STAGES)})")
    out = pipeline_dir(recipe, where)
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
        stage = Stage(name, command, values, shared=frozenset(k for k in shared if k not in own))
        stage.options = stage.with_inputs(promised, where)
        stage.path = command.writes(stage.options) or ""
        promised.update(command.promises(stage.options))
        stages.append(stage)
    _check_outputs(stages, out, where)
    return stages


def pipeline_dir(recipe: dict[str, Any], where: str) -> Path:
    """The recipe's ``out``, checked: a folder's name, not a file."""
    value = recipe["out"]
    if not isinstance(value, str) or not value.strip():
        raise SvdadaptError(f"`out` in {where} must name the pipeline's folder (got {value!r})")
    out = Path(value).expanduser()
    existing = next((p for p in (out, *out.absolute().parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise SvdadaptError(f"`out` {out} in {where}: {existing} is a file; name a folder")
    return out


def _check_outputs(stages: list[Stage], out: Path, where: str) -> None:
    """Refuse outputs that a stage would destroy: the pipeline's folder (or one holding it), and an
    output inside a later stage's (which replaces its folder whole)."""
    resolved = [Path(stage.path).expanduser().absolute().resolve() if stage.path else None for stage in stages]
    for stage, path in zip(stages, resolved):
        if path is not None and out.absolute().resolve().is_relative_to(path):
            raise SvdadaptError(
                f"{stage.name}.out {stage.path} in {where} is the pipeline's folder or holds it; "
                "name a folder inside it"
            )
    for index, (stage, path) in enumerate(zip(stages, resolved)):
        for later, outer in zip(stages[index + 1 :], resolved[index + 1 :]):
            if path is not None and outer is not None and path != outer and path.is_relative_to(outer):
                raise SvdadaptError(
                    f"{stage.name}.out {stage.path} in {where} lies inside {later.name}'s output {later.path}, "
                    "which that stage replaces; name a folder beside it"
                )


def run_recipe(opts: RunOptions, progress: bool = True) -> RunResult:
    """Check the whole recipe, then run its stages in order, each fed by the results before it."""
    recipe = merge_mappings(load_yaml_mapping(opts.recipe), parse_overrides(opts.overrides or []))
    stages = plan(recipe, opts.recipe)
    out = pipeline_dir(recipe, opts.recipe)
    alone = backend.launch().size == 1  # under a launcher: no journal (nothing to agree on it with before a stage)
    if opts.resume and not alone:
        raise SvdadaptError("run --resume works in one process; launch the stages still to run as their commands")
    if not alone:
        return _run_plain(recipe, stages, out, opts.recipe, progress)
    with exclusive(out / JOURNAL_FILE):  # one run of a pipeline at a time
        return _run_journaled(recipe, stages, out, opts, progress)


def _run_plain(recipe: dict[str, Any], stages: list[Stage], out: Path, where: str, progress: bool) -> RunResult:
    """Every stage in order, without a journal (under a launcher)."""
    inputs = {"target": str(recipe["model"])} if "model" in recipe else {}
    done: list[tuple[str, Result]] = []
    for index, stage in enumerate(stages):
        if progress:
            print(f"== svdadapt run: stage {index + 1}/{len(stages)}: {stage.name}")
        result = _run_stage(stage, stage.with_inputs(inputs, where), progress)
        inputs.update(result.outputs)
        done.append((stage.name, result))
    return RunResult(out, done)


def _run_journaled(
    recipe: dict[str, Any], stages: list[Stage], out: Path, opts: RunOptions, progress: bool
) -> RunResult:
    journal = Journal.open(out, [stage.path for stage in stages if stage.path])
    if journal.exists and not opts.resume:
        raise SvdadaptError(
            f"{out} holds an earlier run of a pipeline ({journal.done()}); continue it with --resume, "
            "or give another out="
        )
    resuming.remove_leftovers(journal)
    skips = resuming.skips(stages, journal)
    keep, reasons = resuming.kept_stages(stages, journal, skips) if opts.resume else (0, [])
    standing = {journal.key(stage.path) for stage in stages[:keep] if stage.path}  # kept, or made in this run
    inputs = {"target": str(recipe["model"])} if "model" in recipe else {}
    written: list[str] = [stage.path for stage in stages[:keep] if stage.path]
    done: list[tuple[str, Result]] = []
    for index, stage in enumerate(stages):
        if progress:
            print(f"== svdadapt run: stage {index + 1}/{len(stages)}: {stage.name}")
        if index < keep:
            result: Result = Kept(stage.name, journal.outputs(index))
            if progress:
                print(result.summary())
        else:
            options = stage.with_inputs(inputs, opts.recipe)
            if opts.resume:
                first = index == keep  # says why, and may continue an interrupted job
                said = reasons if first else None
                options = resuming.prepare(stage, options, journal, standing, skips, said, progress)
            journal.begin(stage.name, result_values(stage.options), stage.path)
            try:
                result = _run_stage(stage, options, progress)
            finally:
                journal.ended()
            written += [stage.path] if stage.path else []
            standing |= {journal.key(stage.path)} if stage.path else set()
            journal.finish(index, result.outputs, written, skips)
        inputs.update(result.outputs)
        done.append((stage.name, result))
    return RunResult(out, done)


def _run_stage(stage: Stage, options: Any, progress: bool) -> Result:
    result = stage.command.start(options, progress=progress)
    if progress:
        print(result.summary())
    return result


__all__ = ["STAGES", "RunOptions", "RunResult", "Stage", "plan", "run_recipe"]
