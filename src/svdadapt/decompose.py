"""Decompositions W = U diag(S) Vᵀ of a weight (out, in): plain SVD, ASVD, context-oriented SVD.

Each is an SVD of a "context" product M = W·K for an invertible (in, in) K — identity (plain),
diag(s) (ASVD), damped covariance C' (CorDA) — with V = K⁻¹Ĥ so that W = U diag(S) Vᵀ exactly,
whatever K is; V is not orthonormal unless K is the identity.

All arithmetic runs in float64. The SVD of M is taken from the eigendecomposition of its smaller
Gram matrix (MMᵀ or MᵀM), faster than LAPACK's SVD at these shapes (docs/performance.md), and when
only r components are wanted (building adapters) only those r eigenpairs are computed (by the back
end's eigensolver; its Gram products too). The other factor follows from
W itself, so U·diag(S)·Vᵀ reproduces W (or, for r components, exactly the part of W they span) to
float64 rounding by construction. Squaring blurs what lies below ~1e-8 of the largest singular
value; where the components asked for could be blurred (a tiny singular value or spectral gap at
the cut), the smallest ones are refined by block inverse iteration on the triangular factor of a
QR of M — backward stable, seeded by the blurred Gram eigenvectors, a few triangular solves — and
anything else takes a full SVD of M. K⁻¹ is never formed: C' is Cholesky-factored and solved
against.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import backend
from .errors import SvdadaptError
from .factors import Factors, Take
from .input_spaces import Decomposer, null_space, principal_inputs
from .linalg import all_finite, refine_bottom_singular, zero_or_negative

GRAM_SAFE_RATIO = 1e-6  # full decompositions: below this σ_min/σ_max, use a full SVD
# r components from the Gram: the subspace error measured on real SmolLM2 layers is ~1.5e-18 over
# (gap at the cut / trace), so a gap ≥ 2e-11·trace keeps it below 1e-7 (under the float32 rounding
# of the stored adapter); smaller gaps, or eigenvalues near rounding level, take the full SVD.
GAP_SAFE = 2e-11
TINY_SAFE = 1e-14
DEFAULT_DAMPING = 0.01  # λ in C' = C + λ·mean(diag C)·I, as PEFT starts it
MAX_DAMPING = 1e4
ASVD_ALPHA = 0.5
REFINE_EXTRA = 24  # start vectors beyond r for the bottom-r refinement: faster convergence


@dataclass
class Context:
    """An invertible (in, in) matrix K: M = W·K is decomposed, and V = K⁻¹Ĥ maps back to W."""

    apply: Callable[[torch.Tensor], torch.Tensor]  # W -> W·K
    solve: Callable[[torch.Tensor], torch.Tensor]  # X -> K⁻¹·X
    damping: float | None = None


class _NotPositiveDefinite(Exception):
    pass


def identity_context() -> Context:
    return Context(apply=lambda W: W, solve=lambda X: X)


def activation_context(mean_abs: torch.Tensor, alpha: float = ASVD_ALPHA) -> Context:
    """ASVD's K = diag(s), s_j = mean|x_j|^α + 1e-6."""
    scale = mean_abs.detach().to(torch.float64).clamp_min(0) ** alpha + 1e-6  # (in,)
    return Context(apply=lambda W: W * scale.to(W.device), solve=lambda X: X / scale.to(X.device)[:, None])


APPLY_COLUMNS = 512  # columns of C' made float64 at a time when only W·C' is wanted


def covariance_context(C: torch.Tensor, damping: float = DEFAULT_DAMPING, name: str = "layer") -> Context:
    """CorDA's K = C' = C + λ·mean(diag C)·I. W·C' is computed a block of columns of C' at a time, so
    that no float64 copy of all of C' exists unless a solve needs one (layers with out ≤ in never do):
    then C' and its Cholesky factor are made once and shared by every layer of this context."""
    if not all_finite(C):
        raise SvdadaptError(f"covariance of {name} has non-finite values; recalibrate")
    C = C.detach()  # (in, in)
    shift = damping * torch.diagonal(C).to(torch.float64).mean()
    if not shift > 0:
        raise SvdadaptError(f"covariance of {name} {zero_or_negative(C)}; recalibrate")
    factor: list[torch.Tensor] = []
    lock = threading.Lock()  # layers sharing this context may be decomposed by parallel workers

    def damped_columns(start: int, stop: int, device: torch.device) -> torch.Tensor:
        block = C[:, start:stop].to(device=device, dtype=torch.float64, copy=True)  # (in, b)
        torch.diagonal(block[start:stop]).add_(shift.to(device))
        return block

    def apply(W: torch.Tensor) -> torch.Tensor:
        n = C.shape[0]
        M = W.new_empty(W.shape[0], n)  # (out, in)
        for start in range(0, n, APPLY_COLUMNS):
            stop = min(start + APPLY_COLUMNS, n)
            torch.mm(W, damped_columns(start, stop, W.device), out=M[:, start:stop])
        return M

    def solve(X: torch.Tensor) -> torch.Tensor:
        with lock:
            if not factor:
                L, info = torch.linalg.cholesky_ex(damped_columns(0, C.shape[0], X.device))
                if int(info) != 0:
                    raise _NotPositiveDefinite
                factor.append(L)
        return torch.cholesky_solve(X, factor[0])

    return Context(apply=apply, solve=solve, damping=damping)


