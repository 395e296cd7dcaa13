"""Initialising one layer's adapter, and the frozen base it implies: the registered inits.

An init is a function of one layer (its weight, the components the method row takes, rank, alpha
and the random tensors drawn for it) that returns the adapter, with what it takes from the frozen
base as the adapter's base change (original W = base + c·P·Q; none when the base stays W). A method
row names its init; a new kind of initialisation is one more function registered here with
:func:`register_init`. :func:`base_without` gives the new base weight from W and the adapter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import torch

from ..decompose import Factors
from ..linalg import add_low_rank
from .state import LayerAdapter


class Base(Enum):
    """What the frozen base becomes."""

    ORIGINAL = "original"  # W, untouched
    RESIDUAL = "residual"  # W − s·B·A: base + adapter = W at init
    TRUNCATED = "truncated"  # W minus the taken components (they are dropped)


@dataclass
class RandomInit:
    """The random tensors a layer needs, drawn in model order so threads cannot reorder them."""

    A: torch.Tensor | None = None  # (r, in), Kaiming-uniform(a=√5) as PEFT's LoRA
    diag: torch.Tensor | None = None  # (r,), N(0, 1) as KaSA


@dataclass
class LayerInit:
    """What an init function gets for one layer."""

    W: torch.Tensor  # (out, in)
    taken: Factors | None  # the r components the method row takes, or None
    rank: int
    alpha: float
    random: RandomInit
    dtype: torch.dtype  # of the adapter's tensors
    base: Base  # what the method row leaves in the base
    params: dict = field(default_factory=dict)  # the row's build parameters (its own, e.g. {"rho": 2.0})

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    @property
    def work_dtype(self) -> torch.dtype:
        """float64 for float64 weights, else float32: the precision of the new base's arithmetic."""
        return torch.float64 if self.W.dtype == torch.float64 else torch.float32


InitFunction = Callable[[LayerInit], LayerAdapter]


@dataclass(frozen=True)
class Init:
    """A registered init: its function, the bases it can leave, whether it draws A at random, whether
    it seeds A from the weights or data (then ``freeze_a`` can keep that A fixed), and whether it
    uses a ΔΣ vector drawn for it (``layer.random.diag``: rows with ``diag=True`` need one that does)."""

    name: str
    make: InitFunction
    bases: tuple[Base, ...]
    random_A: bool = False
    seeded_A: bool = False
    draws_diag: bool = False


INITS: dict[str, Init] = {}


def register_init(
    name: str, bases: tuple[Base, ...], random_A: bool = False, seeded_A: bool = False, draws_diag: bool = False
) -> Callable[[InitFunction], InitFunction]:
    """Register an init function under ``name`` (a method row's ``init``)."""

    def register(make: InitFunction) -> InitFunction:
        INITS[name] = Init(name, make, bases, random_A, seeded_A, draws_diag)
        return make

    return register


def draw_random(init: str, diag: bool, rank: int, in_features: int, generator: torch.Generator) -> RandomInit:
    """The random tensors a layer of a row with ``init`` (and ``diag``) needs, from ``generator``:
    A first, then ΔΣ."""
    drawn = RandomInit()
    if INITS[init].random_A:
        bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform_(a=√5): sqrt(6 / ((1 + 5) · fan_in))
        drawn.A = (torch.rand(rank, in_features, generator=generator, dtype=torch.float64) * 2 - 1) * bound
    if diag and INITS[init].draws_diag:
        drawn.diag = torch.randn(rank, generator=generator, dtype=torch.float64)  # (r,)
    return drawn


@register_init("svd", bases=(Base.RESIDUAL,), seeded_A=True)
def components_init(layer: LayerInit) -> LayerAdapter:
    """The adapter holds the taken components, A = √(S/s) Vᵀ, B = U √(S/s), and the base gives up
    exactly s·B·A as stored, so that base + adapter reproduces W (an identity at init)."""
    comp, scaling = layer.taken, layer.scaling
    root = (comp.S / scaling).clamp_min(0).sqrt()  # (r,): S ← S/s, split evenly
    A = (root[:, None] * comp.V.T).to(layer.dtype)  # (r, in)
    B = (comp.U * root).to(layer.dtype)  # (out, r)
    return LayerAdapter(A, B, layer.alpha, base_P=B.clone(), base_Q=A.clone(), base_scaling=scaling,
                        damping=comp.damping)  # fmt: skip


@register_init("lora", bases=(Base.ORIGINAL, Base.TRUNCATED), random_A=True, draws_diag=True)
def lora_init(layer: LayerInit) -> LayerAdapter:
    """A Kaiming-uniform, B = 0 (and ΔΣ ~ N(0, 1) where drawn): the adapter adds nothing at init. On a
    truncated base the taken components are dropped from W and kept as P = U_d S_d, Q = V_dᵀ."""
    out_features = layer.W.shape[0]
    A = layer.random.A.to(layer.dtype)
    B = torch.zeros(out_features, layer.rank, dtype=layer.dtype)
    diag = layer.random.diag.to(layer.dtype) if layer.random.diag is not None else None
    if layer.base is not Base.TRUNCATED:
        return LayerAdapter(A, B, layer.alpha, diag)
    dropped, work = layer.taken, layer.work_dtype
    P = (dropped.U * dropped.S).to(work)  # (out, r)
    Q = dropped.V.T.to(work)  # (r, in)
    return LayerAdapter(A, B, layer.alpha, diag, base_P=P, base_Q=Q, damping=dropped.damping)


@register_init("eva", bases=(Base.ORIGINAL,), seeded_A=True)
def eva_init(layer: LayerInit) -> LayerAdapter:
    """EVA: A = the taken directions' Vᵀ (r, in) — the inputs' top principal directions — and B = 0,
    so the adapter adds nothing at init and W stays the base."""
    A = layer.taken.V.T.to(layer.dtype)  # (r, in)
    B = torch.zeros(layer.W.shape[0], layer.rank, dtype=layer.dtype)  # (out, r)
    return LayerAdapter(A, B, layer.alpha)


def base_without(W: torch.Tensor, adapter: LayerAdapter) -> torch.Tensor | None:
    """The new base weight, W − c·P·Q (out, in), or None when the adapter took nothing from W. One
    multiply-subtract in float32 (float64 for float64 weights) from the factors as stored, so that
    the base plus what the adapter adds back reproduces W to that precision's rounding."""
    if adapter.base_P is None:
        return None
    work = torch.float64 if W.dtype == torch.float64 else torch.float32
    return add_low_rank(W, adapter.base_P, adapter.base_Q, -adapter.base_scaling, work)  # P (out, q), Q (q, in)
