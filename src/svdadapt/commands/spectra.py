"""``svdadapt spectra``: how the singular values of a few layers fall off under the plain SVD of W
and the context SVD of W·C, as a PNG: where a rank-r cut lands in each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import backend
from ..atomic import exclusive
from ..decompose import context_svd, plain_svd
from ..errors import SvdadaptError
from ..fingerprint import model_identity
from ..models import load_model
from ..options import Check, Options, opt
from ..plots import plot_lines
from ..store import CovarianceStore
from ..targets import find_targets, weight_matrix
from .common import DEVICE_HELP, MODEL_HELP


@dataclass(kw_only=True)
class SpectraOptions(Options):
    """Plot the normalised singular values of a few layers, plain SVD of W against context SVD of W·C."""

    model: str = opt(help=MODEL_HELP)
    covariances: str = opt(help="covariance store from `svdadapt calibrate` of this model")
    out: str = opt(help="PNG file to write", check=Check(lambda v: v.lower().endswith(".png"), "must name a .png file"))
    layers: str | None = opt(
        None, "layers to show, comma-separated full names (default: the first and last target of the middle block)"
    )
    device: str | None = opt(None, DEVICE_HELP)
    overwrite: bool = opt(False, "replace an existing PNG at --out (never a file that is not a PNG)", how=True)


@dataclass
class SpectraResult:
    plot: Path | None  # None without matplotlib
    layers: list[str]

    def summary(self) -> str:
        if self.plot is None:
            return "spectra: no plot written (install matplotlib)"
        return f"spectra of {', '.join(self.layers)}: {self.plot}"


def _middle_block(names: list[str]) -> list[str]:
    middle = names[len(names) // 2].rsplit(".", 2)[0]  # a block in the middle of the stack
    in_block = [n for n in names if n.startswith(middle + ".")]
    return [in_block[0], in_block[-1]]


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_plot_out(path: Path, overwrite: bool) -> None:
    """Refuse an --out that exists, unless --overwrite and it is a PNG (never a user's other file)."""
    if path.is_dir():
        raise SvdadaptError(f"--out {path} is a directory; name a .png file")
    if not path.exists():
        return
    if not overwrite:
        raise SvdadaptError(f"--out {path} exists; name another file, or pass --overwrite to replace it")
    with open(path, "rb") as f:
        if f.read(len(PNG_MAGIC)) != PNG_MAGIC:
            raise SvdadaptError(f"--out {path} exists and is not a PNG image; name another file")


def spectra(opts: SpectraOptions, progress: bool = True) -> SpectraResult:
    """Write the plot to ``opts.out`` (one writer at a time; an existing file only with --overwrite)."""
    path = Path(opts.out).expanduser()
    with exclusive(path):
        check_plot_out(path, opts.overwrite)
        return _spectra(opts, path)


def _spectra(opts: SpectraOptions, path: Path) -> SpectraResult:
    store = CovarianceStore.load(Path(opts.covariances).expanduser())
    loaded = load_model(opts.model, device=backend.resolve_device(opts.device))
    if opts.layers:
        names = [n.strip() for n in opts.layers.split(",")]
    else:
        names = _middle_block(list(find_targets(loaded.model)))
    modules = find_targets(loaded.model, names)
    store.check_covers(model_identity(loaded.model)["fingerprint"], modules)
    series = {}
    for name in modules:
        W = weight_matrix(modules[name]).detach()
        short = ".".join(name.split(".")[-3:])
        decompositions = {"plain": plain_svd(W, name), "context": context_svd(W, store.covariance(name), name)}
        for label, factors in decompositions.items():
            S = (factors.S / factors.S[0]).tolist()
            series[f"{short} {label}"] = (list(range(1, len(S) + 1)), S)
    plot = plot_lines(series, path, "singular values / largest", "component", "σ_i / σ_1", logy=True)
    return SpectraResult(plot, list(modules))
