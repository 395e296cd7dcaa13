"""Quantized bases: the values bitsandbytes stores (codes.py), the error of a quantized layer
(measure.py), CLoQ's activation-aware closed form (cloq.py), and a layer's quantized base with its
adapter — plain, LoftQ-style refinement, or CLoQ (init.py)."""

from .cloq import InputRoot, input_root, weighted_best_rank
from .codes import (
    BLOCK,
    KINDS,
    NF4_CODE,
    cpu_decodes_exactly,
    decode_4bit,
    nf4_reference,
    quantize_dequantize,
)
from .init import HOWS, MAX_ITERS, QuantizedLayer, best_rank, quantized_factors
from .measure import relative_error, weighted_error

__all__ = [
    "BLOCK",
    "HOWS",
    "KINDS",
    "MAX_ITERS",
    "NF4_CODE",
    "InputRoot",
    "QuantizedLayer",
    "best_rank",
    "cpu_decodes_exactly",
    "decode_4bit",
    "input_root",
    "nf4_reference",
    "quantize_dequantize",
    "quantized_factors",
    "relative_error",
    "weighted_best_rank",
    "weighted_error",
]
