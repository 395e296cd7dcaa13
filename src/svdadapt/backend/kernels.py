"""Back ends per kind of device: how products, Gram sums, eigensolvers and per-layer work run there.

:class:`Backend` is the generic one (torch's own kernels, one layer at a time: right for any
accelerator); :class:`CpuBackend` adds what is faster on CPUs (oneDNN float32 products where torch's
BLAS is slower, LAPACK's MRRR eigensolver, layers decomposed side by side on the cores). A new kind
of device gets a subclass registered in :data:`BACKENDS`; domain code never branches on devices.
"""

from __future__ import annotations

import contextlib

import torch

from . import gram, lapack, onednn
from .processes import Launch
from .scheduling import LayerPool, cpu_workers


class Backend:
    """Torch's own kernels on any device; one layer at a time."""

    def forward_products(self) -> contextlib.AbstractContextManager:
        """Where forward passes that need no gradient run (calibration, evaluation)."""
        return contextlib.nullcontext()

    def row_product(self, x: torch.Tensor) -> gram.RowProduct | None:
        """A faster kernel for rows of xᵀx than torch's GEMM, or None."""
        return None

    def accumulate_gram(self, target: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``target`` (d, d) += the block-upper triangle of xᵀx, x (n, d) (complete it with :func:`mirror`)."""
        return gram.accumulate_upper(target, x, self.row_product(x))

    def gram(self, X: torch.Tensor) -> torch.Tensor:
        """XᵀX (d, d) for X (n, d), multiplying only one triangle."""
        return gram.gram(X, self.row_product(X))

    def eigh(self, G: torch.Tensor, subset: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues (ascending) and eigenvectors of symmetric G; ``subset=(lo, hi)``: pairs lo..hi."""
        values, vectors = torch.linalg.eigh(G)
        if subset is None:
            return values, vectors
        lo, hi = subset
        return values[lo : hi + 1], vectors[:, lo : hi + 1]

    def layer_pool(self, launch: Launch | None = None) -> LayerPool:
        """Workers for per-layer jobs (a context manager), shared with the other processes of
        ``launch`` (default: this process alone)."""
        return (launch or Launch()).layer_pool(self.workers())

    def workers(self) -> int:
        """Layers worked on side by side: one at a time."""
        return 1

    def decomposition_device(self, device: torch.device) -> torch.device:
        """Where the float64 decompositions of weights used on ``device`` run: there by default."""
        return device


class CpuBackend(Backend):
    """oneDNN float32 products where preferred, LAPACK eigensolvers, one layer per core."""

    def forward_products(self) -> contextlib.AbstractContextManager:
        return onednn.fast_linear()

    def row_product(self, x: torch.Tensor) -> gram.RowProduct | None:
        return onednn.gram_rows if x.dtype == torch.float32 and onednn.onednn_preferred() else None

    def eigh(self, G: torch.Tensor, subset: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return lapack.eigh(G, subset)

    def workers(self) -> int:
        return cpu_workers()


# GPUs whose float64 units run at half their float32 rate (P100, V100, A100, H100/H200, B100/B200);
# others run float64 at 1/32–1/64 of it
FP64_AT_RATE = {(6, 0), (7, 0), (8, 0), (9, 0), (10, 0)}


def fp64_at_rate(capability: tuple[int, int]) -> bool:
    """Whether a CUDA GPU of compute ``capability`` computes float64 at rate."""
    return tuple(capability) in FP64_AT_RATE


class CudaBackend(Backend):
    """Torch's CUDA kernels; decompositions in float64 on the GPU where it computes float64 at rate.

    Elsewhere they run on the host's cores in float64 rather than on the GPU in float32: the bottom
    components knowledge-preserving methods take lie at σ/σ_max below float32's 6e-8 rounding in
    real layers (SmolLM2's q/o projections reach 1e-7), which a float32 SVD cannot resolve.
    """

    def decomposition_device(self, device: torch.device) -> torch.device:
        return device if fp64_at_rate(torch.cuda.get_device_capability(device)) else torch.device("cpu")


GENERIC = Backend()
BACKENDS: dict[str, Backend] = {"cpu": CpuBackend(), "cuda": CudaBackend()}


def on(device: torch.device | str | None) -> Backend:
    """The back end for ``device`` (a device, its name, or None for the CPU)."""
    kind = torch.device(device).type if device is not None else "cpu"
    return BACKENDS.get(kind, GENERIC)
