"""Rank allocations: how a row spreads the rank budget (the sum of the planned ranks) across
layers, from every layer's spectrum, before any adapter is made. A row names one in ``ranks``."""

from __future__ import annotations

from collections.abc import Callable

import torch

Allocation = Callable[[dict[str, torch.Tensor], dict[str, int]], dict[str, int]]


def explained_variance(ratios: dict[str, torch.Tensor], ranks: dict[str, int]) -> dict[str, int]:
    """EVA's redistribution (PEFT's ``_get_rank_distribution``): the budget Σ r goes to the largest
    explained-variance ratios among every layer's candidates (``ratios[n]``, descending, as many as
    layer n may hold: round(ρ·r)); a layer's rank is how many of its own were chosen (possibly 0).
    Ties go to the layer first in model order, as PEFT gives the leader of a shared input the most."""
    names = [n for n in ranks if n in ratios]
    values = torch.cat([ratios[n].to(torch.float64).cpu() for n in names])  # (Σ candidates,)
    owner = torch.cat([torch.full((ratios[n].numel(),), i) for i, n in enumerate(names)])
    order = torch.sort(values, descending=True, stable=True).indices
    chosen = torch.bincount(owner[order[: sum(ranks.values())]], minlength=len(names))
    return {n: int(chosen[i]) for i, n in enumerate(names)}


RANK_ALLOCATIONS: dict[str, Allocation] = {"explained-variance": explained_variance}
