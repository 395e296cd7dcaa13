"""float32 matrix products on CPU through oneDNN where torch's BLAS is the slow one.

torch's CPU wheels multiply float32 matrices with MKL, which runs its AVX2 kernels on CPUs that
are not Intel's; oneDNN (also in the wheel) picks kernels by instruction set, so on an AVX-512 AMD
EPYC it is much faster (figures in docs/performance.md). Both compute in full float32 and differ
only in the order of the sums.

Used only where no gradient is needed: the forward passes of calibration and evaluation (every
``F.linear`` inside :func:`fast_linear`) and the covariance products. ``SVDADAPT_ONEDNN=0`` or ``1``
overrides the choice, which is otherwise: oneDNN when MKL is torch's BLAS, the CPU is not Intel's,
torch runs AVX-512 code, and a small product agrees with torch's own.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

ENV = "SVDADAPT_ONEDNN"


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _product(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")  # x @ wᵀ + b


@functools.cache
def onednn_preferred() -> bool:
    """Whether float32 products on this CPU should go through oneDNN (decided once per process)."""
    forced = os.environ.get(ENV)
    if forced in ("0", "1"):
        return forced == "1" and _works()
    automatic = (
        torch.backends.mkl.is_available()
        and torch.backends.cpu.get_cpu_capability() == "AVX512"
        and _cpu_vendor() not in ("GenuineIntel", "unknown")
    )
    return automatic and _works()


def _works() -> bool:
    try:
        if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
            return False
        generator = torch.Generator().manual_seed(0)
        f32 = {"generator": generator, "dtype": torch.float32, "device": "cpu"}  # whatever the defaults
        x, w, b = torch.randn(64, 48, **f32), torch.randn(32, 48, **f32), torch.randn(32, **f32)
        return bool(torch.allclose(_product(x, w, b), F.linear(x, w, b), rtol=1e-4, atol=1e-4))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def _plain(t: torch.Tensor) -> bool:
    return (
        isinstance(t, torch.Tensor)
        and type(t) in (torch.Tensor, nn.Parameter)  # no subclasses (quantized, sharded, ...)
        and t.layout == torch.strided
        and t.dtype == torch.float32
        and t.device.type == "cpu"
        and not (torch.is_grad_enabled() and t.requires_grad)
    )


def _eligible(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Plain float32 CPU tensors needing no gradient, in the shapes oneDNN's product takes: x
    (..., in), weight (out, in), bias None or contiguous (out,). Anything else stays with torch."""
    if not (_plain(x) and _plain(weight) and x.dim() >= 1 and weight.dim() == 2 and x.numel()):
        return False
    if x.shape[-1] != weight.shape[1]:
        return False  # torch's own error message
    if bias is None:
        return True
    return _plain(bias) and bias.dim() == 1 and bias.shape[0] == weight.shape[0] and bias.is_contiguous()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: x (..., in), weight (out, in) -> (..., out)."""
    if onednn_preferred() and _eligible(x, weight, bias):
        return _product(x, weight, bias)
    return F.linear(x, weight, bias)


def gram_rows(xT: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows start:stop of XᵀX from xT = Xᵀ (d, n) contiguous: (stop - start, d - start), the strip
    right of and including the diagonal block."""
    return linear(xT[start:stop], xT[start:])


class _OneDNNLinear(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and not kwargs and len(args) in (2, 3):
            return linear(*args)
        return func(*args, **kwargs)


def fast_linear() -> contextlib.AbstractContextManager:
    """Inside: every ``F.linear`` on CPU float32 tensors that need no gradient runs on oneDNN,
    where :func:`onednn_preferred`; anywhere else nothing changes."""
    return _OneDNNLinear() if onednn_preferred() else contextlib.nullcontext()
