"""The adapter options of every command that builds a run (``build``, and ``train`` building one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import backend
from ..calibrate import accumulate_dtype_option
from ..data.options import DataOptions
from ..errors import SvdadaptError
from ..method_options import given, method_params
from ..methods import METHODS, Method, get_method
from ..options import FRACTION, POSITIVE, Options, between, group, opt
from ..quantize import MAX_ITERS
from ..store import covariances_option
from ..targets import targets_option
from .plan import parse_assignments


@dataclass(kw_only=True)
class AdapterOptions(Options):
    """Which adapters to build: method, rank and layers, and where the method's statistics come from."""

    method: str | None = opt(help="adapter method", choices=METHODS)  # the live table: rows added later count
    rank: int = opt(help="adapter rank r", check=POSITIVE)
    alpha: float | None = opt(None, "LoRA alpha; scaling s = alpha / r (default: alpha = r, s = 1)", check=POSITIVE)
    targets: str | None = targets_option("adapt")
    rank_pattern: str | None = opt(None, "per-layer ranks: PATTERN=R,... (first match wins)")
    alpha_pattern: str | None = opt(None, "per-layer alphas: PATTERN=A,... (first match wins)")
    dropout: float = opt(0.0, "adapter dropout (recorded for training)", check=FRACTION)
    params: Any = group(method_params("build"))  # the method row's own: --truncation, --rho, --freeze-a, ...
    covariances: str | None = covariances_option("the methods whose decomposition needs one")
    accumulate_dtype: str = accumulate_dtype_option("on-the-fly covariance sums")
    quantize: str | None = opt(
        None, "write the run's base quantized by bitsandbytes (nf4, fp4: 4-bit; int8): the method's frozen base "
        "quantized, saved as a standard transformers quantized checkpoint (needs svdadapt[quant])",
        choices=backend.QUANT_KINDS,
    )  # fmt: skip
    quant_iters: int = opt(
        0, "with --quantize: rounds of LoftQ-style alternation from the method's own factors (0: quantize the "
        "method's base as it is; cloq: rounds of its closed form, at least 1)", check=between(0, MAX_ITERS),
    )  # fmt: skip

    def check(self) -> None:
        parse_assignments(self.rank_pattern, "--rank-pattern", int)  # the syntax, before any model loads
        parse_assignments(self.alpha_pattern, "--alpha-pattern", float)
        if self.method is not None:
            self.row()  # a parameter the method does not have, or out of range
            check_quantization(self)

    def row(self) -> Method:
        """The method's row configured with its parameters given here (derived once)."""
        key = (self.method, tuple(sorted(given(self.params).items())))
        if getattr(self, "_row", (None, None))[0] != key:
            self._row = (key, get_method(self.method, **given(self.params)))
        return self._row[1]


def check_quantization(adapter: AdapterOptions) -> None:
    """--quantize and --quant-iters fit the method and bitsandbytes is here (one line otherwise)."""
    method = adapter.row()
    if adapter.quantize is None:
        if adapter.quant_iters:
            raise SvdadaptError("--quant-iters refines a quantized base: give --quantize nf4|fp4|int8 too")
        if method.quantized_init is not None:
            raise SvdadaptError(
                f"{method.name} initialises the adapter on a quantized base: give --quantize nf4|fp4|int8"
            )
        return
    if adapter.quant_iters and method.diag:
        raise SvdadaptError(
            f"--quant-iters cannot refine {method.name}: its adapter B·diag(ΔΣ)·A starts at zero on its truncated "
            "base; quantize that base as it is (leave --quant-iters out)"
        )
    backend.require_bitsandbytes(f"--quantize {adapter.quantize}")


def check_statistics(adapter: AdapterOptions, calibration: DataOptions, data_flag: str) -> None:
    """The statistics the method needs come from exactly one place: a store or a calibration source
    (``data_flag`` names the command's flag for the latter)."""
    if adapter.covariances and calibration.data:
        raise SvdadaptError(f"give either --covariances or {data_flag}, not both")
    if adapter.method is None or adapter.covariances or calibration.data:
        return
    method = adapter.row()
    if method.needs is not None:
        raise SvdadaptError(
            f"{method.name} needs calibration covariances: pass --covariances DIR (from svdadapt calibrate) "
            f"or {data_flag} SOURCE to calibrate on the fly"
        )
