"""Where a build gets its layers' statistics, as "waves": lists of units decomposed together.

A unit is the layers that share one input statistic (a covariance group) and that statistic (or
None). A wave is what is ready at once: one block's groups when calibrating on the fly, so each
covariance is used and freed right after its block finishes.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch

from .. import backend
from ..calibrate import PassSettings, iter_covariances
from ..decompose import Decomposer, Decomposition, decomposer
from ..errors import SvdadaptError
from ..store import NO_MEAN, CovarianceStore, FinishedGroup

WAVE = 8  # units per wave when nothing else decides
T = TypeVar("T")


@dataclass
class Unit:
    names: list[str]
    statistic: torch.Tensor | None  # (in, in) covariance, (in,) mean |x|, or None
    decompose: Decomposer | None = None  # set where a planning pass already decomposed the unit


def chunks(units: list[Unit]) -> Iterator[list[Unit]]:
    for start in range(0, len(units), WAVE):
        yield units[start : start + WAVE]


def centred(covariance: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """C − μμᵀ (in, in), the covariance about the mean, subtracted in float64 and cast back once."""
    mu = mean.to(torch.float64)  # (in,)
    return torch.addr(covariance.to(torch.float64), mu, mu, alpha=-1).to(covariance.dtype)


# What a decomposition's ``needs`` names, from the parts a store or a calibration pass holds per group.
STATISTICS: dict[str, tuple[tuple[str, ...], Callable[..., torch.Tensor]]] = {
    "covariance": (("covariance",), lambda C: C),
    "mean_abs": (("mean_abs",), lambda m: m),
    "centred_covariance": (("covariance", "mean"), centred),
}


def _statistic(group: FinishedGroup, needs: str) -> torch.Tensor:
    parts, make = STATISTICS[needs]
    if "mean" in parts and group.mean is None:
        raise SvdadaptError(f"calibration kept no mean of the inputs of {group.members[0]}; {NO_MEAN}")
    return make(*(getattr(group, part) for part in parts))


def _stored(store: CovarianceStore, name: str, needs: str) -> torch.Tensor:
    parts, make = STATISTICS[needs]
    return make(*(getattr(store, part)(name) for part in parts))


def decompose_waves(
    waves: Iterable[list[Unit]], row: Decomposition | None, wanted: Container[str], device: torch.device,
    job: Callable[[str, Decomposer | None, torch.Tensor | None], backend.LayerJob[T]], pool,
) -> Iterator[dict[str, T]]:  # fmt: skip
    """Drive the layer pool over ``waves``: for each wave, the ``job`` of every wanted layer of every
    unit, given the unit's decomposer (its statistic on ``device``, by ``row``; None without one) and
    that statistic, run on ``pool``; yields each wave's results by layer. The one loop of every pass
    that decomposes layers wave by wave (building adapters, compression)."""
    for wave in waves:  # the wave source may run model forwards: full threads there
        jobs = []
        for unit in wave:
            statistic = unit.statistic.to(device) if unit.statistic is not None else None
            decompose = unit.decompose or (decomposer(row, statistic, unit.names[0]) if row else None)
            jobs += [job(name, decompose, statistic) for name in unit.names if name in wanted]
        yield dict(pool.map(jobs))


def waves_without_statistics(names: Iterable[str]) -> Iterator[list[Unit]]:
    yield from chunks([Unit([n], None) for n in names])


def waves_from_store(store: CovarianceStore, names: list[str], needs: str) -> Iterator[list[Unit]]:
    """One unit per store group (shared layers decomposed against one loaded covariance)."""
    for part in STATISTICS[needs][0]:
        store.require(part, names)  # a statistic the store lacks: one line, before any work
    wanted = set(names)
    keys = list(dict.fromkeys(store.group_key(n) for n in names))
    for chunk in chunks([Unit([m for m in store.members(k) if m in wanted], None) for k in keys]):
        for unit in chunk:
            first = unit.names[0]
            unit.statistic = _stored(store, first, needs)
        yield chunk
        for unit in chunk:
            unit.statistic = None  # free as soon as the wave is done


def waves_on_the_fly(
    model, batches, modules: dict, needs: str, accumulate_dtype, progress: bool, placement=None, hidden_dir=None,
    launch: backend.Launch | None = None,
) -> Iterator[list[Unit]]:  # fmt: skip
    """Calibrate block by block and hand over each block's groups as one wave (``placement``,
    ``hidden_dir`` and ``launch``: as :class:`~svdadapt.calibrate.PassSettings` takes them)."""
    total = sum(int(b["input_ids"].shape[0]) for b in batches)
    settings = PassSettings(
        accumulate_dtype=accumulate_dtype, progress=progress, total_samples=total, placement=placement,
        hidden_dir=hidden_dir, launch=launch or backend.Launch(),
    )  # fmt: skip
    for _, groups in iter_covariances(model, batches, modules, settings):
        yield [Unit(g.members, _statistic(g, needs)) for g in groups]
