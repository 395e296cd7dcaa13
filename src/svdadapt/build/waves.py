"""Where a build gets its layers' statistics, as "waves": lists of units decomposed together.

A unit is the layers that share one input statistic (a covariance group) and that statistic (or
None). A wave is what is ready at once: one block's groups when calibrating on the fly, so each
covariance is used and freed right after its block finishes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from ..calibrate import PassSettings, iter_covariances
from ..store import CovarianceStore, FinishedGroup

WAVE = 8  # units per wave when nothing else decides


@dataclass
class Unit:
    names: list[str]
    statistic: torch.Tensor | None  # (in, in) covariance, (in,) mean |x|, or None


def _chunks(units: list[Unit]) -> Iterator[list[Unit]]:
    for start in range(0, len(units), WAVE):
        yield units[start : start + WAVE]


def _statistic(group: FinishedGroup, needs: str) -> torch.Tensor:
    return group.covariance if needs == "covariance" else group.mean_abs


def waves_without_statistics(names: Iterable[str]) -> Iterator[list[Unit]]:
    yield from _chunks([Unit([n], None) for n in names])


def waves_from_store(store: CovarianceStore, names: list[str], needs: str) -> Iterator[list[Unit]]:
    """One unit per store group (shared layers decomposed against one loaded covariance)."""
    wanted = set(names)
    keys = list(dict.fromkeys(store.group_key(n) for n in names))
    for chunk in _chunks([Unit([m for m in store.members(k) if m in wanted], None) for k in keys]):
        for unit in chunk:
            first = unit.names[0]
            unit.statistic = store.covariance(first) if needs == "covariance" else store.mean_abs(first)
        yield chunk
        for unit in chunk:
            unit.statistic = None  # free as soon as the wave is done


def waves_on_the_fly(
    model, batches, modules: dict, needs: str, accumulate_dtype, progress: bool
) -> Iterator[list[Unit]]:
    """Calibrate block by block and hand over each block's groups as one wave."""
    total = sum(int(b["input_ids"].shape[0]) for b in batches)
    settings = PassSettings(accumulate_dtype=accumulate_dtype, progress=progress, total_samples=total)
    for _, groups in iter_covariances(model, batches, modules, settings):
        yield [Unit(g.members, _statistic(g, needs)) for g in groups]