def _full_svd(M: torch.Tensor, context: Context, want: tuple[Take, int] | None = None) -> Factors:
    U, S, Hh = torch.linalg.svd(M, full_matrices=False)
    H = Hh.T  # (in, k)
    if want is not None:  # keep only the components asked for before the (costly) solve
        kind, r = want
        pick = slice(0, r) if kind is Take.TOP else slice(S.shape[0] - r, S.shape[0])
        U, S, H = U[:, pick], S[pick], H[:, pick]
    return Factors(U, S, context.solve(H), context.damping)


def _factors_from_gram(W, M, context, values, vectors, wide) -> Factors:
    """U, S, V from eigenpairs (descending) of MMᵀ (``wide``: out ≤ in) or MᵀM."""
    S = values.clamp_min(0).sqrt()
    if wide:
        U = vectors  # (out, k)
        return Factors(U, S, (U.T @ W).T / S, context.damping)  # U S Vᵀ = U Uᵀ W
    H = vectors  # (in, k)
    return Factors((M @ H) / S, S, context.solve(H), context.damping)  # U S Vᵀ = M H Hᵀ K⁻¹


def _refined_bottom(W, M, context, start, r, wide) -> Factors | None:
    """The r smallest components of M by refining ``start`` (Gram eigenvectors) on the triangular
    factor R of a QR of M (tall) or of Mᵀ (wide): either way RᵀR is the Gram matrix."""
    a, tau = torch.geqrf(M.mT if wide else M)  # Householder QR, R = triu(a[:n])
    n = a.shape[1]
    R = a[:n].triu()  # (n, n)
    found = refine_bottom_singular(R, start, r)
    if found is None:
        return None
    P, S, Z = found  # R·Z = P·diag(S)
    if wide:  # M = RᵀQᵀ: left vectors Z (right vectors Q·P, not needed: V = K⁻¹H = WᵀU/S)
        return Factors(Z, S, (Z.T @ W).T / S, context.damping)
    U = torch.ormqr(a, tau, torch.cat([P, P.new_zeros(a.shape[0] - n, r)]))  # Q·[P; 0], (out, r)
    return Factors(U, S, context.solve(Z), context.damping)  # M = Q·R: right vectors Z


def _svd_of_context_product(W: torch.Tensor, context: Context, want: tuple[Take, int] | None = None) -> Factors:
    """Factors of W from the SVD of M = W·K (W float64, (out, in)).

    ``want=(Take.TOP|Take.BOTTOM, r)`` computes only those r components, else all min(out, in).
    """
    out_f, in_f = W.shape
    wide = out_f <= in_f
    M = context.apply(W)  # (out, in)
    kernels = backend.on(M.device)
    G = kernels.gram(M.T if wide else M)  # (k, k), k = min(out, in): MMᵀ or MᵀM
    k = G.shape[0]
    if want is None:
        values, vectors = kernels.eigh(G)
        if values[0] > GRAM_SAFE_RATIO**2 * values[-1]:
            return _factors_from_gram(W, M, context, values.flip(0), vectors.flip(1), wide)
        return _full_svd(M, context)
    kind, r = want
    scale = torch.trace(G)  # ≥ the largest eigenvalue
    if kind is Take.BOTTOM:
        count = min(r + REFINE_EXTRA, k)  # r + 1 would do for the gap; the rest seed a refinement
        values, vectors = kernels.eigh(G, (0, count - 1))  # smallest, ascending
        gap = values[r] - values[r - 1] if r < k else scale
        if values[0] > TINY_SAFE * scale and gap > GAP_SAFE * scale:
            return _factors_from_gram(W, M, context, values[:r].flip(0), vectors[:, :r].flip(1), wide)
        if count < k:
            refined = _refined_bottom(W, M, context, vectors, r, wide)
            if refined is not None:
                return refined
        return _full_svd(M, context, want)
    values, vectors = kernels.eigh(G, (max(k - r - 1, 0), k - 1))  # r + 1 largest
    gap = values[1] - values[0] if r < k else scale
    if gap > GAP_SAFE * scale:
        start = 1 if r < k else 0
        return _factors_from_gram(W, M, context, values[start:].flip(0), vectors[:, start:].flip(1), wide)
    return _full_svd(M, context, want)


