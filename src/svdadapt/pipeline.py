"""``svdadapt run recipe.yaml``: a pipeline — calibrate → build → train → merge → export → eval →
compress — described in YAML, each stage a mapping of that command's options (same names as its
flags), with dotted overrides on the command line (``train.epochs=1``).

Top-level ``model``, ``device`` and ``seed`` apply to every stage that takes them; ``out`` is the
pipeline's directory, and each stage reads what earlier ones wrote there:

    out/covariances   calibrate          out/run       build, then train
    out/merged        merge              out/exported  export
    out/eval.json     eval               out/compress  compress
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SvdadaptError
from .options import from_mapping, opt
from .recipes import load_yaml_mapping, merge_mappings, parse_overrides

STAGES = ("calibrate", "build", "train", "merge", "export", "eval", "compress")
SHARED = ("model", "device", "seed")


@dataclass(kw_only=True)
class RunOptions:
    """Run a pipeline described in a YAML recipe (see examples/): calibrate → build → train → merge →
    export → eval → compress, each stage with the options of its command; KEY=VALUE arguments
    override recipe keys (dotted for stages: train.epochs=1)."""

    recipe: str = opt(help="YAML recipe", positional=True)
    overrides: list[str] = opt(
        help="KEY=VALUE overrides, e.g. out=runs/x train.epochs=1", positional=True, nargs="*"
    )  # fmt: skip


def _wiring(out: Path, present: set[str]) -> dict[str, Callable[[], dict[str, Any]]]:
    """What each stage takes from the pipeline directory and the stages before it."""
    run_dir = str(out / "run")
    covs = str(out / "covariances") if "calibrate" in present else None
    return {
        "calibrate": lambda: {"out": covs},
        "build": lambda: {"out": run_dir, **({"covariances": covs} if covs else {})},
        "train": lambda: (
            {"run": run_dir, "out": run_dir} if "build" in present
            else {"out": run_dir, **({"covariances": covs} if covs else {})}
        ),
        "merge": lambda: {"run": run_dir, "out": str(out / "merged")},
        "export": lambda: {"run": run_dir, "out": str(out / "exported")},
        "eval": lambda: {"target": run_dir if present & {"build", "train"} else None, "out": str(out / "eval.json")},
        "compress": lambda: {"out": str(out / "compress"), **({"covariances": covs} if covs else {})},
    }  # fmt: skip


def plan(recipe: dict[str, Any], commands: dict, where: str) -> list[tuple[str, Any]]:
    """The stages to run, in order, each as its command's options object."""
    unknown = sorted(set(recipe) - set(STAGES) - set(SHARED) - {"out", "description"})
    if unknown:
        raise SvdadaptError(f"unknown recipe key {unknown[0]!r} in {where}; stages are {', '.join(STAGES)}")
    if "out" not in recipe:
        raise SvdadaptError(f"{where} has no `out` key (the pipeline's directory)")
    present = {s for s in STAGES if s in recipe}
    if not present:
        raise SvdadaptError(f"{where} names no stage ({', '.join(STAGES)})")
    wiring = _wiring(Path(str(recipe["out"])).expanduser(), present)
    stages = []
    for stage in STAGES:
        if stage not in present:
            continue
        values = recipe[stage] or {}
        if not isinstance(values, dict):
            raise SvdadaptError(f"stage {stage!r} in {where} must be a mapping of its options")
        options_cls = commands[stage].options
        names = {f.name for f in dataclasses.fields(options_cls)}
        derived = {k: v for k, v in wiring[stage]().items() if v is not None and k in names}
        shared = {k: recipe[k] for k in SHARED if k in recipe and k in names}
        if stage in ("merge", "export", "eval", "train") and "build" in present:
            shared.pop("model", None)  # these read the model from the run
        if stage == "eval" and "target" not in derived and "model" in recipe:
            derived["target"] = recipe["model"]
        stages.append((stage, from_mapping(options_cls, {**shared, **derived, **values}, f"{where}: {stage}")))
    return stages


def run_recipe(opts: RunOptions) -> None:
    from .cli import _commands

    recipe = merge_mappings(load_yaml_mapping(opts.recipe), parse_overrides(opts.overrides or []))
    commands = _commands()
    stages = plan(recipe, commands, opts.recipe)
    for index, (stage, options) in enumerate(stages, 1):
        print(f"== svdadapt run: stage {index}/{len(stages)}: {stage}")
        commands[stage].run(options)
