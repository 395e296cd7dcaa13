"""Factors W = U diag(S) Vᵀ of a weight, and which r of them a method takes."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch


class Take(Enum):
    """Which r components of a decomposition: the largest or the smallest."""

    TOP = "top"
    BOTTOM = "bottom"


@dataclass
class Factors:
    """W = U diag(S) Vᵀ with S in descending order."""

    U: torch.Tensor  # (out, k)
    S: torch.Tensor  # (k,)
    V: torch.Tensor  # (in, k)
    damping: float | None = None  # λ actually used (context decomposition)

    def top(self, r: int) -> Factors:
        """The r largest components."""
        return Factors(self.U[:, :r], self.S[:r], self.V[:, :r], self.damping)

    def bottom(self, r: int) -> Factors:
        """The r smallest components."""
        k = self.S.shape[0]
        return Factors(self.U[:, k - r :], self.S[k - r :], self.V[:, k - r :], self.damping)

    def take(self, which: Take, r: int) -> Factors:
        """The r largest (TOP) or smallest (BOTTOM) components."""
        return self.top(r) if which is Take.TOP else self.bottom(r)

    def drop_bottom(self, r: int) -> Factors:
        """All but the r smallest components."""
        return self.top(self.S.shape[0] - r)

    def product(self) -> torch.Tensor:
        """U diag(S) Vᵀ, (out, in)."""
        return (self.U * self.S) @ self.V.T
