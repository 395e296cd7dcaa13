"""Symmetric eigensolvers on CPU: LAPACK's MRRR (some eigenpairs) and divide-and-conquer (all).

MRRR (scipy's ``driver="evr"``) returns just the eigenpairs asked for, several times faster than a
full ``torch.linalg.eigh`` at the sizes of transformer layers; divide and conquer (``evd``) is faster
for all of them (figures: docs/performance.md, benchmarks/kernel_choices.py). MRRR is called through ctypes
so that parallel workers do not queue on the GIL.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np
import torch


def eigh(G: torch.Tensor, subset: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of a symmetric (n, n) float64 CPU matrix;
    ``subset=(lo, hi)`` returns only eigenpairs lo..hi (inclusive, ascending)."""
    import scipy.linalg

    a = G.detach().numpy()
    if subset is None:
        values, vectors = scipy.linalg.eigh(a, driver="evd", check_finite=False)
    else:
        found = syevr_subset(a, *subset)
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


def syevr_subset(G: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray] | None:
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
