"""Initialising one layer's adapter for a method row, and the frozen base it implies."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..decompose import Factors
from ..methods import Method
from .state import LayerAdapter


@dataclass
class RandomInit:
    """The random tensors a layer needs, drawn in model order so threads cannot reorder them."""

    A: torch.Tensor | None = None  # (r, in), Kaiming-uniform(a=√5) as PEFT's LoRA
    diag: torch.Tensor | None = None  # (r,), N(0, 1) as KaSA


def draw_random(method: Method, rank: int, in_features: int, generator: torch.Generator) -> RandomInit:
    if method.init != "lora":
        return RandomInit()
    bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform_(a=√5): sqrt(6 / ((1 + 5) · fan_in))
    A = (torch.rand(rank, in_features, generator=generator, dtype=torch.float64) * 2 - 1) * bound
    diag = torch.randn(rank, generator=generator, dtype=torch.float64) if method.diag else None
    return RandomInit(A, diag)


def _taken(method: Method, factors: Factors, rank: int) -> Factors:
    return factors.top(rank) if method.components == "top" else factors.bottom(rank)


def init_layer(
    method: Method,
    W: torch.Tensor,
    factors: Factors | None,
    rank: int,
    alpha: float,
    random: RandomInit,
    dtype: torch.dtype,
) -> tuple[LayerAdapter, torch.Tensor | None]:
    """The layer's adapter (factors cast to ``dtype``) and its new base weight (or None when the
    base stays as it is). ``W`` is the (out, in) weight; ``factors`` its decomposition.

    The new base is computed in one float32 (float64 for float64 weights) multiply-subtract from
    the factors as stored, so base + adapter reproduces W to that precision's rounding."""
    scaling = alpha / rank
    W = W.detach()
    work = torch.float64 if W.dtype == torch.float64 else torch.float32
    if method.init == "svd":
        comp = _taken(method, factors, rank)
        root = (comp.S / scaling).clamp_min(0).sqrt()  # (r,): S ← S/s, split evenly
        A = (root[:, None] * comp.V.T).to(dtype)  # (r, in)
        B = (comp.U * root).to(dtype)  # (out, r)
        # subtract exactly what the stored factors will add back, so init is an identity
        new_base = torch.addmm(W.to(work), B.to(work), A.to(work), alpha=-scaling)  # (out, in)
        adapter = LayerAdapter(A, B, alpha, base_P=B.clone(), base_Q=A.clone(), base_scaling=scaling)
        adapter.damping = comp.damping
        return adapter, new_base
    out_features = W.shape[0]
    A = random.A.to(dtype)
    B = torch.zeros(out_features, rank, dtype=dtype)
    diag = random.diag.to(dtype) if random.diag is not None else None
    if method.base == "truncated":
        dropped = _taken(method, factors, rank)  # the r components removed from the base
        P = dropped.U * dropped.S  # (out, r)
        Q = dropped.V.T  # (r, in)
        adapter = LayerAdapter(A, B, alpha, diag, base_P=P.to(work), base_Q=Q.to(work), damping=dropped.damping)
        return adapter, torch.addmm(W.to(work), adapter.base_P, adapter.base_Q, alpha=-1.0)
    return LayerAdapter(A, B, alpha, diag), None
