"""The trainable adapter module: a frozen base layer plus named low-rank adapters.

``AdapterLinear`` wraps an ``nn.Linear`` or ``Conv1D`` (kept as ``base_layer``, as PEFT names it)
and adds ``s·B·diag(d)·A·x`` for each active adapter. Several adapters can sit on one layer — e.g.
a KaSA adapter next to a LoRA — and each remembers what it changed in the base (c·P·Q), so
unloading restores the original weight.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import backend
from ..errors import SvdadaptError
from ..linalg import add_low_rank
from ..targets import in_out_features, set_weight_matrix, weight_matrix
from .state import LayerAdapter, low_rank_delta


class LowRank(nn.Module):
    """ΔW = s·B·diag(d)·A with A (r, in), B (out, r) as ``lora_A``/``lora_B`` and d as ``lora_diag``."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float = 0.0,
                 diag: bool = False, dtype: torch.dtype = torch.float32, device=None) -> None:  # fmt: skip
        super().__init__()
        self.scaling = alpha / rank
        self.alpha = alpha
        self.lora_A = nn.Linear(in_features, rank, bias=False, dtype=dtype, device=device)
        self.lora_B = nn.Linear(rank, out_features, bias=False, dtype=dtype, device=device)
        self.lora_diag = nn.Parameter(torch.ones(rank, dtype=dtype, device=device)) if diag else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.base_scaling = 1.0
        self.frozen_A = False  # A stays as initialised in training
        self.register_buffer("base_P", None)  # (out, q): original W = base + c·P·Q
        self.register_buffer("base_Q", None)  # (q, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lora_A(self.dropout(x))  # (..., r)
        # s (and ΔΣ) scale the r-wide middle, not the out-wide result: the same product, less work
        scale = self.scaling if self.lora_diag is None else self.lora_diag * self.scaling  # () or (r,)
        return self.lora_B(h * scale)  # (..., out)

    def add_to(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """y + ΔW·x for the base layer's output y (..., out): the sum is the B product's own
        accumulation (one addmm), not a separate pass over an out-wide tensor."""
        h = self.lora_A(self.dropout(x.to(self.lora_A.weight.dtype)))  # (..., r)
        if self.lora_diag is not None:
            h = h * self.lora_diag
        B = self.lora_B.weight  # (out, r)
        if y.dtype != B.dtype:  # e.g. a bf16 base under a float32 adapter
            return y + self.lora_B(h * self.scaling).to(y.dtype)
        flat = torch.addmm(y.reshape(-1, B.shape[0]), h.reshape(-1, B.shape[1]), B.T, alpha=self.scaling)
        return flat.view(y.shape)  # (..., out)

    def delta_weight(self) -> torch.Tensor:
        """(out, in) float64 ΔW."""
        return low_rank_delta(self.lora_A.weight, self.lora_B.weight, self.lora_diag, self.scaling)

    def added_to(self, W: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
        """W ± s·B·diag(ΔΣ)·A (out, in), in float64."""
        B = self.lora_B.weight.double()  # (out, r)
        B = B if self.lora_diag is None else B * self.lora_diag.double()
        return add_low_rank(W, B, self.lora_A.weight, sign * self.scaling, torch.float64)

    @torch.no_grad()
    def load(self, state: LayerAdapter) -> None:
        self.lora_A.weight.copy_(state.A)
        self.lora_B.weight.copy_(state.B)
        if self.lora_diag is not None and state.diag is not None:
            self.lora_diag.copy_(state.diag)
        if state.base_P is not None:
            self.base_P, self.base_Q = state.base_P.clone(), state.base_Q.clone()
            self.base_scaling = state.base_scaling
        self.frozen_A = state.frozen_A

    def state(self) -> LayerAdapter:
        """The current values as adapter tensors (detached copies)."""
        diag = None if self.lora_diag is None else self.lora_diag.detach().clone()
        return LayerAdapter(
            self.lora_A.weight.detach().clone(), self.lora_B.weight.detach().clone(), self.alpha, diag,
            self.base_P, self.base_Q, self.base_scaling, frozen_A=self.frozen_A,
        )  # fmt: skip


class AdapterLinear(nn.Module):
    """A frozen linear-like layer with adapters added to its output."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapters = nn.ModuleDict()
        self.active: list[str] = []
        self.merged: list[str] = []
        for p in base_layer.parameters():
            p.requires_grad_(False)

    @property
    def weight(self) -> torch.Tensor:  # so code reading `.weight` of a target keeps working
        return self.base_layer.weight

    def add(self, name: str, state: LayerAdapter, dropout: float = 0.0, dtype: torch.dtype | None = None) -> LowRank:
        in_f, out_f = in_out_features(self.base_layer)
        dtype = dtype or state.A.dtype
        module = LowRank(in_f, out_f, state.rank, state.alpha, dropout, state.diag is not None, dtype,
                         self.base_layer.weight.device)  # fmt: skip
        module.load(state)
        self.adapters[name] = module
        self.active.append(name)
        return module

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)
        for name in self.active:
            if name not in self.merged:
                y = self.adapters[name].add_to(y, x)
        return y

    @torch.no_grad()
    def merge(self, names: list[str] | None = None) -> None:
        """Fold adapters into the base weight (float64 sum, cast once); a quantized base cannot take
        them (dequantize it first, as ``svdadapt merge`` does)."""
        if backend.is_quantized_layer(self.base_layer):
            raise SvdadaptError("cannot merge an adapter into a quantized layer: dequantize the base first")
        for name in names or self.active:
            if name in self.merged:
                continue
            W = weight_matrix(self.base_layer)
            set_weight_matrix(self.base_layer, self.adapters[name].added_to(W))
            self.merged.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        for name in reversed(self.merged):
            W = weight_matrix(self.base_layer)
            set_weight_matrix(self.base_layer, self.adapters[name].added_to(W, -1.0))
        self.merged.clear()

    @torch.no_grad()
    def restore_base(self) -> None:
        """Add back what every adapter's build took from the base: the original weight again."""
        for adapter in self.adapters.values():
            if adapter.base_P is not None:  # (out, q), (q, in)
                W = weight_matrix(self.base_layer)
                added = add_low_rank(W, adapter.base_P, adapter.base_Q, adapter.base_scaling, torch.float64)
                set_weight_matrix(self.base_layer, added)
