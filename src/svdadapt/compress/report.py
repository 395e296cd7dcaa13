"""What a sweep writes: results.csv (one row per point), results.json (everything) and a PNG plot of
perplexity against the components dropped, one line per decomposition — all in one step."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..atomic import atomic_directory
from ..errors import SvdadaptError
from ..plots import plot_lines
from .discard import Discard
from .sweep import Point, Sweep

FORMAT = "svdadapt.compress"
CSV_FILE, JSON_FILE, PLOT_FILE = "results.csv", "results.json", "perplexity_vs_discarded.png"
COLUMNS = ["decomposition", "discard", "ranks", "dropped", "share", "perplexity", "nll", "tokens", "seconds"]


def check_out(out: Path) -> None:
    """Refuse an --out that is a file, or a non-empty directory that is not an earlier sweep's."""
    if out.exists() and not out.is_dir():
        raise SvdadaptError(f"--out {out} is a file; choose a directory")
    if out.is_dir() and any(out.iterdir()):
        try:
            earlier = json.loads((out / JSON_FILE).read_text()).get("format") == FORMAT
        except (OSError, ValueError, AttributeError):
            earlier = False
        if not earlier:
            raise SvdadaptError(f"--out {out} exists and is not an earlier compression sweep; choose another directory")


def x_axis(points: list[Discard]) -> tuple[str, dict[str, float] | None]:
    """The plot's x label, and x per --discard text when every point is a count (else x = % of k)."""
    if all(p.count is not None for p in points):
        return "components dropped per layer (r)", {p.text: float(p.count) for p in points}
    mixed = any(p.count is not None for p in points)  # a count among fractions sits at the share it drops
    label = "components dropped (% of min(out, in) of each layer" + ("; a count r: % of all)" if mixed else ")")
    return label, {p.text: p.fraction * 100 for p in points if p.fraction is not None}


def _x(point: Point, xs: dict[str, float]) -> float:
    return xs.get(point.discard, point.share * 100)  # counts among fractions: the share actually dropped


def write_results(out: Path, sweep: Sweep, discards: list[Discard], meta: dict, title: str) -> Path | None:
    """Write the three files into ``out`` at once (an earlier sweep there is replaced); returns the plot
    path, or None without matplotlib."""
    xlabel, xs = x_axis(discards)
    series: dict[str, tuple[list[float], list[float]]] = {}
    for p in sweep.points:
        line = series.setdefault(p.decomposition, ([], []))
        line[0].append(_x(p, xs))
        line[1].append(p.perplexity)
    series = {name: tuple(zip(*sorted(zip(*line)))) for name, line in series.items()}  # ascending x
    payload = {
        "format": FORMAT,
        **meta,
        "base": sweep.base.as_dict(),
        "base_also": {name: r.as_dict() for name, r in sweep.base_also.items()},
        "decompose_seconds": sweep.decompose_seconds,
        "dampings": sweep.dampings,
        "points": [p.as_dict() for p in sweep.points],
    }
    with atomic_directory(out) as tmp:
        further = list(sweep.base_also)  # a column "perplexity:TEXT" per further text
        with open(tmp / CSV_FILE, "w", newline="") as f:
            writer = csv.DictWriter(f, COLUMNS + [f"perplexity:{name}" for name in further])
            writer.writeheader()
            for p in sweep.points:
                row = {k: v for k, v in p.as_dict().items() if k != "also"}
                row |= {f"perplexity:{name}": p.also[name] for name in further}
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        plot = plot_lines(series, tmp / PLOT_FILE, title, xlabel, "perplexity (log scale)", logy=True)
        (tmp / JSON_FILE).write_text(json.dumps(payload, indent=2) + "\n")
    return out / PLOT_FILE if plot is not None else None


def table(sweep: Sweep, discards: list[Discard]) -> list[str]:
    """Perplexity per point (rows) and decomposition (columns), as aligned text lines."""
    names = list(dict.fromkeys(p.decomposition for p in sweep.points))
    by = {(p.decomposition, p.discard): p for p in sweep.points}
    lines = ["  discard    " + "".join(f"{n:>14}" for n in names)]
    for d in discards:
        cells = "".join(f"{by[(n, d.text)].perplexity:>14.4g}" for n in names)
        lines.append(f"  {d.label:<11}" + cells)
    for text in sweep.base_also:  # each further text: the same table
        lines.append(f"  on {text}:")
        for d in discards:
            lines.append(f"  {d.label:<11}" + "".join(f"{by[(n, d.text)].also[text]:>14.4g}" for n in names))
    return lines
