"""A layer's quantized base and adapter: W ≈ Q + s·B·A with Q on bitsandbytes' grid.

Given a layer's weight W (out, in), the factors B (out, r), A (r, in) and scale s the method's build
gives it (W = residual + s·B·A for residual rows; B = 0 for lora and eva), choose Q and B, A:

- ``plain``: Q = qd(W − s·B·A), the method's residual quantized; B, A unchanged (QLoRA for lora,
  QPiSSA for pissa, ...).
- ``refine``: ``iters`` rounds of LoftQ's alternation from the method's own factors: Q = qd(W − s·B·A),
  then B, A = the best rank-r approximation of (W − Q)/s (singular values split evenly, as PiSSA).
- ``cloq``: the same rounds with CLoQ's refit, B, A minimising ‖(W − Q − s·B·A)·C^{1/2}‖ for the
  calibration covariance C (:mod:`.cloq`); ``iters=1`` is CLoQ itself.

Every (Q, B, A) met is scored (refine: relative Frobenius error; cloq: the input-weighted error) and
the best is kept, so neither is ever worse than ``plain``. All arithmetic in float64, but for the
(out, in)·(in, in) product that ranks cloq's candidates (float32: ~1e-6 relative, far below the
gaps between candidates; the error reported is recomputed in float64).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..decompose import DEFAULT_DAMPING, factorize, identity_context
from ..errors import SvdadaptError, require, unknown
from ..factors import Take
from ..linalg import all_finite
from .cloq import InputRoot, input_root, weighted_best_rank
from .codes import BLOCK, quantize_dequantize
from .measure import relative_error, weighted_error

HOWS = ("plain", "refine", "cloq")
MAX_ITERS = 100


@dataclass
class QuantizedLayer:
    """Q (the dequantized base) and the adapter: Q + scale·b·a approximates W."""

    base: torch.Tensor  # (out, in) float32: exactly what bitsandbytes stores, dequantized
    b: torch.Tensor  # (out, r) float64
    a: torch.Tensor  # (r, in) float64
    error: float  # ‖W − Q − s·b·a‖_F / ‖W‖_F
    weighted_error: float | None = None  # ‖(W − Q − s·b·a)·C^{1/2}‖ / ‖W·C^{1/2}‖, when C is given
    rounds: int = 0  # the round whose iterate was kept (0: the method's own factors)
    scores: list[float] = field(default_factory=list)  # the score of every iterate met, in order


def best_rank(E: torch.Tensor, rank: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """B (out, r), A (r, in) with s·B·A the best rank-r approximation of E, B = U √(S/s), A = √(S/s) Vᵀ."""
    top = factorize(E, lambda _: identity_context(), "quantization residual", want=(Take.TOP, rank))
    half = (top.S / scale).clamp_min(0).sqrt()  # (r,)
    return top.U * half, half[:, None] * top.V.T


def quantized_factors(
    W: torch.Tensor,
    B: torch.Tensor,
    A: torch.Tensor,
    scale: float,
    kind: str,
    how: str = "plain",
    iters: int = 0,
    covariance: torch.Tensor | InputRoot | None = None,
    block: int = BLOCK,
    damping: float = DEFAULT_DAMPING,
    root: InputRoot | None = None,
) -> QuantizedLayer:
    """Q, B, A for one layer (see the module's docstring). ``iters``: the rounds of refine and cloq
    (at least 1; plain makes none and ignores it). ``covariance`` is C (in, in), or only its
    :func:`input_root`; ``cloq`` needs one, the others use C only to report the weighted error. Pass
    C and ``root=input_root(C)`` to share one eigendecomposition between the layers reading one input
    and still score and report on C itself."""
    if how not in HOWS:
        raise unknown("quantized init", how, HOWS)
    require(0 <= iters <= MAX_ITERS, f"quantization rounds must be between 0 and {MAX_ITERS}, got {iters}")
    require(how == "plain" or iters >= 1, f"{how} needs at least one round (iters ≥ 1)")
    require(scale > 0, f"adapter scale must be positive, got {scale}")
    require(W.dim() == 2 and B.shape == (W.shape[0], A.shape[0]) and A.shape[1] == W.shape[1],
            f"factors {tuple(B.shape)} · {tuple(A.shape)} do not fit a weight {tuple(W.shape)}")  # fmt: skip
    for name, t in (("weight", W), ("B", B), ("A", A)):
        require(all_finite(t), f"the layer's {name} has non-finite values")
    W64, B64, A64 = (t.detach().to("cpu", torch.float64) for t in (W, B, A))
    C = covariance if isinstance(covariance, torch.Tensor) else None
    root = covariance if isinstance(covariance, InputRoot) else root
    if how == "cloq":
        require(covariance is not None, "cloq needs the calibration covariance of the layer's input")
        root = root or input_root(C, damping)
    rank = A64.shape[0]
    C32 = C.to(torch.float32) if how == "cloq" and C is not None else None

    def score(Q: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> float:
        W_hat = Q.to(torch.float64) + scale * (b @ a)  # (out, in)
        if how == "cloq" and C is not None:
            return weighted_error(W64, W_hat, C32, torch.float32)
        if how == "cloq":  # only R given: ‖(W − Ŵ) R‖ / ‖W R‖ in the damped weighting
            return relative_error(W64 @ root.root, W_hat @ root.root)
        return relative_error(W64, W_hat)

    Q = quantize_dequantize(W64 - scale * (B64 @ A64), kind, block)  # (out, in) float32
    best = (Q, B64, A64, 0)
    scores = [score(Q, B64, A64)]
    for round_ in range(1, iters + 1 if how != "plain" else 1):
        E = W64 - Q.to(torch.float64)  # (out, in)
        B64, A64 = weighted_best_rank(E, root, rank, scale) if how == "cloq" else best_rank(E, rank, scale)
        for candidate in ((Q, B64, A64), (quantize_dequantize(W64 - scale * (B64 @ A64), kind, block), B64, A64)):
            scores.append(score(*candidate))
            if scores[-1] < min(scores[:-1]):
                best = (*candidate, round_)
        Q = candidate[0]
    Q, b, a, kept = best
    if not (all_finite(Q) and all_finite(b) and all_finite(a)):
        raise SvdadaptError("quantizing the layer gave non-finite values; check its weight and covariance")
    W_hat = Q.to(torch.float64) + scale * (b @ a)
    weighted = weighted_error(W64, W_hat, C) if C is not None else None
    return QuantizedLayer(Q, b, a, relative_error(W64, W_hat), weighted, kept, scores)
