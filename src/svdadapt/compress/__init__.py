"""Compression sweep (CorDA's full_decompose): drop each layer's smallest components under plain
SVD, ASVD or the context decomposition, and measure what that costs in perplexity (the command is
svdadapt.commands.compress)."""

from .discard import Discard, layer_ranks, parse_discards
from .dropped import Dropped, decompose_bottom
from .sweep import Point, Sweep, run_sweep

__all__ = [
    "Discard",
    "Dropped",
    "Point",
    "Sweep",
    "decompose_bottom",
    "layer_ranks",
    "parse_discards",
    "run_sweep",
]
