"""Decompositions taken from the spectrum of a layer's inputs rather than of W alone: EVA's
principal directions and LoRA-Null's null space (``unit`` of rows of
:data:`svdadapt.decompose.DECOMPOSITIONS`).

Each is made per unit (the layers that read one input): the statistic's eigenpairs are computed
once, in float64, for the largest rank any of its layers asks for, and shared by them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from . import backend
from .errors import SvdadaptError
from .factors import Factors, Take
from .linalg import all_finite, zero_or_negative

Decomposer = Callable[[torch.Tensor, str, tuple[Take, int]], Factors]  # (W, layer name, want) -> Factors


def _eigenpairs(statistic: torch.Tensor, which: Take, count: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` largest (TOP, descending) or smallest (BOTTOM, ascending) eigenpairs of the
    symmetric statistic (in, in), in float64; each vector's largest entry made positive."""
    if not all_finite(statistic):
        raise SvdadaptError(f"covariance of {name} has non-finite values; recalibrate")
    G = statistic.detach().to(torch.float64)  # (in, in)
    if not torch.trace(G) > 0:
        raise SvdadaptError(f"covariance of {name} {zero_or_negative(G)}; recalibrate")
    n = G.shape[0]
    if which is Take.TOP:
        values, vectors = backend.on(G.device).eigh(G, (n - count, n - 1))
        values, vectors = values.flip(0), vectors.flip(1)  # (count,), (in, count)
    else:
        values, vectors = backend.on(G.device).eigh(G, (0, count - 1))
    pivot = vectors.abs().argmax(dim=0)  # (count,)
    signs = torch.sign(vectors[pivot, torch.arange(count, device=vectors.device)])
    return values, vectors * torch.where(signs == 0, 1.0, signs)


def _shared(statistic: torch.Tensor, which: Take, name: str):
    """Eigenpairs of ``statistic`` for at least ``count`` of them, computed once per larger count."""
    found: dict[str, object] = {"count": 0}
    lock = threading.Lock()

    def pairs(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        with lock:
            if found["count"] < count:
                found["pairs"], found["count"] = _eigenpairs(statistic, which, count, name), count
            values, vectors = found["pairs"]
        return values[:count], vectors[:, :count]

    return pairs


def principal_inputs(statistic: torch.Tensor, name: str) -> Decomposer:
    """EVA: the top-r principal directions of the inputs, from their centred covariance Σ = V Λ Vᵀ.

    The factors are of Σ, not of W: U = V (in, r), S = λ / tr Σ (each direction's explained-variance
    ratio, what EVA's rank allocation compares across layers), V (in, r) orthonormal."""
    pairs = _shared(statistic, Take.TOP, name)
    total = float(torch.trace(statistic.detach().to(torch.float64)))

    def decompose(W: torch.Tensor, layer: str, want: tuple[Take, int]) -> Factors:
        values, vectors = pairs(want[1])  # (r,), (in, r)
        return Factors(vectors, values.clamp_min(0) / total, vectors)

    return decompose


def null_space(statistic: torch.Tensor, name: str) -> Decomposer:
    """LoRA-Null: W projected onto the null space of the inputs, the span N (in, r) of the r
    smallest eigenvectors of C, as the reference code (HungerPWAY/LoRA-Null, ``singular_aware``)
    sizes it: as many as the adapter's rank. W·N·Nᵀ has rank ≤ r, so its top-r SVD is all of it:
    W·N = U S Zᵀ (out, r), V = N·Z, and U diag(S) Vᵀ = W·N·Nᵀ exactly."""
    pairs = _shared(statistic, Take.BOTTOM, name)

    def decompose(W: torch.Tensor, layer: str, want: tuple[Take, int]) -> Factors:
        W64 = W.detach().to(torch.float64)  # (out, in)
        if not all_finite(W64):
            raise SvdadaptError(f"weight of {layer} has non-finite values (inf/nan); the model is damaged")
        N = pairs(want[1])[1].to(W64.device)  # (in, r)
        U, S, Zh = torch.linalg.svd(W64 @ N, full_matrices=False)  # (out, r), (r,), (r, r)
        return Factors(U, S, N @ Zh.T)

    return decompose
