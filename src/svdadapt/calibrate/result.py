"""What calibration produces per covariance group, from the running sums of all processes."""

from __future__ import annotations

import torch

from .. import backend
from ..store import FinishedGroup
from .capture import Group


def finish(
    group: Group, store_dtype: torch.dtype = torch.float32, launch: backend.Launch | None = None
) -> FinishedGroup:
    """Turn running sums into means in ``store_dtype`` (the sums are consumed), summed over every
    process of ``launch`` first (default: this one alone)."""
    sums = group.sums
    state = sums.state()  # the sums themselves: added up in place
    (launch or backend.Launch()).sum(state.values())
    sums.count = int(state["count"].item())
    count = max(sums.count, 1)
    covariance = sums.finish_().div_(count).to(store_dtype)
    finished = FinishedGroup(
        key=group.key,
        members=list(group.members),
        covariance=covariance,
        mean_abs=(sums.abs_sum / count).to(store_dtype),
        count=sums.count,
        masked=group.masked,
        mean=None if sums.sum is None else (sums.sum / count).to(store_dtype),
    )
    group.sums = None  # the running sums are the largest thing calibration holds: gone as soon as used
    return finished
