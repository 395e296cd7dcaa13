"""How far a quantized layer is from its float weight: relative Frobenius error, and the error on
the calibration inputs ‖(W − Ŵ)·C^{1/2}‖ / ‖W·C^{1/2}‖ for their covariance C = XᵀX/n (in, in).

The weighted error is computed as √(tr(D C Dᵀ) / tr(W C Wᵀ)), D = W − Ŵ, so no square root of C is
formed; everything in float64.
"""

from __future__ import annotations

import math

import torch


def relative_error(W: torch.Tensor, W_hat: torch.Tensor) -> float:
    """‖W − Ŵ‖_F / ‖W‖_F in float64 (0 for W = 0 = Ŵ)."""
    W64 = W.detach().to(torch.float64)
    D = W64 - W_hat.detach().to(torch.float64)  # (out, in)
    norm = torch.linalg.matrix_norm(W64).item()
    gap = torch.linalg.matrix_norm(D).item()
    return gap / norm if norm > 0 else (0.0 if gap == 0 else math.inf)


def weighted_error(W: torch.Tensor, W_hat: torch.Tensor, C: torch.Tensor, dtype=torch.float64) -> float:
    """‖(W − Ŵ)·C^{1/2}‖_F / ‖W·C^{1/2}‖_F = √(tr(D C Dᵀ) / tr(W C Wᵀ)), C (in, in); D = W − Ŵ is
    formed in float64 and the products taken in ``dtype`` (float32: ~1e-6 relative, to rank candidates)."""
    W64 = W.detach().to(torch.float64)
    D = (W64 - W_hat.detach().to(torch.float64)).to(dtype)  # (out, in)
    W64 = W64.to(dtype)
    C64 = C.detach().to(dtype)  # (in, in)
    gap = max(((D @ C64) * D).sum().item(), 0.0)  # tr(D C Dᵀ); ≥ 0 for C ⪰ 0 up to rounding
    norm = max(((W64 @ C64) * W64).sum().item(), 0.0)
    return math.sqrt(gap / norm) if norm > 0 else (0.0 if gap == 0 else math.inf)