def check_finite(W: torch.Tensor, name: str = "layer") -> None:
    """Refuse non-finite weights with a message naming the layer."""
    if not all_finite(W):
        raise SvdadaptError(f"weight of {name} has non-finite values (inf/nan); the model is damaged")


def as_float64(W: torch.Tensor, name: str = "layer") -> torch.Tensor:
    """W in float64, refusing non-finite weights with a message naming the layer."""
    W = W.detach().to(torch.float64)
    check_finite(W, name)
    return W


def factorize(
    W: torch.Tensor,
    make_context: Callable[[float], Context],
    name: str = "layer",
    want: tuple[Take, int] | None = None,
) -> Factors:
    """W = U diag(S) Vᵀ through the SVD of W·K, in float64, with K = make_context(λ); with
    ``want=(Take.TOP|Take.BOTTOM, r)`` only those r components.

    λ starts at PEFT's 0.01 and doubles while K fails to factor — for a covariance in float64 with
    λ ≥ 0.01 that only happens when it is degenerate. ``Factors.damping`` reports the λ used.
    """
    W64 = as_float64(W, name)
    damping = DEFAULT_DAMPING
    while damping <= MAX_DAMPING:
        try:
            return _svd_of_context_product(W64, make_context(damping), want)
        except _NotPositiveDefinite:
            damping *= 2
    raise SvdadaptError(f"covariance of {name} could not be regularised (damping reached {MAX_DAMPING})")


def plain_svd(W: torch.Tensor, name: str = "layer") -> Factors:
    """SVD of W itself (PiSSA, MiLoRA, KaSA's truncation)."""
    return factorize(W, lambda _: identity_context(), name)


def asvd(W: torch.Tensor, mean_abs: torch.Tensor, alpha: float = ASVD_ALPHA, name: str = "layer") -> Factors:
    """Activation-aware SVD: scale input channel j by mean|x_j|^α + 1e-6, SVD, unscale."""
    return factorize(W, lambda _: activation_context(mean_abs, alpha), name)


def context_svd(W: torch.Tensor, C: torch.Tensor, name: str = "layer") -> Factors:
    """CorDA's context-oriented decomposition: SVD of W·C' (C' the damped covariance), V = C'⁻¹Ĥ."""
    return factorize(W, lambda damping: covariance_context(C, damping, name), name)


@dataclass(frozen=True)
class Decomposition:
    """A row of :data:`DECOMPOSITIONS`: the statistic it needs and either the context K of an SVD of
    W·K (a decomposition of all of W, which ``compress`` can sweep), or ``unit``: a decomposer made
    from one unit's statistic for rows that take components from the inputs' spectrum
    (:mod:`svdadapt.input_spaces`)."""

    name: str
    needs: str | None  # a key of svdadapt.build.waves.STATISTICS, or None
    context: Callable[[torch.Tensor | None, float, str], Context] | None = None  # (statistic, λ, name)
    unit: Callable[[torch.Tensor | None, str], Decomposer] | None = None  # (statistic, unit name)

    @property
    def whole(self) -> bool:
        """Whether it decomposes all of W (W = U diag(S) Vᵀ), as compression needs."""
        return self.context is not None


DECOMPOSITIONS = {
    d.name: d
    for d in (
        Decomposition("plain", None, lambda _stat, _damping, _name: identity_context()),
        Decomposition("asvd", "mean_abs", lambda stat, _damping, _name: activation_context(stat)),
        Decomposition("context", "covariance", covariance_context),
        Decomposition("inputs", "centred_covariance", unit=principal_inputs),  # EVA
        Decomposition("null", "covariance", unit=null_space),  # LoRA-Null
    )
}


def decomposer(row: Decomposition, statistic: torch.Tensor | None, name: str) -> Decomposer:
    """How the layers of one unit (reading one input, whose statistic is ``statistic``) are decomposed."""
    if row.unit is not None:
        return row.unit(statistic, name)
    make = shared_contexts(row, statistic, name)
    return lambda W, layer, want: factorize(W, make, layer, want)


def shared_contexts(row: Decomposition, statistic: torch.Tensor | None, name: str) -> Callable[[float], Context]:
    """``make_context`` for :func:`factorize`, shared by the layers of one unit (layers reading one
    input): K is built once per damping — one damped covariance and one Cholesky factor per group —
    and safe to call from parallel workers."""
    cache: dict[float, Context] = {}
    lock = threading.Lock()

    def make(damping: float) -> Context:
        with lock:
            if damping not in cache:
                cache[damping] = row.context(statistic, damping, name)
            return cache[damping]

    return make
