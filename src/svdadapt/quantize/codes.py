"""The values bitsandbytes stores for a float weight: NF4 / FP4 (blocks of 64 along the flattened
weight, absmax per block) and LLM.int8 (absmax per row of the float16 weight).

:func:`quantize_dequantize` returns the values a layer loaded with
``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind)`` (or ``load_in_8bit=True``) from a
float32 checkpoint stores, as float32; it is idempotent, so writing its output as a float checkpoint
and letting bitsandbytes quantize it again on load gives the same codes. bitsandbytes is imported
only when called. :func:`nf4_reference` is the same NF4 in plain torch (the 16 code values, nearest code), the oracle
the tests hold bitsandbytes to.

The 4-bit codes are decoded here (code value × its block's absmax, in float32, as bitsandbytes'
CUDA and default kernels do), not by ``dequantize_4bit``: in bitsandbytes 0.50.2 its CPU kernel
reads the absmax of the wrong block when a row's length is not a multiple of the block (blocks then
run across rows; measured on (64, 96), (64, 160) and (8, 32) weights), and a CPU ``Linear4bit``
computes with those wrong values. :func:`cpu_decodes_exactly` names the shapes where it is exact.
"""

from __future__ import annotations

import math

import torch

from .. import backend
from ..errors import SvdadaptError, unknown

KINDS = backend.QUANT_KINDS  # nf4, fp4, int8
BLOCK = 64  # bitsandbytes' 4-bit blocksize, what transformers' BitsAndBytesConfig uses

# The 16 NF4 values (quantiles of N(0, 1) scaled to [-1, 1], QLoRA's Appendix E), as bitsandbytes has them.
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)  # fmt: skip


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise unknown("quantization", kind, KINDS)
    return kind


def quantize_dequantize(weight: torch.Tensor, kind: str, block: int = BLOCK) -> torch.Tensor:
    """What bitsandbytes stores for ``weight`` (out, in) as ``kind``, dequantized: (out, in) float32.

    The weight is first made float32 (as loading a float32 checkpoint does); int8 (LLM.int8) casts
    it to float16 before taking each row's absmax, as bitsandbytes' ``Int8Params`` does.
    """
    check_kind(kind)
    if weight.dim() != 2:
        raise SvdadaptError(f"quantizing needs a 2-D weight, got shape {tuple(weight.shape)}")
    functional = backend.require_bitsandbytes("quantizing").functional
    W = weight.detach().to(device="cpu", dtype=torch.float32).contiguous()  # (out, in)
    if kind == "int8":
        codes, row_absmax, _ = functional.int8_vectorwise_quant(W.to(torch.float16))  # (out, in) int8, (out,)
        return functional.int8_vectorwise_dequant(codes, row_absmax)  # (out, in) float32: codes × absmax / 127
    packed, state = functional.quantize_4bit(W, blocksize=block, quant_type=kind, quant_storage=torch.uint8)
    return decode_4bit(packed, state.absmax, state.code, block, W.shape)


def decode_4bit(packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, block: int, shape) -> torch.Tensor:
    """The values of bitsandbytes' packed 4-bit codes (two per byte, the first in the high nibble)
    over the flattened weight: code[index] × absmax of its block of ``block``, float32, ``shape``."""
    flat = packed.reshape(-1).view(torch.uint8).to(torch.int64)  # (n/2,)
    indices = torch.stack((flat >> 4, flat & 0xF), dim=1).reshape(-1)  # (n,) (padded to even)
    n = math.prod(shape)
    values = code.to(torch.float32)[indices[:n]]  # (n,)
    blocks = torch.arange(n) // block  # (n,)
    return (values * absmax.to(torch.float32)[blocks]).reshape(shape)


def cpu_decodes_exactly(shape, block: int = BLOCK) -> bool:
    """Whether bitsandbytes' CPU 4-bit kernel surely computes with the stored values for a weight of
    ``shape`` (out, in): when every row is whole blocks. Other shapes may be misread (see the module's
    docstring; some, e.g. (40, 24), happen to come out right)."""
    return shape[-1] % block == 0


def nf4_reference(weight: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """NF4 in plain torch: each block of ``block`` values of the flattened weight scaled by its
    absmax to [-1, 1], rounded to the nearest of the 16 NF4 values, scaled back. (out, in) float32."""
    flat = weight.detach().to(torch.float32).reshape(-1)  # (n,)
    n = flat.numel()
    padded = torch.nn.functional.pad(flat, (0, -n % block)).reshape(-1, block)  # (blocks, block)
    absmax = padded.abs().amax(dim=1, keepdim=True)  # (blocks, 1)
    scaled = padded.double() / absmax.double().clamp_min(1e-38)  # (blocks, block) in [-1, 1]
    code = torch.tensor(NF4_CODE, dtype=torch.float64)  # (16,)
    nearest = (scaled[..., None] - code).abs().argmin(dim=-1)  # (blocks, block)
    values = code.to(torch.float32)[nearest] * absmax  # (blocks, block) float32, as bitsandbytes multiplies
    return values.reshape(-1)[:n].reshape(weight.shape)
