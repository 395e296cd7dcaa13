"""Running sums for one covariance group: Σ x xᵀ (upper block triangle only), Σ |x|, token count.

The Gram product is symmetric, so only the block-upper triangle is computed: with column blocks of
width ``block`` the work is about (1 + 1/nblocks)/2 of a full ``xᵀx`` and runs as plain GEMMs on any
device. Products run in float32 (or the activations' own dtype if wider, e.g. float64 test models),
on oneDNN where :mod:`~svdadapt.cpu_matmul` prefers it, and are added into sums kept in
``accumulate_dtype``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..cpu_matmul import gram_rows, onednn_preferred
from ..linalg import mirror_upper_blocks

# 3 column blocks for d = 576 (~67% of a full Gram's work), 8 for d = 1536 (~56%): as fast as
# narrower ones with MKL, faster with oneDNN. The same on every back end, so that distributed ranks
# all-reduce triangles of the same shape (checkpoints hold the full matrix, any width resumes them).
DEFAULT_BLOCK = 192
NARROWEST_BLOCK = 96  # the width of earlier versions, whose checkpoints held only the triangle


def _block_width(dim: int, block: int) -> int:
    return dim if dim <= 2 * block else block


def compute_dtype_for(activation_dtype: torch.dtype) -> torch.dtype:
    """float32, or the activation dtype when it is wider (float64 models stay exact)."""
    return torch.float64 if activation_dtype == torch.float64 else torch.float32


@dataclass
class GramAccumulator:
    """Sums over the rows x (tokens) fed to :meth:`add`; ``gram`` holds only the block-upper triangle."""

    dim: int
    accumulate_dtype: torch.dtype = torch.float64
    device: torch.device | str = "cpu"
    block: int = DEFAULT_BLOCK
    gram: torch.Tensor = field(init=False)  # (d, d), block-upper triangle of Σ x xᵀ
    abs_sum: torch.Tensor = field(init=False)  # (d,), Σ |x|
    count: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.gram = torch.zeros(self.dim, self.dim, dtype=self.accumulate_dtype, device=self.device)
        self.abs_sum = torch.zeros(self.dim, dtype=self.accumulate_dtype, device=self.device)

    def add(self, x: torch.Tensor) -> torch.Tensor:
        """Add rows ``x`` (n, d); return this batch's Σ|x| (d,) so callers can check it is finite."""
        x = x.to(device=self.device, dtype=compute_dtype_for(x.dtype))  # (n, d)
        batch_abs = x.abs().sum(dim=0)  # (d,)
        self.abs_sum += batch_abs.to(self.accumulate_dtype)
        self.count += x.shape[0]
        d, step = self.dim, self._block_width()
        if x.dtype == torch.float32 and x.device.type == "cpu" and onednn_preferred():
            xT = x.T.contiguous()  # (d, n)
            for start in range(0, d, step):
                self.gram[start : start + step, start:] += gram_rows(xT, start, start + step)
            return batch_abs
        same_dtype = x.dtype == self.accumulate_dtype
        for start in range(0, d, step):
            rows = x[:, start : start + step]  # (n, b)
            target = self.gram[start : start + step, start:]  # (b, d - start)
            if same_dtype:
                target.addmm_(rows.T, x[:, start:])
            else:
                target += torch.mm(rows.T, x[:, start:]).to(self.accumulate_dtype)
        return batch_abs

    def _block_width(self) -> int:
        return _block_width(self.dim, self.block)

    def full_gram(self) -> torch.Tensor:
        """Σ x xᵀ as a full symmetric (d, d) matrix (a new tensor; the sums stay usable)."""
        return self._mirror(self.gram.clone())

    def finish_(self) -> torch.Tensor:
        """Σ x xᵀ, completed in place: cheapest, but no more :meth:`add` after it."""
        return self._mirror(self.gram)

    def _mirror(self, gram: torch.Tensor) -> torch.Tensor:
        return mirror_upper_blocks(gram, self._block_width())

    def state(self) -> dict[str, torch.Tensor]:
        """The running sums themselves, not copies (for an in-place all-reduce); ``gram`` holds only
        the block-upper triangle, so it means something only at this block width."""
        return {
            "gram": self.gram,
            "abs_sum": self.abs_sum,
            "count": torch.tensor([self.count], dtype=torch.float64, device=self.device),
        }

    def checkpoint(self) -> dict[str, torch.Tensor]:
        """A copy of the sums that any accumulator of this dimension resumes from, whatever its
        block width: ``gram`` is the full symmetric Σ x xᵀ."""
        return {**{k: v.clone() for k, v in self.state().items()}, "gram": self.full_gram()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore sums written by :meth:`checkpoint` or :meth:`state`. A triangle-only ``gram`` (from
        :meth:`state`, or a checkpoint of a version that saved those) is completed first at the
        narrowest width ever used: its diagonal blocks lie inside every wider width's, so whichever
        width accumulated it, every entry it lacks is mirrored from one it has."""
        self.gram.copy_(mirror_upper_blocks(state["gram"].clone(), _block_width(self.dim, NARROWEST_BLOCK)))
        self.abs_sum.copy_(state["abs_sum"])
        self.count = int(state["count"].item())
