"""Dense linear-algebra back ends: symmetric eigensolvers (all or some eigenpairs) and thread limits.

On CPU, LAPACK's MRRR solver (scipy's ``driver="evr"``) returns just the eigenpairs asked for —
3-4x faster than a full ``torch.linalg.eigh`` at the sizes of transformer layers — and its
divide-and-conquer solver (``evd``) is faster for all of them. The MRRR solver is called through
ctypes so that parallel workers do not queue on the GIL. On GPU, torch's solver is used.
"""

from __future__ import annotations

import ctypes
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
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
        found = _syevr_subset(a, *subset)
        if found is None:  # no direct LAPACK, or it failed: scipy's wrapper (and its error)
            found = scipy.linalg.eigh(a, subset_by_index=list(subset), driver="evr", check_finite=False)
        values, vectors = found
    return torch.from_numpy(values), torch.from_numpy(vectors)


@functools.cache
def _dsyevr():
    """LAPACK's dsyevr from scipy's own LAPACK (scipy.linalg.cython_lapack) as a ctypes function,
    or None. ctypes lets go of the GIL during the call, which scipy's wrapper does not: eigensolvers
    of parallel workers then run side by side instead of in turn."""
    try:
        import scipy.linalg.cython_lapack as lapack

        capsule = lapack.__pyx_capi__["dsyevr"]
        api = ctypes.pythonapi
        api.PyCapsule_GetName.restype = ctypes.c_char_p
        api.PyCapsule_GetName.argtypes = [ctypes.py_object]
        api.PyCapsule_GetPointer.restype = ctypes.c_void_p
        api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
        pointer = api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule))
    except (ImportError, AttributeError, KeyError, ValueError):
        return None
    return ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 21)(pointer)  # all arguments by reference


def _syevr_subset(G: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Eigenpairs lo..hi of symmetric G by dsyevr (MRRR), as scipy's driver="evr" computes them."""
    dsyevr = _dsyevr()
    if dsyevr is None:
        return None
    n, k = G.shape[0], hi - lo + 1
    a = np.array(G, dtype=np.float64, order="F", copy=True)  # (n, n), overwritten
    values = np.empty(n)
    vectors = np.empty((n, k), order="F")
    support = np.empty(2 * k, dtype=np.int32)
    ints = {key: ctypes.c_int(v) for key, v in dict(n=n, il=lo + 1, iu=hi + 1, m=0, info=0).items()}
    zero = ctypes.c_double(0.0)
    by = ctypes.byref

    def call(work: np.ndarray, lwork: int, iwork: np.ndarray, liwork: int) -> None:
        dsyevr(
            by(ctypes.c_char(b"V")), by(ctypes.c_char(b"I")), by(ctypes.c_char(b"L")), by(ints["n"]),
            a.ctypes.data, by(ints["n"]), by(zero), by(zero), by(ints["il"]), by(ints["iu"]), by(zero),
            by(ints["m"]), values.ctypes.data, vectors.ctypes.data, by(ints["n"]), support.ctypes.data,
            work.ctypes.data, by(ctypes.c_int(lwork)), iwork.ctypes.data, by(ctypes.c_int(liwork)), by(ints["info"]),
        )  # fmt: skip

    query, iquery = np.empty(1), np.empty(1, dtype=np.int32)
    call(query, -1, iquery, -1)  # workspace sizes
    lwork, liwork = int(query[0]), int(iquery[0])
    call(np.empty(lwork), lwork, np.empty(liwork, dtype=np.int32), liwork)
    if ints["info"].value != 0 or ints["m"].value != k:
        return None
    return values[:k], vectors


GRAM_BLOCK = 96  # column block of the triangular Gram products: ~58% of a full product at d = 576


def gram(X: torch.Tensor, block: int = GRAM_BLOCK) -> torch.Tensor:
    """XᵀX, (d, d), for X (n, d): only the block-upper triangle is multiplied, then mirrored
    (~60-70% of the time of ``X.T @ X``; symmetric up to rounding inside the diagonal blocks)."""
    d = X.shape[1]
    step = d if d <= 2 * block else block
    G = X.new_empty(d, d)
    for start in range(0, d, step):
        torch.mm(X[:, start : start + step].T, X[:, start:], out=G[start : start + step, start:])  # (b, d - start)
    return mirror_upper_blocks(G, step)


def mirror_upper_blocks(G: torch.Tensor, step: int) -> torch.Tensor:
    """Complete in place a symmetric G of which the diagonal blocks (width ``step``) and the
    strips right of them are filled: each strip is copied to its mirror below."""
    for start in range(step, G.shape[0], step):
        G[start:, start - step : start] = G[start - step : start, start:].T
    return G


def all_finite(t: torch.Tensor) -> bool:
    """No inf or nan in ``t``: one min/max pass (NaN propagates), ~10x faster than isfinite().all()."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


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


def parallel_workers(on_cpu: bool) -> int:
    """Layers decomposed side by side: one per core on CPU (each single-threaded), one on an accelerator."""
    return min(torch.get_num_threads(), os.cpu_count() or 1) if on_cpu else 1


def layer_pool(workers: int) -> ThreadPoolExecutor:
    """Threads that decompose layers side by side; with several, each uses one torch thread (torch's
    limit is per thread: set in the main thread only, workers would still start two each)."""
    return ThreadPoolExecutor(workers, initializer=torch.set_num_threads if workers > 1 else None, initargs=(1,))


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
