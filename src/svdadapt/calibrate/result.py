"""What calibration produces per covariance group, and the cross-rank reduction of partial sums."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from .capture import Group


@dataclass
class FinishedGroup:
    """Final statistics of layers that read one input: C = Σ x xᵀ / n and mean |x| over n tokens."""

    key: str
    members: list[str]
    covariance: torch.Tensor  # (in, in), symmetric
    mean_abs: torch.Tensor  # (in,)
    count: int
    masked: bool = True


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def finish(group: Group, store_dtype: torch.dtype = torch.float32) -> FinishedGroup:
    """Turn running sums into means in ``store_dtype`` (the sums are consumed); all-reduces sums
    and counts first when torch.distributed runs."""
    sums = group.sums
    if distributed():
        state = sums.state()
        for tensor in state.values():
            dist.all_reduce(tensor)
        sums.count = int(state["count"].item())
    count = max(sums.count, 1)
    covariance = sums.finish_().div_(count).to(store_dtype)
    return FinishedGroup(
        key=group.key,
        members=list(group.members),
        covariance=covariance,
        mean_abs=(sums.abs_sum / count).to(store_dtype),
        count=sums.count,
        masked=group.masked,
    )
