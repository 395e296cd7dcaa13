"""The commands: plain functions that take an options dataclass and return a result.

Each is a row of :data:`COMMANDS`: its name, its options class (whose docstring and field help texts
are its ``--help``), the function, what it writes and hands to later stages of a pipeline, both
known from its options before it runs (so that a whole recipe is checked before its first stage;
results do not repeat them), and whether it runs in each process of a launcher (``torchrun``,
``accelerate launch``): where it is dispatched (:meth:`Command.start`, the CLI and a recipe's
stages), a command that runs in one process is refused in one line under a launcher. The CLI,
recipes (``svdadapt run``) and the quickstart call these, never the domain below them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import backend
from ..train.checkpoints import CHECKPOINTS
from .build import BuildOptions, BuildResult, build
from .calibrate import CalibrateOptions, CalibrateResult, calibrate
from .calibrate import resumable as calibration_resumable
from .common import Result
from .compress import CompressOptions, CompressResult, compress
from .evaluate import EvalOptions, EvalResult, evaluate, results_file
from .export import ExportOptions, ExportResult, export
from .generate import GenerateOptions, GenerateResult, generate
from .merge import MergeOptions, MergeResult, merge
from .spectra import SpectraOptions, SpectraResult, spectra
from .train import TrainOptions, TrainResult, train
from .train import launchable as training_launchable
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
    launchable: Callable[[Any], bool] = lambda _options: False  # it runs in each process of a launcher
    launch_refusal: str = ""  # the one line under a launcher when not launchable (default: one process)

    def start(self, options: Any, progress: bool = True) -> Result:
        """Run it as the CLI and a recipe's stages do: under a launcher, first refused in one line
        unless it runs in each process of one with these options."""
        if not self.launchable(options):
            backend.launch().require_alone(
                self.launch_refusal or f"{self.name} runs in one process; run it without a multi-process launcher"
            )
        return self.run(options, progress)


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
            launchable=lambda _o: True,
        ),  # fmt: skip
        Command("build", BuildOptions, build, hands_over=lambda o: _run(o.out), launchable=lambda _o: True),
        Command("merge", MergeOptions, merge),
        Command("export", ExportOptions, export),
        Command("generate", GenerateOptions, generate),  # one process: streams to one terminal
        Command(
            "train",
            TrainOptions,
            train,
            hands_over=lambda o: _run(trained_run(o)),
            writes=trained_run,
            resumable=training_resumable,
            scratch=(CHECKPOINTS,),
            launchable=training_launchable,
            launch_refusal="train builds or copies a run (--out) in one process; under a launcher, train an existing "
            "run in place: `svdadapt build ... --out RUN` first, then launch `svdadapt train RUN ...`",
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
    "GenerateOptions",
    "GenerateResult",
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
    "generate",
    "merge",
    "spectra",
    "train",
]
