"""Compression sweep (CorDA's full_decompose): drop each layer's smallest components under plain
SVD, ASVD or the context decomposition, and measure what that costs in perplexity."""

from .discard import Discard, layer_ranks, parse_discards
from .dropped import Dropped, decompose_bottom
from .job import CompressOptions, compress
from .sweep import Point, Sweep, run_sweep

__all__ = [
    "CompressOptions",
    "Discard",
    "Dropped",
    "Point",
    "Sweep",
    "compress",
    "decompose_bottom",
    "layer_ranks",
    "parse_discards",
    "run_sweep",
]
