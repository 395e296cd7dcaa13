"""PNG plots where a person would rather look than read: loss curves, spectra, perplexity sweeps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .atomic import atomic_path


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_lines(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    logy: bool = False,
) -> Path | None:
    """One line per series name (x values, y values); returns the PNG path, None without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for name, (xs, ys) in series.items():
        if len(xs):
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:  # a reader never sees half a PNG
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def loss_curves(log_history: list[dict], path: Path, title: str) -> Path | None:
    """Training loss (and the task loss alone, and evaluation loss) against the optimizer step."""
    series = {}
    for key, label in (("loss", "training loss"), ("task_loss", "task loss"), ("eval_loss", "evaluation loss")):
        points = [(e["step"], e[key]) for e in log_history if key in e and "step" in e]
        if points:
            series[label] = ([p[0] for p in points], [p[1] for p in points])
    return plot_lines(series, path, title, "optimizer step", "loss") if series else None
