"""The adapter options of every command that builds a run (``build``, and ``train`` building one)."""

from __future__ import annotations

from dataclasses import dataclass

from ..calibrate import DTYPES
from ..data.options import DataOptions
from ..errors import SvdadaptError
from ..methods import METHODS, TRUNCATIONS, Method, get_method
from ..options import FRACTION, POSITIVE, Options, opt


@dataclass(kw_only=True)
class AdapterOptions(Options):
    """Which adapters to build: method, rank and layers, and where the method's statistics come from."""

    method: str | None = opt(help="adapter method", choices=METHODS)  # the live table: rows added later count
    rank: int = opt(help="adapter rank r", check=POSITIVE)
    alpha: float | None = opt(None, "LoRA alpha; scaling s = alpha / r (default: alpha = r, s = 1)", check=POSITIVE)
    targets: str | None = opt(
        None, "layers to adapt: name suffixes or re:REGEX, comma-separated (default: every linear layer in blocks)"
    )
    rank_pattern: str | None = opt(None, "per-layer ranks: PATTERN=R,... (first match wins)")
    alpha_pattern: str | None = opt(None, "per-layer alphas: PATTERN=A,... (first match wins)")
    dropout: float = opt(0.0, "adapter dropout (recorded for training)", check=FRACTION)
    truncation: str | None = opt(
        None, "kasa: decomposition that picks the dropped components", choices=list(TRUNCATIONS)
    )
    rho: float | None = opt(
        None, "eva: a layer's rank may grow to round(rho·r) as ranks move to where the inputs' variance is; "
        "1 keeps every rank (default 2, as PEFT); checked with the method's row",
    )  # fmt: skip
    freeze_a: bool = opt(False, "keep A as initialised while training (LoRA-Null's variant; rows whose A is seeded)")
    covariances: str | None = opt(None, "covariance store from `svdadapt calibrate` (context decompositions)")
    accumulate_dtype: str = opt("float64", "dtype of on-the-fly covariance sums", choices=list(DTYPES))

    def check(self) -> None:
        if self.method is not None:
            self.row()  # --truncation, --rho or --freeze-a on a method they do not apply to

    def row(self) -> Method:
        """The method's row with these options applied (truncation, ρ, frozen A)."""
        return get_method(self.method, self.truncation, self.rho, self.freeze_a)


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
