"""A row's cross-layer rank allocation, as a planning pass before any adapter is initialised.

Every unit's statistic is decomposed once, for the most components a layer may hold (round(ρ·r),
shared by the layers of a unit as PEFT's EVA does, below min(in, out)); the row's allocation picks
each layer's rank from all the spectra; layers given rank 0 get no adapter; alpha scales with the
rank, so s = α/r stays the planned one (PEFT's ``adjust_scaling_factors``). The waves handed on
reuse the components found, and each statistic is dropped as soon as it is read, so a build that
calibrates on the fly holds no more than one block's covariances here either.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..decompose import DECOMPOSITIONS, Factors, decomposer
from ..methods import Method
from ..ranks import RANK_ALLOCATIONS
from ..targets import in_out_features, weight_matrix
from .plan import LayerPlan
from .waves import Unit, chunks


def allocate_ranks(
    method: Method, plan: dict[str, LayerPlan], waves: Iterable[list[Unit]]
) -> tuple[dict[str, LayerPlan], Iterable[list[Unit]]]:
    """The plan with the row's ranks, and waves whose units carry their components."""
    row = DECOMPOSITIONS[method.decomposition]
    found: dict[str, Factors] = {}
    units: list[list[str]] = []
    for wave in waves:
        for unit in wave:
            names = [n for n in unit.names if n in plan]
            if not names:
                continue
            most = max(round(method.rho * plan[n].rank) for n in names)
            decompose = unit.decompose or decomposer(row, unit.statistic, names[0])
            for n in names:
                count = min(most, min(in_out_features(plan[n].module)) - 1)
                found[n] = decompose(weight_matrix(plan[n].module), n, (method.take, count))
            units.append(names)
            unit.statistic = None
    missing = [n for n in plan if n not in found]
    if missing:
        raise RuntimeError(f"no statistics reached {len(missing)} layers, e.g. {missing[0]}")
    ranks = RANK_ALLOCATIONS[method.ranks]({n: f.S for n, f in found.items()}, {n: p.rank for n, p in plan.items()})
    new_plan = {n: LayerPlan(p.module, ranks[n], p.alpha * ranks[n] / p.rank) for n, p in plan.items() if ranks[n] > 0}

    def taken(W, layer: str, want) -> Factors:
        return found[layer].take(*want)

    kept = [[n for n in names if n in new_plan] for names in units]
    return new_plan, list(chunks([Unit(names, None, taken) for names in kept if names]))
