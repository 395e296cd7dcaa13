"""Numerical helpers of the decompositions: finiteness in one pass, a weight plus or minus some
components, and refining the smallest singular triplets of a triangular factor by block inverse
iteration."""

from __future__ import annotations

import torch


def all_finite(t: torch.Tensor) -> bool:
    """No inf or nan in ``t``: one min/max pass (NaN propagates), no boolean tensor of t's size."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def add_low_rank(W: torch.Tensor, P: torch.Tensor, Q: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """W + scale·P·Q (out, in) for P (out, q), Q (q, in), in ``dtype`` as one fused multiply-add on
    W's device: the one way a weight gains or loses components (a residual base, a truncated or
    compressed weight, a merge, the original restored)."""
    return torch.addmm(W.detach().to(dtype), P.to(W.device, dtype), Q.to(W.device, dtype), alpha=scale)


def zero_or_negative(C: torch.Tensor) -> str:
    """What is wrong with a covariance whose diagonal does not sum to something positive (a mean of
    squares can only be zero, when calibration never reached the layer, or else is damaged)."""
    if not torch.diagonal(C).abs().sum() > 0:
        return "is zero: calibration never reached this layer"
    return "has a negative diagonal, which no covariance has: the store is damaged"


REFINE_TOL = 1e-10  # subspace change per iteration at which refinement stops (float32 storage: ~6e-8)
REFINE_MAX_ITER = 30


def refine_bottom_singular(
    R: torch.Tensor, start: torch.Tensor, r: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The r smallest singular triplets of an upper-triangular (n, n) R, refined from ``start``.

    Block inverse iteration, X ← R⁻¹R⁻ᵀX with two triangular solves, then Rayleigh-Ritz (an SVD of
    R·X, (n, k)); it stops when the r-dimensional Ritz subspace moves by less than 1e-10. Never
    squares R: each step is backward stable, so the result is as accurate as a full SVD of R, at
    the cost of k-column solves. ``start`` (n, k), k > r, should roughly span the bottom right
    singular subspace (e.g. the Gram eigenvectors). Returns (P, S, Z) with R·Z = P·diag(S), S
    descending, or None when R is singular or the iteration does not settle.
    """
    k = start.shape[1]
    X = start
    previous = None
    for _ in range(REFINE_MAX_ITER):
        Y = torch.linalg.solve_triangular(R.mT, X, upper=False)  # R⁻ᵀX, (n, k)
        X = torch.linalg.solve_triangular(R, Y, upper=True)  # R⁻¹R⁻ᵀX
        if not all_finite(X):
            return None
        X = torch.linalg.qr(X)[0]
        P, S, Zh = torch.linalg.svd(R @ X, full_matrices=False)  # Ritz pairs, S descending
        X = X @ Zh.mT  # (n, k) Ritz vectors
        bottom = X[:, k - r :]  # (n, r)
        if previous is not None:
            moved = torch.linalg.matrix_norm(bottom - previous @ (previous.mT @ bottom), ord=2)
            if moved < REFINE_TOL:
                return P[:, k - r :], S[k - r :], bottom
        previous = bottom
    return None
