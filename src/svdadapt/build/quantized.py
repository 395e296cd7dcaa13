"""A quantized base as a parameter of the build: each layer's frozen base quantized, the adapter
chosen for it.

Per layer, after the method row's init: the weight the row's base and adapter represent at init
(W itself; a truncating row's truncated W) goes with the row's factors (B, A) to
:func:`svdadapt.quantize.quantized_factors`:

- ``plain``: the row's base quantized as it is (QPiSSA, QCorDA, ...; for lora/eva, B = 0: QLoRA);
- ``refine`` (``--quant-iters K``): LoftQ-style alternation from the row's own factors;
- ``cloq`` (the ``cloq`` row): CLoQ's closed form from the layer's input covariance.

It returns the dequantized base Q (exactly the values bitsandbytes stores, so saving it and letting
bitsandbytes quantize it reproduces those codes) and the adapter's new B, A. The adapter records
B, A as what it took from the base (W ≈ Q + s·B·A), as residual rows do.

Layers bitsandbytes does not quantize (``backend.quantizable``: GPT-2's Conv1D, 4-bit layers whose
rows are not whole blocks of 64) keep the row's float base and adapter.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

import torch

from ..adapters.init import Base
from ..adapters.state import LayerAdapter
from ..methods import Method
from ..quantize import InputRoot, input_root, quantized_factors


@dataclass(frozen=True)
class Quantization:
    """How a build quantizes its base: ``kind`` (nf4, fp4, int8), ``how`` (plain, refine, cloq) and
    the rounds of refinement."""

    kind: str
    how: str
    iters: int

    @staticmethod
    def of(method: Method, kind: str | None, iters: int) -> Quantization | None:
        """The quantization a build of ``method`` with ``--quantize kind --quant-iters iters`` makes."""
        if kind is None:
            return None
        if method.quantized_init is not None:  # its closed form is one round; more rounds refine it
            return Quantization(kind, method.quantized_init, max(iters, 1))
        return Quantization(kind, "refine" if iters > 0 else "plain", iters)

    @property
    def needs_statistic(self) -> bool:
        return self.how == "cloq"

    def record(self) -> dict:
        return {"kind": self.kind, "how": self.how, "iters": self.iters}


@dataclass
class QuantizedBase:
    """One layer's quantized base (out, in), its adapter and the errors of Ŵ = Q + s·B·A against the
    weight it stands for: relative Frobenius, and weighted by the inputs where C was given."""

    base: torch.Tensor
    adapter: LayerAdapter
    error: float
    weighted_error: float | None


class SharedInputs:
    """The layers' input covariances C until each layer is quantized, with the root R of C (C' = R Rᵀ,
    one float64 eigendecomposition) made once for the layers that read one input and dropped when
    the last of them is done; safe from parallel workers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, torch.Tensor] = {}  # layer → its unit's C
        self._roots: dict[int, InputRoot] = {}  # id(C) → R
        self._waiting: dict[int, int] = {}  # id(C) → layers not yet quantized

    def hold(self, name: str, covariance: torch.Tensor | None) -> None:
        if covariance is None:
            return
        with self._lock:
            self._held[name] = covariance
            self._waiting[id(covariance)] = self._waiting.get(id(covariance), 0) + 1

    def take(self, name: str) -> tuple[torch.Tensor | None, InputRoot | None]:
        """Layer ``name``'s C and R (None, None when it holds none)."""
        with self._lock:
            C = self._held.pop(name, None)
            if C is None:
                return None, None
            key = id(C)
            if key not in self._roots:
                self._roots[key] = input_root(C)
            root = self._roots[key]
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key], self._roots[key]
            return C, root


def quantize_layer(
    quantization: Quantization,
    method: Method,
    W: torch.Tensor,
    base: torch.Tensor | None,
    adapter: LayerAdapter,
    covariance: torch.Tensor | None,
    root: InputRoot | None = None,
) -> QuantizedBase:
    """The layer's quantized base and adapter. ``W`` (out, in): the original weight; ``base``: the
    row's float base (None: W); ``covariance``: the layer's input C (in, in), for cloq, with its
    ``root`` shared by the layers reading that input."""
    target = (base if method.base is Base.TRUNCATED and base is not None else W).detach()  # (out, in): at init
    layer = quantized_factors(
        target, adapter.B, adapter.A, adapter.scaling, quantization.kind, how=quantization.how,
        iters=quantization.iters, covariance=covariance, root=root,
    )  # fmt: skip
    B, A = layer.b.to(adapter.B.dtype), layer.a.to(adapter.A.dtype)  # (out, r), (r, in)
    if method.base is Base.TRUNCATED:  # B = 0 stays 0: what the base dropped is still the dropped components
        new = replace(adapter, A=A, B=B)
    elif bool(B.abs().max() > 0):  # W ≈ Q + s·B·A: unloading puts s·B·A back
        new = replace(adapter, A=A, B=B, base_P=B.clone(), base_Q=A.clone(), base_scaling=adapter.scaling)
    else:  # QLoRA: the adapter adds nothing at init, the base is Q(W)
        new = replace(adapter, A=A, B=B, base_P=None, base_Q=None)
    weighted = None if layer.weighted_error is None else float(layer.weighted_error)
    return QuantizedBase(layer.base, new, float(layer.error), weighted)
