"""``svdadapt quickstart``: the main job, on the embedded defaults, with no hub access.

Calibrate SmolLM2-135M-Instruct on the bundled Wikipedia calibration part (knowledge-preserved
mode) → build corda-kpa, lora and kasa at one rank → fine-tune each briefly on the bundled polarity
instruction task → evaluate polarity accuracy (label likelihood, 40 held-out reviews) and held-out
Wikipedia perplexity before and after (knowledge retention, CorDA's claim) → a comparison table and
a report folder with the table, loss curves and singular-value spectra as PNGs. Reruns reuse what
is already there. Every step is a command (calibrate, build, eval, train, spectra).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .atomic import write_json
from .build.options import AdapterOptions
from .commands import (
    BuildOptions,
    CalibrateOptions,
    EvalOptions,
    SpectraOptions,
    TrainOptions,
    build,
    calibrate,
    evaluate,
    spectra,
    train,
)
from .data.options import DataOptions
from .errors import SvdadaptError
from .evaluate.settings import EvalSettings
from .methods import get_method
from .models import positions_of_model
from .options import POSITIVE, Options, at_least, flat_values, opt
from .plots import plot_lines
from .runs import Run
from .train.options import TaskOptions, TrainingOptions

QUICK_METHODS = ("corda-kpa", "lora", "kasa", "kasa-context")  # rows of the methods table
ORIGINAL = "original (no adapter)"


@dataclass(kw_only=True)
class QuickstartOptions(Options):
    """Calibrate the embedded SmolLM2 on bundled Wikipedia text, build corda-kpa, lora and kasa (plain and
    context truncation) adapters, fine-tune each on the bundled polarity task, and compare task accuracy
    and held-out perplexity before and after, into a report folder (no hub access; minutes on a 2-core CPU)."""

    out: str = opt("svdadapt-quickstart", "directory for everything the quickstart writes")
    model: str = opt("default", "model to run it on (the embedded SmolLM2 by default)")
    methods: str = opt(",".join(QUICK_METHODS), f"methods to compare, comma-separated: {', '.join(QUICK_METHODS)}")
    rank: int = opt(16, "adapter rank for every method (alpha = rank)", check=POSITIVE)
    calib_samples: int = opt(32, "calibration windows of bundled wiki", check=POSITIVE)
    calib_seq_len: int = opt(256, "tokens per calibration window", check=POSITIVE)
    epochs: float = opt(1.0, "fine-tuning epochs on the polarity training reviews (144; 16 held for eval loss)",
                        check=POSITIVE)  # fmt: skip
    module_lr: float = opt(5e-4, "adapter learning rate", check=POSITIVE)
    eval_windows: int = opt(12, "held-out wiki perplexity windows", check=POSITIVE)
    eval_seq_len: int = opt(256, "tokens per perplexity window", check=at_least(2))
    device: str | None = opt(None, "cpu, cuda or cuda:N (default: cuda when available)")

    def check(self) -> None:
        unknown = [m for m in self.method_names if m not in QUICK_METHODS]
        if unknown:
            raise SvdadaptError(f"unknown quickstart method {unknown[0]!r}; choose from {', '.join(QUICK_METHODS)}")

    @property
    def method_names(self) -> list[str]:
        return [m.strip() for m in self.methods.split(",") if m.strip()]


@dataclass
class QuickstartResult:
    rows: dict[str, dict]  # table row -> accuracy, perplexity (and train_seconds)
    report: Path
    plots: list[Path]
    seconds: float

    @property
    def outputs(self) -> dict[str, str]:
        return {}

    def summary(self) -> str:
        names = ", ".join(p.name for p in self.plots)
        return f"{table(self.rows)}\n\nreport: {self.report} ({names}); {self.seconds:.0f} s in all"


def table(rows: dict[str, dict]) -> str:
    base = rows[ORIGINAL]
    lines = [
        "| model | polarity accuracy | held-out wiki PPL | PPL change | train s |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        change = round((r["perplexity"] / base["perplexity"] - 1) * 100, 1) + 0.0  # + 0.0: no "-0.0%"
        seconds = f"{r['train_seconds']:.0f}" if "train_seconds" in r else "–"
        lines.append(f"| {name} | {r['accuracy']:.3f} | {r['perplexity']:.3f} | {change:+.1f}% | {seconds} |")
    return "\n".join(lines)


def _evaluate(target: Path | str, out: Path, opts: QuickstartOptions, progress: bool, initial: bool = False) -> dict:
    settings = EvalSettings(seq_len=opts.eval_seq_len, max_windows=opts.eval_windows, batch_size=4)
    found = evaluate(
        EvalOptions(target=str(target), perplexity="wiki-heldout", tasks="polarity-instruct", settings=settings,
                    initial=initial, device=opts.device, out=str(out)),
        progress=progress,
    ).results  # fmt: skip
    return {
        "accuracy": found["tasks"]["polarity-instruct"]["accuracy"],
        "perplexity": found["perplexity"]["wiki-heldout"]["perplexity"],
    }


def _trained_run(name: str, covariances: Path, opts: QuickstartOptions, run_dir: Path, progress: bool) -> Run:
    """The method's run, built and trained here (or found trained by an earlier quickstart)."""
    if (run_dir / "run.json").is_file() and (run := Run.open(run_dir)).meta.get("stage") == "trained":
        print(f"svdadapt quickstart: reusing the trained {name} run in {run_dir}")
        return run
    needs = get_method(name).needs
    adapter = AdapterOptions(
        method=name, rank=opts.rank, alpha=float(opts.rank),
        covariances=str(covariances) if needs else None,
    )  # fmt: skip
    # the quickstart's own run: one whose training did not finish is built again
    build(
        BuildOptions(model=opts.model, out=str(run_dir), adapter=adapter, device=opts.device, overwrite=True),
        progress=progress,
    )
    return train(
        TrainOptions(
            run=str(run_dir), task=TaskOptions(task="sft", data="polarity", max_length=128), seed=0,
            training=TrainingOptions(epochs=opts.epochs, batch_size=8, module_lr=opts.module_lr, warmup_ratio=0.1,
                                     schedule="cosine", logging_steps=2, order="length"),
            device=opts.device,
        ),
        progress=progress,
    ).run  # fmt: skip


