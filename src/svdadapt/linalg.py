"""Dense linear-algebra back ends: symmetric eigensolvers (all or some eigenpairs) and thread limits.

On CPU, LAPACK's MRRR solver (scipy's ``driver="evr"``) returns just the eigenpairs asked for —
3-4x faster than a full ``torch.linalg.eigh`` at the sizes of transformer layers — and its
divide-and-conquer solver (``evd``) is faster for all of them. On GPU, torch's solver is used.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch


def eigh(G: torch.Tensor, subset: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of a symmetric (n, n) float64 matrix.

    ``subset=(lo, hi)`` returns only eigenpairs lo..hi (inclusive, in ascending order).
    """
    if G.device.type != "cpu":
        values, vectors = torch.linalg.eigh(G)
        if subset is None:
            return values, vectors
        lo, hi = subset
        return values[lo : hi + 1], vectors[:, lo : hi + 1]
    import scipy.linalg

    a = G.detach().numpy()
    if subset is None:
        values, vectors = scipy.linalg.eigh(a, driver="evd", check_finite=False)
    else:
        values, vectors = scipy.linalg.eigh(a, subset_by_index=list(subset), driver="evr", check_finite=False)
    return torch.from_numpy(values), torch.from_numpy(vectors)


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
        if not bool(torch.isfinite(X).all()):
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


def parallel_workers(on_cpu: bool) -> int:
    """Layers decomposed side by side: one per core on CPU (each single-threaded), one on an accelerator."""
    return min(torch.get_num_threads(), os.cpu_count() or 1) if on_cpu else 1


@contextmanager
def single_threaded(enabled: bool = True):
    """One torch and one BLAS thread per worker of a pool: independent layers run side by side."""
    if not enabled:
        yield
        return
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(previous)
