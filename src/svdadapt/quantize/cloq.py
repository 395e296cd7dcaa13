"""CLoQ's closed form (arXiv 2501.18475): the rank-r L = s·B·A nearest to E = W − Q on the
calibration inputs, minimising ‖(E − L)·X‖_F = ‖(E − L)·C^{1/2}‖_F for C = XᵀX/n.

With C' = R Rᵀ (R = P Λ^{1/2} from the eigendecomposition C' = P Λ Pᵀ) the objective is
‖E R − L R‖_F, so by Eckart–Young L R = [E R]_r, the truncated SVD U_r S_r H_rᵀ, and L = [E R]_r R⁺.
C' = C + λ·mean(diag C)·I is damped as the rest of svdadapt damps C (λ = 0.01, decompose.py): a
small Frobenius term that keeps directions the calibration never excited from being ignored
outright; with λ = 0, R⁺ is the pseudo-inverse, and L has no part in C's null space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..decompose import DEFAULT_DAMPING, factorize, identity_context
from ..errors import SvdadaptError
from ..factors import Take
from ..linalg import all_finite, zero_or_negative

PINV_RTOL = 1e-12  # eigenvalues below this × the largest count as zero (λ = 0 only)


@dataclass
class InputRoot:
    """A factor R (in, in) of the damped covariance, C' = R Rᵀ, and its pseudo-inverse R⁺ (in, in)."""

    root: torch.Tensor  # (in, in) float64: P Λ^{1/2}
    inverse: torch.Tensor  # (in, in) float64: Λ^{+1/2} Pᵀ
    damping: float


def input_root(C: torch.Tensor, damping: float = DEFAULT_DAMPING, name: str = "layer") -> InputRoot:
    """R and R⁺ of C' = C + λ·mean(diag C)·I, from one float64 eigendecomposition (share it between
    the layers that read one input)."""
    if not all_finite(C):
        raise SvdadaptError(f"covariance of {name} has non-finite values; recalibrate")
    C64 = C.detach().to(torch.float64)  # (in, in)
    mean_diagonal = torch.diagonal(C64).mean()
    if not mean_diagonal > 0:
        raise SvdadaptError(f"covariance of {name} {zero_or_negative(C)}; recalibrate")
    damped = (C64 + C64.T) / 2 + damping * mean_diagonal * torch.eye(C64.shape[0], dtype=torch.float64)
    values, vectors = torch.linalg.eigh(damped)  # (in,), (in, in)
    values = values.clamp_min(0)
    kept = values > PINV_RTOL * values.max()
    root_values = values.sqrt()  # (in,)
    inverse_values = torch.where(kept, 1 / root_values.where(kept, torch.ones_like(root_values)), 0)
    return InputRoot(vectors * root_values, inverse_values[:, None] * vectors.T, damping)


def weighted_best_rank(E: torch.Tensor, root: InputRoot, rank: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """B (out, r), A (r, in) in float64 with s·B·A = [E R]_r R⁺, the minimiser of ‖(E − s·B·A) R‖_F
    over rank ≤ r; the singular values are split evenly, B = U √(S/s), A = √(S/s) Hᵀ R⁺."""
    M = E.to(torch.float64) @ root.root  # (out, in)
    top = factorize(M, lambda _: identity_context(), "weighted residual", want=(Take.TOP, rank))
    half = (top.S / scale).clamp_min(0).sqrt()  # (r,)
    B = top.U * half  # (out, r)
    A = half[:, None] * (top.V.T @ root.inverse)  # (r, in)
    return B, A
