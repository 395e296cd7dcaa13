"""A recipe's stages: each stage's mapping, with the shared keys, its default output under the
pipeline's folder and what earlier stages hand over, checked as its command's options; and the
outputs checked against each other. The whole recipe is checked before its first stage runs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .. import errors
from ..commands import COMMANDS
from ..errors import SvdadaptError
from ..options import flat_fields
from .stage import Stage

STAGES = ("calibrate", "build", "train", "merge", "export", "eval", "compress")
SHARED = ("model", "device", "seed")
STAGE_OUT = {
    "calibrate": "covariances", "build": "run", "train": "run", "merge": "merged", "export": "exported",
    "eval": "eval.json", "compress": "compress",
}  # fmt: skip


def plan(recipe: dict[str, Any], where: str) -> list[Stage]:
    """The stages to run, in order, each with its options checked: every unknown key and bad value of
    the recipe said at once (:class:`~svdadapt.errors.Problems`)."""
    unknown = sorted(set(recipe) - set(STAGES) - set(SHARED) - {"out", "description"}, key=str)
    problems = [str(errors.unknown("recipe key", k, [*STAGES, *SHARED, "out"], where=where)) for k in unknown]
    if "out" not in recipe:
        raise errors.Problems([*problems, f"{where} has no `out` key (the pipeline's directory)"])
    present = [s for s in STAGES if s in recipe]
    if not present:
        raise errors.Problems([*problems, f"{where} names no stage ({', '.join(STAGES)})"])
    out = pipeline_dir(recipe, where)
    handed = {"target": str(recipe["model"])} if "model" in recipe else {}
    stages = []
    for name in present:
        own = recipe[name] or {}
        if not isinstance(own, dict):
            raise SvdadaptError(f"stage {name!r} in {where} must be a mapping of its options")
        command = COMMANDS[name]
        names = {flat.dest for flat in flat_fields(command.options)}
        shared = {k: recipe[k] for k in SHARED if k in recipe and k in names}
        values = {**shared, "out": str(out / STAGE_OUT[name]), **own}
        chained = _chained(handed, values, names)
        if "run" in chained or "run" in values:  # a stage handed a run names no model of its own to build
            values = {k: v for k, v in values.items() if not (k == "model" and k not in own)}
        try:
            stage = Stage.of(name, command, {**values, **chained}, where)
        except errors.Problems as exc:  # said with the other stages' problems; later stages still get its output
            problems += exc.problems
            handed.update(_handed_anyway(command, {**values, **chained}))
            continue
        handed.update(stage.hands_over)
        stages.append(stage)
    if problems:
        raise errors.Problems(problems)
    _check_outputs(stages, out, where)
    return stages


def _handed_anyway(command, values: dict[str, Any]) -> dict[str, str]:
    """What a stage whose options have problems would hand over, read from its values as given (so the
    stages after it are checked as they would run, not for want of its output)."""
    given = SimpleNamespace(**{**{flat.dest: flat.default for flat in flat_fields(command.options)}, **values})
    try:
        return {k: v for k, v in command.hands_over(given).items() if isinstance(v, str)}
    except (AttributeError, TypeError):
        return {}


def _chained(handed: dict[str, str], values: dict[str, Any], names: set[str]) -> dict[str, str]:
    """What earlier stages hand over that this stage takes and its mapping leaves out (a stage handed
    a run is not handed what builds one)."""
    chained = {k: v for k, v in handed.items() if k in names and k not in values}
    if "run" in chained or "run" in values:
        chained.pop("covariances", None)
    return chained


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
