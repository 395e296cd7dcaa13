"""Decompositions W = U diag(S) Vᵀ of a weight (out, in): plain SVD, ASVD, context-oriented SVD.

Each is an SVD of a "context" product M = W·K for an invertible (in, in) K — identity (plain),
diag(s) (ASVD), damped covariance C' (CorDA) — with V = K⁻¹Ĥ so that W = U diag(S) Vᵀ exactly,
whatever K is; V is not orthonormal unless K is the identity.

All arithmetic runs in float64. The SVD of M is taken from the eigendecomposition of its smaller
Gram matrix (MMᵀ or MᵀM), 2-3x faster than LAPACK's SVD at these shapes, and the other factor follows
from W itself, so the reconstruction holds to float64 rounding by construction. When M is so
ill-conditioned (σ_min/σ_max < 1e-6) that squaring would blur its smallest components, a full SVD
is used instead. K⁻¹ is never formed: C' is Cholesky-factored and solved against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import SvdadaptError

GRAM_SAFE_RATIO = 1e-6  # below this σ_min/σ_max, use a full SVD
DEFAULT_DAMPING = 0.01  # λ in C' = C + λ·mean(diag C)·I, as PEFT starts it
MAX_DAMPING = 1e4
ASVD_ALPHA = 0.5


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

    def drop_bottom(self, r: int) -> Factors:
        """All but the r smallest components."""
        return self.top(self.S.shape[0] - r)

    def product(self) -> torch.Tensor:
        """U diag(S) Vᵀ, (out, in)."""
        return (self.U * self.S) @ self.V.T


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


def covariance_context(C: torch.Tensor, damping: float = DEFAULT_DAMPING, name: str = "layer") -> Context:
    """CorDA's K = C' = C + λ·mean(diag C)·I. Its Cholesky factor is computed only if a solve needs it
    (layers with out ≤ in never do), once, and shared by every layer decomposed with this context."""
    C = C.detach().to(torch.float64)
    if not bool(torch.isfinite(C).all()):
        raise SvdadaptError(f"covariance of {name} has non-finite values; recalibrate")
    scale = torch.diagonal(C).mean()
    if not scale > 0:
        raise SvdadaptError(f"covariance of {name} is zero: calibration never reached this layer")
    damped = C + (damping * scale) * torch.eye(C.shape[0], dtype=C.dtype, device=C.device)
    factor: list[torch.Tensor] = []

    def solve(X: torch.Tensor) -> torch.Tensor:
        if not factor:
            L, info = torch.linalg.cholesky_ex(damped)
            if int(info) != 0:
                raise _NotPositiveDefinite
            factor.append(L)
        return torch.cholesky_solve(X, factor[0])

    return Context(apply=lambda W: W @ damped.to(W.device), solve=solve, damping=damping)


def _svd_of_context_product(W: torch.Tensor, context: Context) -> Factors:
    """U, S, V with W = U diag(S) Vᵀ from the SVD of M = W·K (W float64, (out, in))."""
    out_f, in_f = W.shape
    M = context.apply(W)  # (out, in)
    if out_f <= in_f:
        eigvals, Q = torch.linalg.eigh(M @ M.T)  # (out,), (out, out), ascending
        S = eigvals.flip(0).clamp_min(0).sqrt()
        U = Q.flip(1)  # (out, out)
        if S[-1] > GRAM_SAFE_RATIO * S[0]:
            return Factors(U, S, (W.T @ U) / S, context.damping)  # W = U Uᵀ W = U S (Wᵀ U S⁻¹)ᵀ
    else:
        eigvals, Q = torch.linalg.eigh(M.T @ M)  # (in,), (in, in), ascending
        S = eigvals.flip(0).clamp_min(0).sqrt()
        H = Q.flip(1)  # (in, in)
        if S[-1] > GRAM_SAFE_RATIO * S[0]:
            return Factors((M @ H) / S, S, context.solve(H), context.damping)  # U S Vᵀ = M H Hᵀ K⁻¹ = W
    U, S, Hh = torch.linalg.svd(M, full_matrices=False)
    return Factors(U, S, context.solve(Hh.T), context.damping)


def as_float64(W: torch.Tensor, name: str = "layer") -> torch.Tensor:
    """W in float64, refusing non-finite weights with a message naming the layer."""
    W = W.detach().to(torch.float64)
    if not bool(torch.isfinite(W).all()):
        raise SvdadaptError(f"weight of {name} has non-finite values (inf/nan); the model is damaged")
    return W


def factorize(W: torch.Tensor, make_context: Callable[[float], Context], name: str = "layer") -> Factors:
    """W = U diag(S) Vᵀ through the SVD of W·K, in float64, with K = make_context(λ).

    λ starts at PEFT's 0.01 and doubles while K fails to factor — for a covariance in float64 with
    λ ≥ 0.01 that only happens when it is degenerate. ``Factors.damping`` reports the λ used.
    """
    W64 = as_float64(W, name)
    damping = DEFAULT_DAMPING
    while damping <= MAX_DAMPING:
        try:
            return _svd_of_context_product(W64, make_context(damping))
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
    """A row of :data:`DECOMPOSITIONS`: the statistic it needs and how it builds its context."""

    name: str
    needs: str | None  # "covariance", "mean_abs" or None
    context: Callable[[torch.Tensor | None, float, str], Context]  # (statistic, λ, layer name) -> Context


DECOMPOSITIONS = {
    d.name: d
    for d in (
        Decomposition("plain", None, lambda _stat, _damping, _name: identity_context()),
        Decomposition("asvd", "mean_abs", lambda stat, _damping, _name: activation_context(stat)),
        Decomposition("context", "covariance", covariance_context),
    )
}