def _loss_curves(runs: dict[str, Run], report: Path) -> Path | None:
    series = {}
    for method, run in runs.items():
        log = (run.meta.get("training") or {}).get("log", [])
        points = [(e["step"], e.get("task_loss", e["loss"])) for e in log if "loss" in e and "step" in e]
        series[method] = ([p[0] for p in points], [p[1] for p in points])
    return plot_lines(series, report / "loss_curves.png", "polarity fine-tuning", "optimizer step", "task loss")


def quickstart(opts: QuickstartOptions, progress: bool = True) -> QuickstartResult:
    """Run the whole comparison; the report goes to ``OUT/report``."""
    started = time.monotonic()
    out = Path(opts.out).expanduser()
    limit = positions_of_model(opts.model)
    for flag, value in (("--calib-seq-len", opts.calib_seq_len), ("--eval-seq-len", opts.eval_seq_len)):
        if limit is not None and value > limit:
            raise SvdadaptError(f"{flag} {value} is beyond this model's limit of {limit} positions")
    covariances = out / "covariances"
    calibrated = calibrate(
        CalibrateOptions(
            model=opts.model, out=str(covariances), device=opts.device, resume=True,
            source=DataOptions(data="wiki", samples=opts.calib_samples, seq_len=opts.calib_seq_len, batch_size=8),
        ),
        progress=progress,
    )  # fmt: skip
    if progress:
        print(calibrated.summary())
    rows = {ORIGINAL: _evaluate(opts.model, out / "eval" / "original.json", opts, progress)}
    runs = {}
    for name in opts.method_names:
        run_dir = out / "runs" / name
        t = time.monotonic()
        runs[name] = _trained_run(name, covariances, opts, run_dir, progress)
        trained_in = time.monotonic() - t
        if get_method(name).original_at_init:
            rows[f"{name} at init"] = dict(rows[ORIGINAL])  # the untouched weight, B = 0: the original itself
        else:
            rows[f"{name} at init"] = _evaluate(run_dir, run_dir / "eval" / "initial.json", opts, progress, True)
        trained = _evaluate(run_dir, run_dir / "eval" / "trained.json", opts, progress)
        rows[f"{name} trained"] = {**trained, "train_seconds": trained_in}
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    shown = spectra(
        SpectraOptions(model=opts.model, covariances=str(covariances), out=str(report / "spectra.png"),
                       device=opts.device, overwrite=True),
        progress=progress,
    )  # fmt: skip
    plots = [p for p in (_loss_curves(runs, report), shown.plot) if p]
    (report / "results.md").write_text(
        f"# svdadapt quickstart\n\n{opts.model} model, rank {opts.rank} (alpha = rank), {opts.epochs:g} epoch(s) "
        "on the polarity training reviews (144 trained on, 16 for the evaluation loss); accuracy on the 40 "
        "held-out reviews by label likelihood; perplexity on "
        f"{opts.eval_windows} × {opts.eval_seq_len} tokens of held-out Wikipedia.\n\n{table(rows)}\n"
    )
    write_json(report / "results.json", {"rows": rows, "options": flat_values(opts)})
    return QuickstartResult(rows, report, plots, time.monotonic() - started)
