"""``svdadapt run recipe.yaml``: a pipeline (calibrate → build → train → merge → export → eval →
compress) described in YAML, each stage a mapping of that command's options (the names of its
flags), with dotted overrides on the command line (``train.epochs=1``).

Top-level ``model``, ``device`` and ``seed`` go to every stage that takes them; ``out`` is the
pipeline's directory, where each stage writes by default (``out/covariances``, ``out/run``,
``out/merged``, ``out/exported``, ``out/eval.json``, ``out/compress``). Each stage hands what it
makes to later stages: the covariance store to build, train and compress (``covariances``), the run
to train, merge, export and eval (``run``, ``target``). The whole recipe is checked before its first
stage runs (:mod:`.plan`); the stages run as :mod:`.runner` runs them, ``--resume`` included.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..options import Options, opt
from .plan import pipeline_dir, plan
from .recipe import load_yaml_mapping, merge_mappings, parse_overrides
from .runner import RunResult, run_stages


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


def run_recipe(opts: RunOptions, progress: bool = True) -> RunResult:
    """Check the whole recipe, then run its stages in order, each handed what the stages before it make."""
    recipe = merge_mappings(load_yaml_mapping(opts.recipe), parse_overrides(opts.overrides or []))
    stages = plan(recipe, opts.recipe)
    return run_stages(stages, pipeline_dir(recipe, opts.recipe), opts.resume, progress)
