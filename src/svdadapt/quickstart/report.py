"""The quickstart's report (``OUT/report``): its table of accuracy and perplexity per model, from the
results files its evaluations wrote, as ``results.md`` and ``results.json``, and the loss curves."""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_json
from ..methods import get_method
from ..options import flat_values
from ..plots import plot_lines
from .options import QuickstartOptions
from .stages import ORIGINAL, evaluations, making, run_dir


def rows(opts: QuickstartOptions, seconds: dict[str, float]) -> dict[str, dict]:
    """Table row → accuracy, perplexity (and train_seconds: building and training in this run, by stage)."""
    found = {e.row: _scores(e.results) for e in evaluations(opts)}
    ordered = {ORIGINAL: found[ORIGINAL]}
    for name in opts.method_names:
        ordered[f"{name} at init"] = found.get(f"{name} at init", dict(found[ORIGINAL]))  # copied: see copied()
        trained = sum(seconds.get(stage, 0.0) for stage in making(name))
        ordered[f"{name} trained"] = {**found[f"{name} trained"], "train_seconds": trained}
    return ordered


def copied(opts: QuickstartOptions) -> set[str]:
    """Rows copied from the original's: the method's model at init is the original itself
    (the untouched weight, B = 0), so it is not evaluated again."""
    return {f"{name} at init" for name in opts.method_names if get_method(name).original_at_init}


def _scores(results: Path) -> dict:
    found = json.loads(results.read_text(encoding="utf-8"))
    return {
        "accuracy": found["tasks"]["polarity-instruct"]["accuracy"],
        "perplexity": found["perplexity"]["wiki-heldout"]["perplexity"],
    }


def table(rows: dict[str, dict], copied: set[str] = frozenset()) -> str:
    base = rows[ORIGINAL]
    lines = [
        "| model | polarity accuracy | held-out wiki PPL | PPL change | train s |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        change = round((r["perplexity"] / base["perplexity"] - 1) * 100, 1) + 0.0  # + 0.0: no "-0.0%"
        seconds = f"{r['train_seconds']:.0f}" if "train_seconds" in r else "–"
        shown = f"{name} (= original)" if name in copied else name
        lines.append(f"| {shown} | {r['accuracy']:.3f} | {r['perplexity']:.3f} | {change:+.1f}% | {seconds} |")
    return "\n".join(lines)


def loss_curves(opts: QuickstartOptions, report: Path) -> Path | None:
    """Each method's task loss by optimizer step, from its run's training results."""
    series = {}
    for name in opts.method_names:
        log = json.loads((run_dir(opts, name) / "train_results.json").read_text(encoding="utf-8")).get("log", [])
        points = [(e["step"], e.get("task_loss", e["loss"])) for e in log if "loss" in e and "step" in e]
        series[name] = ([p[0] for p in points], [p[1] for p in points])
    return plot_lines(series, report / "loss_curves.png", "polarity fine-tuning", "optimizer step", "task loss")


def write_report(opts: QuickstartOptions, rows: dict[str, dict], report: Path) -> None:
    """``results.md`` (the setup in a sentence, and the table) and ``results.json`` (rows and options)."""
    (report / "results.md").write_text(
        f"# svdadapt quickstart\n\n{opts.model} model, rank {opts.rank} (alpha = rank), {opts.epochs:g} epoch(s) "
        "on the polarity training reviews (144 trained on, 16 for the evaluation loss); accuracy on the 40 "
        "held-out reviews by label likelihood; perplexity on "
        f"{opts.eval_windows} × {opts.eval_seq_len} tokens of held-out Wikipedia.\n\n{table(rows, copied(opts))}\n"
    )
    write_json(report / "results.json", {"rows": rows, "options": flat_values(opts)})
