"""The adapter options of every command that builds a run (``build``, and ``train`` building one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..calibrate import accumulate_dtype_option
from ..data.options import DataOptions
from ..errors import SvdadaptError
from ..method_options import given, method_params
from ..methods import METHODS, Method, get_method
from ..options import FRACTION, POSITIVE, Options, group, opt
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

    def check(self) -> None:
        parse_assignments(self.rank_pattern, "--rank-pattern", int)  # the syntax, before any model loads
        parse_assignments(self.alpha_pattern, "--alpha-pattern", float)
        if self.method is not None:
            self.row()  # a parameter the method does not have, or out of range

    def row(self) -> Method:
        """The method's row configured with its parameters given here (derived once)."""
        key = (self.method, tuple(sorted(given(self.params).items())))
        if getattr(self, "_row", (None, None))[0] != key:
            self._row = (key, get_method(self.method, **given(self.params)))
        return self._row[1]


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
