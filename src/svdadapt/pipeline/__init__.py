"""Orchestration: pipelines of commands. ``svdadapt run`` reads a YAML recipe into stages and runs
them; the quickstart runs stages of its own through the same runner, so both keep what is done
and run the rest the same way.

- recipe.py     reading a recipe: a YAML mapping, with dotted KEY=VALUE overrides
- plan.py       a recipe's stages, each checked as its command's options, before the first runs
- stage.py      a stage: a command, its options, what it writes and hands over
- runner.py     running stages in order, with the journal; what ``resume`` keeps
- command.py    ``svdadapt run``: its options and function
- journal.py    ``OUT/pipeline.json``: each stage's options, inputs and what it left
- keys.py       how the journal names paths (relative to the pipeline's folder inside it)
- listing.py    files with their sizes and modification times, as the journal compares them
- ownership.py  which outputs the pipeline created: the only ones it removes
- resume.py     what ``--resume`` keeps, continues, clears or refuses
- removal.py    removing an output, moved aside first
"""

from .command import RunOptions, run_recipe
from .plan import STAGES, plan
from .recipe import load_yaml_mapping, merge_mappings, parse_overrides
from .runner import Done, RunResult, recorded, run_stages
from .stage import Kept, Stage

__all__ = [
    "STAGES",
    "Done",
    "Kept",
    "RunOptions",
    "RunResult",
    "Stage",
    "load_yaml_mapping",
    "merge_mappings",
    "parse_overrides",
    "plan",
    "recorded",
    "run_recipe",
    "run_stages",
]
