"""The commands: plain functions that take an options dataclass and return a result.

Each is a row of :data:`COMMANDS`: its name, its options class (whose docstring and field help texts
are its ``--help``), the function, and what it writes and hands to later stages of a pipeline, both
known from its options before it runs (so that a whole recipe is checked before its first stage;
results do not repeat them). The CLI, recipes (``svdadapt run``) and the quickstart call these,
never the domain below them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..train.checkpoints import CHECKPOINTS
from .build import BuildOptions, BuildResult, build
from .calibrate import CalibrateOptions, CalibrateResult, calibrate
from .calibrate import resumable as calibration_resumable
from .common import Result
from .compress import CompressOptions, CompressResult, compress
from .evaluate import EvalOptions, EvalResult, evaluate, results_file
from .export import ExportOptions, ExportResult, export
from .merge import MergeOptions, MergeResult, merge
from .spectra import SpectraOptions, SpectraResult, spectra
from .train import TrainOptions, TrainResult, train
from .train import resumable as training_resumable
from .train import written as trained_run


@dataclass(frozen=True)
class Command:
    name: str
    options: type
    run: Callable[..., Result]  # run(options, progress=True)
    hands_over: Callable[[Any], dict[str, str]] = lambda _options: {}  # option values for later stages
    writes: Callable[[Any], str | None] = lambda options: options.out  # the path it writes
    resumable: Callable[[Any], bool] = lambda _options: False  # its output holds work --resume continues
    resume_checks: bool = False  # its --resume refuses work made under other options (calibrate's spec)
    scratch: tuple[str, ...] = ()  # folders in its output that are not part of what it makes


def _run(path: str) -> dict[str, str]:
    """A run handed to later stages: to train, merge and export (``run``) and to eval (``target``)."""
    return {"run": path, "target": path}


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command(
            "calibrate",
            CalibrateOptions,
            calibrate,
            hands_over=lambda o: {"covariances": o.out},
            resumable=calibration_resumable,
            resume_checks=True,
        ),  # fmt: skip
        Command("build", BuildOptions, build, hands_over=lambda o: _run(o.out)),
        Command("merge", MergeOptions, merge),
        Command("export", ExportOptions, export),
        Command(
            "train",
            TrainOptions,
            train,
            hands_over=lambda o: _run(trained_run(o)),
            writes=trained_run,
            resumable=training_resumable,
            scratch=(CHECKPOINTS,),
        ),
        Command("eval", EvalOptions, evaluate, writes=lambda o: str(results_file(o))),
        Command("compress", CompressOptions, compress),
        Command("spectra", SpectraOptions, spectra),
    )
}

__all__ = [
    "COMMANDS",
    "BuildOptions",
    "BuildResult",
    "CalibrateOptions",
    "CalibrateResult",
    "Command",
    "CompressOptions",
    "CompressResult",
    "EvalOptions",
    "EvalResult",
    "ExportOptions",
    "ExportResult",
    "MergeOptions",
    "MergeResult",
    "Result",
    "SpectraOptions",
    "SpectraResult",
    "TrainOptions",
    "TrainResult",
    "build",
    "calibrate",
    "compress",
    "evaluate",
    "export",
    "merge",
    "spectra",
    "train",
]
