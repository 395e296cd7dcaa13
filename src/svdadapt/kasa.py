"""KaSA's training regularizers (paper Eq. 9-11), summed over every adapter with a ΔΣ vector:

    β · Σ_layers ‖ΔΣ‖²  +  γ · Σ_layers (‖BᵀB − I_r‖_F + ‖AAᵀ − I_r‖_F)

with r×r Gram matrices, as the paper writes it and as PEFT 0.21's ``_get_kasa_loss`` computes it.
The reference repository instead built d×d Grams (BBᵀ, AᵀA against I_d) and averaged over layers,
which makes the orthogonality term scale with the hidden size and swamp the task loss; svdadapt
follows the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .adapters.module import LowRank
from .errors import SvdadaptError


@dataclass
class KasaTerms:
    singular: torch.Tensor  # Σ ‖ΔΣ‖²
    orthogonal: torch.Tensor  # Σ ‖BᵀB − I‖_F + ‖AAᵀ − I‖_F
    layers: int


def kasa_adapters(model: nn.Module) -> list[LowRank]:
    return [m for m in model.modules() if isinstance(m, LowRank) and m.lora_diag is not None]


def kasa_terms(model: nn.Module) -> KasaTerms | None:
    """The two regularizer sums over the model's KaSA adapters (None if it has none), in float32."""
    adapters = kasa_adapters(model)
    if not adapters:
        return None
    singular = orthogonal = 0.0
    for adapter in adapters:
        A = adapter.lora_A.weight.float()  # (r, in)
        B = adapter.lora_B.weight.float()  # (out, r)
        eye = torch.eye(A.shape[0], device=A.device)
        singular = singular + adapter.lora_diag.float().pow(2).sum()
        orthogonal = orthogonal + torch.linalg.norm(B.T @ B - eye) + torch.linalg.norm(A @ A.T - eye)
    return KasaTerms(singular, orthogonal, len(adapters))


def check_coefficients(beta: float, gamma: float) -> None:
    if beta < 0:
        raise SvdadaptError(f"--beta must be non-negative, got {beta}")
    if gamma < 0:
        raise SvdadaptError(f"--gamma must be non-negative, got {gamma}")
