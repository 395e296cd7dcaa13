"""``svdadapt quickstart``: the main job, on the embedded defaults, with no hub access.

Calibrate SmolLM2-135M-Instruct on the bundled Wikipedia calibration part (knowledge-preserved
mode) → build corda-kpa, lora and kasa at one rank → fine-tune each briefly on the bundled polarity
instruction task → evaluate polarity accuracy (label likelihood, 40 held-out reviews) and held-out
Wikipedia perplexity before and after (knowledge retention, CorDA's claim) → a comparison table and
a report folder with the table, loss curves and singular-value spectra as PNGs. Reruns reuse what
is already there.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from .methods import get_method
from .options import opt

# name -> (method, KaSA truncation)
QUICK_METHODS = {
    "corda-kpa": ("corda-kpa", None),
    "lora": ("lora", None),
    "kasa": ("kasa", None),
    "kasa-context": ("kasa", "context"),
}


@dataclass(kw_only=True)
class QuickstartOptions:
    """Calibrate the embedded SmolLM2 on bundled Wikipedia text, build corda-kpa, lora and kasa (plain and
    context truncation) adapters, fine-tune each on the bundled polarity task, and compare task accuracy
    and held-out perplexity before and after, into a report folder (no hub access; minutes on a 2-core CPU)."""

    out: str = opt("svdadapt-quickstart", "directory for everything the quickstart writes")
    model: str = opt("default", "model to run it on (the embedded SmolLM2 by default)")
    methods: str = opt(",".join(QUICK_METHODS), f"methods to compare, comma-separated: {', '.join(QUICK_METHODS)}")
    rank: int = opt(16, "adapter rank for every method (alpha = rank)")
    calib_samples: int = opt(32, "calibration windows of bundled wiki")
    calib_seq_len: int = opt(256, "tokens per calibration window")
    epochs: float = opt(1.0, "fine-tuning epochs on the polarity training reviews (144; 16 held for eval loss)")
    module_lr: float = opt(5e-4, "adapter learning rate")
    eval_windows: int = opt(12, "held-out wiki perplexity windows")
    eval_seq_len: int = opt(256, "tokens per perplexity window")
    device: str | None = opt(None, "cpu, cuda or cuda:N (default: cuda when available)")


def _evaluate(model, tokenizer, opts: QuickstartOptions) -> dict:
    from .evaluate.suite import evaluate_model

    results = evaluate_model(
        model, tokenizer, ["wiki-heldout"], ["polarity-instruct"],
        seq_len=opts.eval_seq_len, max_windows=opts.eval_windows, batch_size=4,
    )  # fmt: skip
    return {
        "accuracy": results["tasks"]["polarity-instruct"]["accuracy"],
        "perplexity": results["perplexity"]["wiki-heldout"]["perplexity"],
    }


def _train_method(name: str, covariances: Path, opts: QuickstartOptions, out: Path):
    from .runs import Run
    from .train.job import TrainOptions, train

    method, truncation = QUICK_METHODS[name]
    run_dir = out / "runs" / name
    if (run_dir / "train_results.json").is_file() and (run := Run.open(run_dir)).meta.get("stage") == "trained":
        print(f"svdadapt quickstart: reusing the trained {name} run in {run_dir}")
        return run
    uses_covariances = get_method(method, truncation).needs is not None
    return train(
        TrainOptions(
            model=opts.model, method=method, truncation=truncation, rank=opts.rank, alpha=float(opts.rank),
            task="sft", data="polarity", covariances=str(covariances) if uses_covariances else None, max_length=128,
            epochs=opts.epochs, batch_size=8, module_lr=opts.module_lr, warmup_ratio=0.1, schedule="cosine",
            logging_steps=2, out=str(run_dir), device=opts.device,
        )
    )  # fmt: skip


def _spectra(model_spec: str, covariances: Path, report: Path) -> Path | None:
    """Normalised singular values of two layers: plain SVD of W against the context SVD of W·C'."""
    from .decompose import context_svd, plain_svd
    from .models import load_model
    from .plots import plot_lines
    from .store import CovarianceStore
    from .targets import find_targets, weight_matrix

    store = CovarianceStore.load(covariances)
    targets = find_targets(load_model(model_spec).model)
    names = list(targets)
    middle = names[len(names) // 2].rsplit(".", 2)[0]  # a block in the middle of the stack
    in_block = [n for n in names if n.startswith(middle + ".")]
    series = {}
    for name in (in_block[0], in_block[-1]):
        W = weight_matrix(targets[name]).detach()
        short = ".".join(name.split(".")[-3:])
        decompositions = {"plain": plain_svd(W, name), "context": context_svd(W, store.covariance(name), name)}
        for label, factors in decompositions.items():
            S = (factors.S / factors.S[0]).tolist()
            series[f"{short} {label}"] = (list(range(1, len(S) + 1)), S)
    return plot_lines(series, report / "spectra.png", "singular values / largest", "component", "σ_i / σ_1", logy=True)


def _loss_curves(runs: dict, report: Path) -> Path | None:
    from .plots import plot_lines

    series = {}
    for method, run in runs.items():
        log = json.loads((run.path / "train_results.json").read_text()).get("log", [])
        points = [(e["step"], e.get("task_loss", e["loss"])) for e in log if "loss" in e and "step" in e]
        series[method] = ([p[0] for p in points], [p[1] for p in points])
    return plot_lines(series, report / "loss_curves.png", "polarity fine-tuning", "optimizer step", "task loss")


def _table(rows: dict) -> str:
    base = rows["original (no adapter)"]
    lines = [
        "| model | polarity accuracy | held-out wiki PPL | PPL change | train s |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        change = round((r["perplexity"] / base["perplexity"] - 1) * 100, 1) + 0.0  # + 0.0: no "-0.0%"
        seconds = f"{r['train_seconds']:.0f}" if "train_seconds" in r else "–"
        lines.append(f"| {name} | {r['accuracy']:.3f} | {r['perplexity']:.3f} | {change:+.1f}% | {seconds} |")
    return "\n".join(lines)


def quickstart(opts: QuickstartOptions) -> dict:
    from .adapters.inject import inject
    from .atomic import write_json
    from .backend import resolve_device
    from .calibrate.job import CalibrateOptions, calibrate, summary
    from .errors import SvdadaptError
    from .models import load_model

    started = time.monotonic()
    out = Path(opts.out).expanduser()
    methods = [m.strip() for m in opts.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in QUICK_METHODS]
    if unknown:
        raise SvdadaptError(f"unknown quickstart method {unknown[0]!r}; choose from {', '.join(QUICK_METHODS)}")
    covariances = out / "covariances"
    store = calibrate(
        CalibrateOptions(
            model=opts.model, data="wiki", samples=opts.calib_samples, seq_len=opts.calib_seq_len, batch_size=8,
            device=opts.device, out=str(covariances), resume=True,
        )
    )  # fmt: skip
    print(summary(store))
    device = resolve_device(opts.device)
    original = load_model(opts.model, device=device)
    rows = {"original (no adapter)": _evaluate(original.model, original.tokenizer, opts)}
    del original
    runs = {}
    for name in methods:
        t = time.monotonic()
        runs[name] = run = _train_method(name, covariances, opts, out)
        trained_in = time.monotonic() - t
        for stage, initial in (("at init", True), ("trained", False)):
            if initial and get_method(*QUICK_METHODS[name]).original_at_init:
                rows[f"{name} {stage}"] = dict(rows["original (no adapter)"])  # B = 0 on the original W
                continue
            loaded = run.load_base(device=device)
            inject(loaded.model, run.adapters(initial=initial))
            row = _evaluate(loaded.model, loaded.tokenizer, opts)
            rows[f"{name} {stage}"] = {**row, "train_seconds": trained_in} if not initial else row
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    table = _table(rows)
    plots = [p for p in (_loss_curves(runs, report), _spectra(opts.model, covariances, report)) if p]
    (report / "results.md").write_text(
        f"# svdadapt quickstart\n\n{opts.model} model, rank {opts.rank} (alpha = rank), {opts.epochs:g} epoch(s) "
        "on the polarity training reviews (144 trained on, 16 for the evaluation loss); accuracy on the 40 "
        "held-out reviews by label likelihood; perplexity on "
        f"{opts.eval_windows} × {opts.eval_seq_len} tokens of held-out Wikipedia.\n\n{table}\n"
    )
    write_json(report / "results.json", {"rows": rows, "options": vars(opts)})
    print("\n" + table)
    print(f"\nreport: {report} ({', '.join(p.name for p in plots)}); {time.monotonic() - started:.0f} s in all")
    return rows
