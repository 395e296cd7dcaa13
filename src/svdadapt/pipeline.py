"""``svdadapt run recipe.yaml``: a pipeline (calibrate → build → train → merge → export → eval →
compress) described in YAML, each stage a mapping of that command's options (the names of its
flags), with dotted overrides on the command line (``train.epochs=1``).

Top-level ``model``, ``device`` and ``seed`` go to every stage that takes them; ``out`` is the
pipeline's directory, where each stage writes by default (``out/covariances``, ``out/run``,
``out/merged``, ``out/exported``, ``out/eval.json``, ``out/compress``). Each stage's result hands
what it made to later stages: the covariance store to build, train and compress (``covariances``),
the run to train, merge, export and eval (``run``, ``target``). The whole recipe is checked before
its first stage runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .commands import COMMANDS, Command, Result
from .errors import SvdadaptError
from .options import Options, flat_fields, from_mapping, opt
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
        return f"pipeline {self.out}: {len(self.stages)} stages done ({', '.join(name for name, _ in self.stages)})"


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
    inputs = {"target": str(recipe["model"])} if "model" in recipe else {}
    done: list[tuple[str, Result]] = []
    for index, stage in enumerate(stages, 1):
        if progress:
            print(f"== svdadapt run: stage {index}/{len(stages)}: {stage.name}")
        result = stage.command.run(stage.with_inputs(inputs, opts.recipe), progress=progress)
        if progress:
            print(result.summary())
        inputs.update(result.outputs)
        done.append((stage.name, result))
    return RunResult(Path(str(recipe["out"])).expanduser(), done)


__all__ = ["STAGES", "RunOptions", "RunResult", "Stage", "plan", "run_recipe"]
