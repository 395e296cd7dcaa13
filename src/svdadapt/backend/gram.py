"""Triangular Gram products XᵀX: only the block-upper triangle is multiplied, then mirrored.

With column blocks of width ``GRAM_BLOCK`` the work is about (1 + 1/nblocks)/2 of a full ``XᵀX``
and runs as plain GEMMs on any device. One width for every use (covariance sums and the
decompositions' Gram matrices), so that distributed ranks reduce triangles of one shape; the
measurements behind the choice are in docs/performance.md.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

GRAM_BLOCK = 192

# (xT, start, stop) -> rows start:stop of XᵀX right of the diagonal, (stop - start, d - start)
RowProduct = Callable[[torch.Tensor, int, int], torch.Tensor]


def block_width(dim: int, block: int | None = None) -> int:
    """Column-block width for a (dim, dim) Gram (default :data:`GRAM_BLOCK`): one block when narrow."""
    block = block or GRAM_BLOCK
    return dim if dim <= 2 * block else block


def accumulate_upper(
    target: torch.Tensor, x: torch.Tensor, rows: RowProduct | None = None, overwrite: bool = False
) -> torch.Tensor:
    """``target`` (d, d) += the block-upper triangle of xᵀx for x (n, d) (``overwrite``: = instead
    of +=, whatever ``target`` held); returns ``target``.

    The products run in x's dtype (or through ``rows``, a faster kernel given xᵀ) and are added
    into ``target`` in its own dtype."""
    d = target.shape[0]
    step = block_width(d)
    if rows is not None:
        xT = x.T.contiguous()  # (d, n)
        for start in range(0, d, step):
            strip = target[start : start + step, start:]  # (b, d - start)
            product = rows(xT, start, start + step)
            strip.copy_(product) if overwrite else strip.add_(product)
        return target
    same_dtype = x.dtype == target.dtype
    for start in range(0, d, step):
        block = x[:, start : start + step]  # (n, b)
        strip = target[start : start + step, start:]  # (b, d - start)
        if same_dtype:
            strip.addmm_(block.T, x[:, start:], beta=0 if overwrite else 1)
        else:
            product = torch.mm(block.T, x[:, start:])
            strip.copy_(product) if overwrite else strip.add_(product)
    return target


def mirror_upper(G: torch.Tensor, step: int | None = None) -> torch.Tensor:
    """Complete in place a symmetric G of which the diagonal blocks (width ``step``, by default this
    module's) and the strips right of them are filled: each strip is copied to its mirror below."""
    step = step or block_width(G.shape[0])
    for start in range(step, G.shape[0], step):
        G[start:, start - step : start] = G[start - step : start, start:].T
    return G


def gram(X: torch.Tensor, rows: RowProduct | None = None) -> torch.Tensor:
    """XᵀX, (d, d), for X (n, d), symmetric up to rounding inside the diagonal blocks."""
    d = X.shape[1]
    return mirror_upper(accumulate_upper(X.new_empty(d, d), X, rows, overwrite=True))
