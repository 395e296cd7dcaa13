"""``svdadapt quickstart``: the main job, on the embedded defaults, with no hub access.

Calibrate SmolLM2-135M-Instruct on the bundled Wikipedia calibration part (knowledge-preserved
mode) → build corda-kpa, lora, kasa and kasa-context at one rank → fine-tune each briefly on the
bundled polarity instruction task → evaluate polarity accuracy (label likelihood, 40 held-out
reviews) and held-out Wikipedia perplexity before and after (knowledge retention, CorDA's claim) →
a comparison table and a report folder with the table, loss curves and singular-value spectra as
PNGs. Every step is a stage of a pipeline (:mod:`.stages`) that the pipeline runner runs, so a
rerun keeps what is done with the same options (the calibration, the trained runs, their
evaluations) and runs the rest, as ``svdadapt run --resume`` does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..models import positions_of_model
from ..pipeline import Stage, recorded, run_stages
from .options import QuickstartOptions
from .report import copied, loss_curves, rows, table, write_report
from .stages import plan


@dataclass
class QuickstartResult:
    rows: dict[str, dict]  # table row -> accuracy, perplexity (and train_seconds)
    report: Path
    plots: list[Path]
    seconds: float
    copied: set[str] = field(default_factory=set)  # rows copied from the original's

    def summary(self) -> str:
        names = ", ".join(p.name for p in self.plots)
        return f"{table(self.rows, self.copied)}\n\nreport: {self.report} ({names}); {self.seconds:.0f} s in all"


def quickstart(opts: QuickstartOptions, progress: bool = True) -> QuickstartResult:
    """Run the whole comparison; the report goes to ``OUT/report``."""
    started = time.monotonic()
    out = Path(opts.out).expanduser()
    stages = plan(opts)
    check_windows(opts, stages)
    done = run_stages(stages, out, resume=recorded(out), progress=progress, label="svdadapt quickstart")
    found = rows(opts, {stage.name: stage.seconds for stage in done.stages})
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    write_report(opts, found, report)
    plots = [p for p in (loss_curves(opts, report), report / "spectra.png") if p and p.is_file()]
    return QuickstartResult(found, report, plots, time.monotonic() - started, copied(opts))


def check_windows(opts: QuickstartOptions, stages: list[Stage]) -> None:
    """Windows longer than the model's positions, refused before any stage runs by the commands' own
    checks (which otherwise run once the model is loaded), naming the quickstart's flags."""
    limit = positions_of_model(opts.model)
    for stage in stages:
        if stage.command.name == "calibrate":
            stage.options.source.check_length(limit, "--calib-seq-len")
        elif stage.command.name == "eval":
            stage.options.settings.check_length(limit, "--eval-seq-len")


__all__ = ["QuickstartOptions", "QuickstartResult", "quickstart"]
