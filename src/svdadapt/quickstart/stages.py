"""The quickstart as a pipeline: its stages, each a command with options named as its flags, and the
evaluations that become the rows of its table.

Calibrate, plot the spectra, then build and train each method, then evaluate the original and each
method at init and trained: the evaluations come last, so that a rerun with other evaluation
settings keeps every trained run (the runner keeps the stages before the first one that changed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..commands import COMMANDS
from ..methods import get_method
from ..pipeline import Stage
from .options import QuickstartOptions

ORIGINAL = "original (no adapter)"


@dataclass(frozen=True)
class Evaluation:
    row: str  # the table's row
    target: str  # the model, or a method's run
    initial: bool  # the run's adapter as built
    results: Path  # the results file eval writes


def run_dir(opts: QuickstartOptions, method: str) -> Path:
    return Path(opts.out).expanduser() / "runs" / method


def making(method: str) -> tuple[str, str]:
    """The names of the stages that build and train ``method``'s run."""
    return f"build {method}", f"train {method}"


def evaluations(opts: QuickstartOptions) -> list[Evaluation]:
    """The original model, and each method at init and trained; at init only where the method's model
    is not the original itself (``original_at_init``: the table copies the original's row)."""
    found = [Evaluation(ORIGINAL, opts.model, False, Path(opts.out).expanduser() / "eval" / "original.json")]
    for name in opts.method_names:
        run = run_dir(opts, name)
        if not get_method(name).original_at_init:
            found.append(Evaluation(f"{name} at init", str(run), True, run / "eval" / "initial.json"))
        found.append(Evaluation(f"{name} trained", str(run), False, run / "eval" / "trained.json"))
    return found


def plan(opts: QuickstartOptions) -> list[Stage]:
    """Every stage, its options checked."""
    out = Path(opts.out).expanduser()
    store, device = out / "covariances", {"device": opts.device}
    stages = [
        _stage("calibrate", "calibrate", model=opts.model, out=store, data="wiki", samples=opts.calib_samples,
               seq_len=opts.calib_seq_len, batch_size=8, **device),
        _stage("spectra", "spectra", model=opts.model, covariances=store, out=out / "report" / "spectra.png", **device),
    ]  # fmt: skip
    for name in opts.method_names:
        run = run_dir(opts, name)
        statistics = {"covariances": store} if get_method(name).needs else {}
        building, training = making(name)
        stages += [
            _stage(building, "build", model=opts.model, out=run, method=name, rank=opts.rank,
                   alpha=float(opts.rank), **statistics, **device),
            _stage(training, "train", run=run, task="sft", data="polarity", max_length=128, seed=0,
                   epochs=opts.epochs, batch_size=8, module_lr=opts.module_lr, warmup_ratio=0.1, schedule="cosine",
                   logging_steps=2, order="length", **device),
        ]  # fmt: skip
    scored = {"perplexity": "wiki-heldout", "tasks": "polarity-instruct", "seq_len": opts.eval_seq_len,
              "max_windows": opts.eval_windows, "batch_size": 4, **device}  # fmt: skip
    for e in evaluations(opts):
        stages.append(_stage(f"eval {e.row}", "eval", target=e.target, initial=e.initial, out=e.results, **scored))
    return stages


def _stage(name: str, command: str, **values: Any) -> Stage:
    plain = {key: str(value) if isinstance(value, Path) else value for key, value in values.items()}
    return Stage.of(name, COMMANDS[command], plain, "quickstart")
