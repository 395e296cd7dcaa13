"""Running sums for one covariance group: Σ x xᵀ (upper block triangle only), Σ |x|, Σ x, token count.

The Gram product is symmetric, so only the block-upper triangle is computed (the back end's
triangular product, on whatever kernels suit the device). Products run in float32 (or the
activations' own dtype if wider, e.g. float64 test models) and are added into sums kept in
``accumulate_dtype``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import backend

# The block width of versions whose checkpoints held only the triangle: every width used since is
# a multiple of it, so its diagonal blocks lie inside theirs.
NARROWEST_BLOCK = 96


def compute_dtype_for(activation_dtype: torch.dtype) -> torch.dtype:
    """float32, or the activation dtype when it is wider (float64 models stay exact)."""
    return torch.float64 if activation_dtype == torch.float64 else torch.float32


@dataclass
class GramAccumulator:
    """Sums over the rows x (tokens) fed to :meth:`add`; ``gram`` holds only the block-upper triangle."""

    dim: int
    accumulate_dtype: torch.dtype = torch.float64
    device: torch.device | str = "cpu"
    gram: torch.Tensor = field(init=False)  # (d, d), block-upper triangle of Σ x xᵀ
    abs_sum: torch.Tensor = field(init=False)  # (d,), Σ |x|
    sum: torch.Tensor | None = field(init=False)  # (d,), Σ x; None after resuming sums saved without it
    count: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.gram = torch.zeros(self.dim, self.dim, dtype=self.accumulate_dtype, device=self.device)
        self.abs_sum = torch.zeros(self.dim, dtype=self.accumulate_dtype, device=self.device)
        self.sum = torch.zeros(self.dim, dtype=self.accumulate_dtype, device=self.device)
        self._kernels = backend.on(self.device)

    def add(self, x: torch.Tensor) -> torch.Tensor:
        """Add rows ``x`` (n, d); return this batch's Σ|x| (d,) so callers can check it is finite."""
        x = x.to(device=self.device, dtype=compute_dtype_for(x.dtype))  # (n, d)
        batch_abs = x.abs().sum(dim=0)  # (d,)
        self.abs_sum += batch_abs.to(self.accumulate_dtype)
        if self.sum is not None:
            self.sum += x.sum(dim=0).to(self.accumulate_dtype)
        self.count += x.shape[0]
        self._kernels.accumulate_gram(self.gram, x)
        return batch_abs

    def full_gram(self) -> torch.Tensor:
        """Σ x xᵀ as a full symmetric (d, d) matrix (a new tensor; the sums stay usable)."""
        return backend.mirror_upper(self.gram.clone())

    def finish_(self) -> torch.Tensor:
        """Σ x xᵀ, completed in place: cheapest, but no more :meth:`add` after it."""
        return backend.mirror_upper(self.gram)

    def state(self) -> dict[str, torch.Tensor]:
        """The running sums themselves, not copies (for an in-place all-reduce); ``gram`` holds only
        the block-upper triangle."""
        state = {
            "gram": self.gram,
            "abs_sum": self.abs_sum,
            "count": torch.tensor([self.count], dtype=torch.float64, device=self.device),
        }
        if self.sum is not None:
            state["sum"] = self.sum
        return state

    def checkpoint(self) -> dict[str, torch.Tensor]:
        """A copy of the sums that any accumulator of this dimension resumes from, whatever its
        block width: ``gram`` is the full symmetric Σ x xᵀ."""
        return {**{k: v.clone() for k, v in self.state().items()}, "gram": self.full_gram()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore sums written by :meth:`checkpoint` or :meth:`state`. A triangle-only ``gram`` (from
        :meth:`state`, or a checkpoint of a version that saved those) is completed first at the
        narrowest width ever used: its diagonal blocks lie inside every wider width's, so whichever
        width accumulated it, every entry it lacks is mirrored from one it has."""
        narrowest = self.dim if self.dim <= 2 * NARROWEST_BLOCK else NARROWEST_BLOCK
        self.gram.copy_(backend.mirror_upper(state["gram"].clone(), narrowest))
        self.abs_sum.copy_(state["abs_sum"])
        if "sum" in state:  # sums saved before Σ x was kept: the group's mean stays unknown
            self.sum.copy_(state["sum"])
        else:
            self.sum = None
        self.count = int(state["count"].item())
