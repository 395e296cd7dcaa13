"""The compression sweep: for each decomposition, drop the r smallest components of every target
layer at each point and measure perplexity; the model is restored to W after every point.

Each decomposition factors each layer once (only the largest r's components are computed); the
base model's perplexity is measured once and is every decomposition's r = 0 point (nothing is
changed there).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn
from tqdm.auto import tqdm

from ..backend import Placement
from ..build.waves import waves_from_store, waves_without_statistics
from ..decompose import DECOMPOSITIONS
from ..errors import SvdadaptError, unknown
from ..evaluate import PerplexityResult, Windows, perplexity, streamed_perplexity
from ..store import CovarianceStore
from ..streaming import block_index, find_stack
from ..targets import weight_matrix
from .discard import Discard, layer_ranks
from .dropped import decompose_bottom, keep_originals, min_dim, restore, write_point


@dataclass
class Point:
    """One measured point of the sweep."""

    decomposition: str
    discard: str  # as given: a count, or a fraction of each layer's k = min(out, in)
    ranks: str  # the distinct per-layer r values, e.g. "19/58"
    dropped: int  # Σ r over the target layers
    share: float  # Σ r / Σ k: the fraction of all target components dropped
    perplexity: float
    nll: float
    tokens: int
    seconds: float  # writing the weights, evaluating, restoring (0 where nothing changes: the base measurement)
    also: dict[str, float] = field(default_factory=dict)  # perplexity on each further text (--also-eval)

    def as_dict(self) -> dict:
        return dict(vars(self))


@dataclass
class Sweep:
    base: PerplexityResult
    points: list[Point] = field(default_factory=list)
    base_also: dict[str, PerplexityResult] = field(default_factory=dict)  # the base on each further text
    decompose_seconds: dict[str, float] = field(default_factory=dict)
    dampings: dict[str, list[float]] = field(default_factory=dict)  # λ used (context decomposition)


def check_decompositions(names: list[str], store: CovarianceStore | None) -> None:
    """Unknown names, or statistics a decomposition needs without a store, are errors."""
    for name in names:
        if name not in DECOMPOSITIONS:
            raise unknown("decomposition", name, [n for n, d in DECOMPOSITIONS.items() if d.whole])
        if not DECOMPOSITIONS[name].whole:
            whole = ", ".join(n for n, d in DECOMPOSITIONS.items() if d.whole)
            raise SvdadaptError(f"the {name} decomposition does not decompose all of W; compress compares {whole}")
        if DECOMPOSITIONS[name].needs and store is None:
            raise SvdadaptError(
                f"the {name} decomposition needs calibration statistics: pass --covariances DIR (from "
                "svdadapt calibrate), or sweep only --decomposition plain"
            )


def _waves(name: str, store: CovarianceStore | None, names: list[str]):
    needs = DECOMPOSITIONS[name].needs
    return waves_from_store(store, names, needs) if needs else waves_without_statistics(names)


def run_sweep(
    model: nn.Module,
    modules: dict[str, nn.Module],
    decompositions: list[str],
    points: list[Discard],
    windows: Windows,
    store: CovarianceStore | None = None,
    batch_size: int = 1,
    progress: bool = True,
    on_point: Callable[[Point], None] | None = None,
    placement: Placement | None = None,
    hidden_dir=None,
    also: dict[str, Windows] | None = None,
) -> Sweep:
    """Perplexity of ``model`` with the smallest components of ``modules`` dropped, per decomposition
    and point, on ``windows`` and on each text of ``also`` (e.g. an out-of-domain one). ``on_point``
    sees each point as soon as it is measured. The model ends as it began.
    An offloaded model (``placement``) streams its blocks through the compute device for every
    measurement, each block's weights changed on the way, never in the model."""
    check_decompositions(decompositions, store)
    ks = {name: min_dim(m) for name, m in modules.items()}
    ranks = layer_ranks(points, ks)
    r_max = {name: max(r[name] for r in ranks) for name in modules}
    r_max = {name: r for name, r in r_max.items() if r > 0}
    total_k = sum(ks.values())

    def point(decomposition, discard, chosen, result, seconds, further) -> Point:
        distinct = "/".join(str(r) for r in sorted(set(chosen.values())))
        dropped = sum(chosen.values())
        also_ppl = {k: r.perplexity for k, r in further.items()}
        return Point(decomposition, discard.text, distinct, dropped, dropped / total_k, result.perplexity,
                     result.nll, result.tokens, round(seconds, 2), also_ppl)  # fmt: skip

    chosen_layers = {n: modules[n] for n in r_max}
    measure = _measurer(model, chosen_layers, windows, batch_size, progress, placement, hidden_dir)
    measure_also = {name: _measurer(model, chosen_layers, w, batch_size, progress, placement, hidden_dir)
                    for name, w in (also or {}).items()}  # fmt: skip
    base = measure(None, {})
    sweep = Sweep(base, base_also={name: m(None, {}) for name, m in measure_also.items()})
    compute = placement.compute if placement is not None else None
    for decomposition in decompositions:
        started = time.monotonic()
        waves = _waves(decomposition, store, list(r_max))
        dropped = decompose_bottom(DECOMPOSITIONS[decomposition], modules, r_max, waves, progress, compute)
        sweep.decompose_seconds[decomposition] = round(time.monotonic() - started, 2)
        sweep.dampings[decomposition] = sorted({d.damping for d in dropped.values() if d.damping is not None})
        for discard, chosen in tqdm(
            list(zip(points, ranks)), desc=f"sweep ({decomposition})", unit="point", disable=not progress
        ):
            started = time.monotonic()
            if not any(chosen.values()):  # nothing changes: the base model's measurement
                result, further, seconds = base, sweep.base_also, 0.0
            else:
                result = measure(dropped, chosen)
                further = {name: m(dropped, chosen) for name, m in measure_also.items()}
                seconds = time.monotonic() - started
            sweep.points.append(point(decomposition, discard, chosen, result, seconds, further))
            if on_point is not None:
                on_point(sweep.points[-1])
        del dropped
    return sweep


def _measurer(model, modules, windows, batch_size, progress, placement: Placement | None, hidden_dir=None):
    """``measure(dropped, chosen)``: the perplexity with each layer's ``chosen`` r smallest components
    dropped (none: the model as it is). In place the weights are written, measured and restored;
    offloaded each block's copy on the compute device is changed on its way through."""
    if placement is None or not placement.offloaded:
        originals = keep_originals(modules)

        def in_place(dropped, chosen) -> PerplexityResult:
            try:
                write_point(modules, originals, dropped, chosen)
                return perplexity(model, windows, batch_size, progress)
            finally:
                restore(modules, originals, [n for n, r in chosen.items() if r > 0])

        return in_place
    stack_name, _ = find_stack(model, list(modules))
    by_block: dict[int, list[str]] = {}
    for name in modules:
        by_block.setdefault(block_index(stack_name, name), []).append(name)

    def streamed(dropped, chosen) -> PerplexityResult:
        def change(index: int, _block) -> None:
            names = [n for n in by_block.get(index, []) if chosen.get(n, 0) > 0]
            current = {n: weight_matrix(modules[n]) for n in names}  # the block's private copies
            write_point({n: modules[n] for n in names}, current, dropped, {n: chosen[n] for n in names})

        edit = change if chosen else None
        return streamed_perplexity(model, windows, placement, batch_size, progress, edit, hidden_dir)

    return streamed
