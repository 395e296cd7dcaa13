"""Training loss terms a method row adds to the task's loss: the registered losses.

A loss computes named terms over the model's trainable adapters; each term is weighted by one of
the method row's train parameters (KaSA's ``beta``, ``gamma``: ``svdadapt train --beta`` ...). A new
regularizer is one more :class:`Loss` (:func:`register_loss`).

KaSA's regularizers (paper Eq. 9-11), summed over every adapter:

    β · Σ_layers ‖ΔΣ‖²  +  γ · Σ_layers (‖BᵀB − I_r‖_F + ‖AAᵀ − I_r‖_F)

with r×r Gram matrices, as the paper writes it and as PEFT 0.21's ``_get_kasa_loss`` computes it.
The reference repository instead built d×d Grams (BBᵀ, AᵀA against I_d) and averaged over layers,
which makes the orthogonality term scale with the hidden size and swamp the task loss; svdadapt
follows the paper.

LoRA's optional L2 penalty on its weight change (the lora row's ``l2_init``, off by default):

    λ · Σ_layers ‖B A‖²_F

B starts at zero, so B·A is the layer's change from its init up to the scale α/r (which λ absorbs);
computed from r×r Grams as Σ (BᵀB) ⊙ (AAᵀ), never forming the out×in product.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .module import LowRank


def trainable_adapters(model: nn.Module) -> list[LowRank]:
    """The model's adapters whose parameters train."""
    return [m for m in model.modules() if isinstance(m, LowRank) and m.lora_A.weight.requires_grad]


def kasa_terms(adapters: list[LowRank]) -> dict[str, torch.Tensor]:
    """Σ ‖ΔΣ‖² and Σ (‖BᵀB − I‖_F + ‖AAᵀ − I‖_F) over ``adapters``, in float32."""
    singular = orthogonal = torch.zeros(())
    for adapter in adapters:
        A = adapter.lora_A.weight.float()  # (r, in)
        B = adapter.lora_B.weight.float()  # (out, r)
        eye = torch.eye(A.shape[0], device=A.device)
        singular = singular.to(A.device) + adapter.lora_diag.float().pow(2).sum()
        orthogonal = orthogonal.to(A.device) + torch.linalg.norm(B.T @ B - eye) + torch.linalg.norm(A @ A.T - eye)
    return {"kasa_singular": singular, "kasa_orthogonal": orthogonal}


def weight_change_terms(adapters: list[LowRank]) -> dict[str, torch.Tensor]:
    """Σ ‖B A‖²_F over ``adapters`` (= Σ (BᵀB) ⊙ (AAᵀ), r×r), in float32."""
    total = torch.zeros(())
    for adapter in adapters:
        A = adapter.lora_A.weight.float()  # (r, in)
        B = adapter.lora_B.weight.float()  # (out, r)
        total = total.to(A.device) + ((B.T @ B) * (A @ A.T)).sum()
    return {"weight_change": total}


@dataclass(frozen=True)
class Loss:
    """Named terms over the trainable adapters, each weighted by the method row's train parameter
    named in ``weights``."""

    name: str
    terms: Callable[[list[LowRank]], dict[str, torch.Tensor]]
    weights: dict[str, str]  # term -> the row's parameter that weighs it
    needs_diag: bool = False  # the adapters must have a ΔΣ vector

    def regularizer(self, values: dict[str, float]) -> Regularizer | None:
        """This loss with its weights read from the row's parameter ``values``; None when every weight
        is zero (e.g. the lora row's ``l2_init`` left at 0): it would add nothing, so it costs nothing."""
        weights = {term: float(values[param]) for term, param in self.weights.items()}
        return Regularizer(self, weights) if any(weights.values()) else None


@dataclass(frozen=True)
class Regularizer:
    """A loss with its weights: what the trainer adds to the task loss."""

    loss: Loss
    weights: dict[str, float]

    def __call__(self, model: nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
        """(Σ weight · term, each term's value for the log) over the model's trainable adapters."""
        return self.over(trainable_adapters(model))

    def over(self, adapters: list) -> tuple[torch.Tensor, dict[str, float]]:
        """The same over ``adapters``: anything with ``lora_A.weight``, ``lora_B.weight`` and, for
        losses that need it, ``lora_diag`` (svdadapt's layers, or views of PEFT's)."""
        terms = self.loss.terms(adapters)
        total = sum(self.weights[name] * value for name, value in terms.items())
        return total, {name: float(value.detach()) for name, value in terms.items()}


LOSSES: dict[str, Loss] = {}


def register_loss(loss: Loss) -> Loss:
    """Add a loss a method row can name; returns it."""
    LOSSES[loss.name] = loss
    return loss


register_loss(Loss("kasa", kasa_terms, {"kasa_singular": "beta", "kasa_orthogonal": "gamma"}, needs_diag=True))
register_loss(Loss("l2-init", weight_change_terms, {"weight_change": "l2_init"}))
