"""Adapter tensors, independent of any module: what ``build`` produces and run directories store.

A layer's adapter is ΔW = s·B·diag(d)·A (d only for KaSA), s = α/r, plus what building it changed
in the frozen base: original W = base + c·P·Q. Residual methods have c = s, P = B₀, Q = A₀ (the
initial adapter); KaSA has c = 1, P = U_d S_d, Q = V_dᵀ (the dropped components); LoRA has none.
Keeping P, Q lets ``unload`` restore the original weight and ``export`` write a LoRA against the
untouched model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


def low_rank_delta(A: torch.Tensor, B: torch.Tensor, diag: torch.Tensor | None, scaling: float) -> torch.Tensor:
    """ΔW = s·B·diag(d)·A, (out, in) float64, for A (r, in), B (out, r), d (r,) or None."""
    B = B.double() if diag is None else B.double() * diag.double()
    return scaling * (B @ A.double())


def base_change(P: torch.Tensor | None, Q: torch.Tensor | None, scaling: float) -> torch.Tensor | None:
    """c·P·Q, (out, in) float64: what building took from the original weight (None: nothing)."""
    if P is None:
        return None
    return scaling * (P.double() @ Q.double())


@dataclass
class LayerAdapter:
    A: torch.Tensor  # (r, in)
    B: torch.Tensor  # (out, r)
    alpha: float
    diag: torch.Tensor | None = None  # (r,)
    base_P: torch.Tensor | None = None  # (out, q)
    base_Q: torch.Tensor | None = None  # (q, in)
    base_scaling: float = 1.0  # c in original W = base + c·P·Q
    damping: float | None = None
    frozen_A: bool = False  # A stays as initialised in training (--freeze-a)

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    @property
    def trainable_parameters(self) -> int:
        """Values that train: A (unless frozen), B and ΔΣ."""
        A = 0 if self.frozen_A else self.A.numel()
        return A + self.B.numel() + (0 if self.diag is None else self.diag.numel())

    def to(self, device: torch.device | str) -> LayerAdapter:
        """The same adapter with every tensor on ``device``."""
        move = {k: getattr(self, k) for k in ("A", "B", "diag", "base_P", "base_Q")}
        return replace(self, **{k: v.to(device) for k, v in move.items() if v is not None})

    def folded_B(self) -> torch.Tensor:
        """B·diag(d) (out, r): the plain-LoRA B that gives the same ΔW."""
        return self.B if self.diag is None else self.B * self.diag

    def delta(self) -> torch.Tensor:
        """ΔW = s·B·diag(d)·A as (out, in) float64."""
        return low_rank_delta(self.A, self.B, self.diag, self.scaling)

    def base_change(self) -> torch.Tensor | None:
        """c·P·Q (out, in) float64: what was subtracted from the original weight, if anything."""
        return base_change(self.base_P, self.base_Q, self.base_scaling)


_FIELDS = ("A", "B", "diag", "base_P", "base_Q")


@dataclass
class AdapterSet:
    """Every target layer's adapter, in model order."""

    method: str
    layers: dict[str, LayerAdapter] = field(default_factory=dict)
    conv1d: list[str] = field(default_factory=list)  # layers stored (in, out) like GPT-2's Conv1D

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat ``{"<layer>.<field>": tensor}`` for a safetensors file."""
        flat = {}
        for name, layer in self.layers.items():
            for f in _FIELDS:
                value = getattr(layer, f)
                if value is not None:
                    flat[f"{name}.{f}"] = value.detach().contiguous()
        return flat

    def describe(self) -> dict:
        """JSON-able per-layer facts (rank, alpha, damping; ``frozen_A`` where A is frozen)."""
        return {
            name: {"rank": a.rank, "alpha": a.alpha, "base_scaling": a.base_scaling, "damping": a.damping}
            | ({"frozen_A": True} if a.frozen_A else {})
            for name, a in self.layers.items()
        }

    @classmethod
    def from_tensors(cls, method: str, tensors: dict[str, torch.Tensor], facts: dict, conv1d: list[str]) -> AdapterSet:
        """The adapters of ``facts`` (run.json's layers) from flat tensors; ValueError if any is missing
        or of a shape that does not fit its rank and the others."""
        layers = {}
        for name, info in facts.items():
            parts = {f: tensors.get(f"{name}.{f}") for f in _FIELDS}
            _check_shapes(name, parts, info["rank"])
            extra = {"base_scaling": info.get("base_scaling", 1.0), "damping": info.get("damping"),
                     "frozen_A": info.get("frozen_A") is True}  # fmt: skip
            layers[name] = LayerAdapter(alpha=info["alpha"], **extra, **parts)
        return cls(method, layers, list(conv1d))


def _check_shapes(name: str, parts: dict[str, torch.Tensor | None], rank: int) -> None:
    A, B, diag, P, Q = (parts[f] for f in _FIELDS)
    if A is None or B is None:
        raise ValueError(f"layer {name} has no {'A' if A is None else 'B'}")
    fits = A.dim() == 2 and B.dim() == 2 and A.shape[0] == rank and B.shape[1] == rank
    fits = fits and (diag is None or tuple(diag.shape) == (rank,))
    if (P is None) != (Q is None):
        fits = False
    elif P is not None:
        same_q = P.dim() == 2 and Q.dim() == 2 and P.shape == (B.shape[0], Q.shape[0])
        fits = fits and same_q and Q.shape[1] == A.shape[1]
    if not fits:
        shapes = {f: tuple(t.shape) for f, t in parts.items() if t is not None}
        raise ValueError(f"layer {name} of rank {rank} has tensors of shapes {shapes} that do not fit together")
