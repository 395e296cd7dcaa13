"""``svdadapt compress``: the compression sweep (CorDA's full_decompose) as the command line runs it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .. import backend
from ..atomic import exclusive
from ..compress.discard import parse_discards
from ..compress.report import PLOT_FILE, check_out, table, write_results
from ..compress.sweep import Point, Sweep, check_decompositions, run_sweep
from ..decompose import DECOMPOSITIONS, as_float64
from ..errors import SvdadaptError, unknown
from ..evaluate import evaluation_windows
from ..evaluate.settings import WindowOptions
from ..evaluate.suite import resolve_seq_len
from ..fingerprint import model_identity
from ..models import PlacementOptions, load_model, require_float
from ..options import Options, group, opt
from ..store import CovarianceStore, covariances_option
from ..streaming import find_stack
from ..targets import find_targets, targets_option, weight_matrix
from .common import DEVICE_HELP, MODEL_HELP


@dataclass(kw_only=True)
class CompressOptions(Options):
    """Compression sweep (CorDA's full_decompose, paper Figure 2 / Table 6): drop the r smallest
    components of every target layer under each decomposition and measure perplexity at each r.

    Each layer is decomposed once per decomposition (only the components the largest r needs) and
    reused at every point; r = 0 is the base model. Writes results.csv, results.json and
    perplexity_vs_discarded.png into --out."""

    model: str = opt(help=MODEL_HELP)
    out: str = opt(help="directory to write the results into (an earlier sweep there is replaced)", metavar="DIR")
    covariances: str | None = covariances_option("needed by context and asvd")
    decomposition: str = opt(
        "context,asvd,plain", "decompositions to compare, comma-separated: context (CorDA: SVD of W·C), "
        "asvd (SVD of W·diag(mean|x|^0.5)), plain (SVD of W)", metavar="LIST",
    )  # fmt: skip
    discard: str = opt(
        "0,0.1,0.25,0.5", "components to drop from every layer, comma-separated: counts (16), fractions of "
        "min(out, in) (0.25) or percentages (25%%)", metavar="LIST",
    )  # fmt: skip
    eval: str = opt(
        "wiki-heldout", "text to measure perplexity on: wiki-heldout, news, wikitext2, ptb, or a .txt file",
        metavar="SOURCE",
    )  # fmt: skip
    also_eval: str | None = opt(
        None, "further texts measured at every point beside --eval, comma-separated (e.g. news-heldout: out "
        "of domain for a Wikipedia calibration)", metavar="SOURCES",
    )  # fmt: skip
    measure: WindowOptions = group(WindowOptions, defaults={"seq_len": 512, "batch_size": 1})
    targets: str | None = targets_option("compress")
    device: str | None = opt(None, DEVICE_HELP)
    placement: PlacementOptions = group(PlacementOptions)

    def check(self) -> None:
        _names(self.decomposition)
        parse_discards(self.discard)


@dataclass
class CompressResult:
    out: Path
    sweep: Sweep
    plot: Path | None
    lines: list[str]

    def summary(self) -> str:
        return "\n".join(self.lines)


def _names(text: str) -> list[str]:
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown_names = [n for n in names if n not in DECOMPOSITIONS]
    whole = [n for n, d in DECOMPOSITIONS.items() if d.whole]
    if unknown_names or not names:
        raise unknown("decomposition", unknown_names[0] if unknown_names else "", whole)
    return names


def _also(opts: CompressOptions) -> list[str]:
    """The further texts, in order, without --eval itself or repeats."""
    texts = dict.fromkeys(t.strip() for t in (opts.also_eval or "").split(",") if t.strip())
    return [t for t in texts if t != opts.eval]


def _store(opts: CompressOptions, names: list[str]) -> CovarianceStore | None:
    if not any(DECOMPOSITIONS[n].needs for n in names):
        if opts.covariances:
            print("svdadapt: note: plain SVD uses no calibration statistics; ignoring --covariances")
        return None
    if not opts.covariances:
        check_decompositions(names, None)  # raises, naming the decomposition that needs a store
    return CovarianceStore.load(Path(opts.covariances).expanduser())


def compress(opts: CompressOptions, progress: bool = True) -> CompressResult:
    """Run a sweep as the CLI does; the results are written to ``opts.out``."""
    out = Path(opts.out).expanduser()
    with exclusive(out):
        return _compress(opts, out, progress)


def _compress(opts: CompressOptions, out: Path, progress: bool) -> CompressResult:
    started = time.monotonic()
    names = _names(opts.decomposition)
    discards = parse_discards(opts.discard)
    store = _store(opts, names)
    check_out(out)
    device = backend.resolve_device(opts.device)
    require_float(opts.model, "compressing")
    loaded = load_model(opts.model, head="causal-lm", device=device, offload=opts.placement.offload_choice)
    seq_len = resolve_seq_len(loaded.model, opts.measure)
    identity = model_identity(loaded.model)
    modules = find_targets(loaded.model, opts.targets)
    if loaded.placement.offloaded and find_stack(loaded.model, list(modules)) is None:
        raise SvdadaptError(
            "an offloaded model is swept block by block, and these targets are not all inside its block stack: "
            "choose targets inside the blocks (--targets), or load it whole (--offload off, enough memory)"
        )
    if store is not None:
        store.check_covers(identity["fingerprint"], modules)
    for name, module in modules.items():  # fail before any long work starts
        as_float64(weight_matrix(module), name)
        backend.hand_back(module.weight)  # the check read it in; the sweep reads it when due
    windows = evaluation_windows(opts.eval, loaded.tokenizer, seq_len, opts.measure.max_windows, opts.measure.windows)
    also = {text: evaluation_windows(text, loaded.tokenizer, seq_len, opts.measure.max_windows, opts.measure.windows)
            for text in _also(opts)}  # fmt: skip
    n_windows = windows.ids.shape[0]
    if progress:
        print(f"svdadapt: {len(modules)} target layers; {opts.eval}: {n_windows} windows × {seq_len} tokens")

    def report(point: Point) -> None:
        if progress:
            tqdm.write(f"  {point.decomposition:<8} discard {point.discard:<6} (r = {point.ranks}) "
                       f"perplexity {point.perplexity:.4g}")  # fmt: skip

    sweep = run_sweep(
        loaded.model, modules, names, discards, windows, store, opts.measure.batch_size, progress, on_point=report,
        placement=loaded.placement, hidden_dir=opts.placement.hidden_states_dir, also=also,
    )  # fmt: skip
    meta = {
        "model": {**identity, "name": loaded.name, "location": loaded.location},
        "covariances": None if store is None else {"path": str(store.path), **store.metadata.get("source", {})},
        "eval": {"source": opts.eval, "seq_len": seq_len, "windows": n_windows, "choice": windows.choice},
        "also_eval": {text: {"windows": w.ids.shape[0], "choice": w.choice} for text, w in also.items()},
        "targets": len(modules),
        "decompositions": names,
        "discard": [d.text for d in discards],
        "seconds": round(time.monotonic() - started, 2),
    }
    title = f"{loaded.name}: perplexity on {opts.eval}"
    plot = write_results(out, sweep, discards, meta, title)
    lines = [
        f"compression sweep: {out}",
        f"  {loaded.name}, {len(modules)} layers; perplexity on {opts.eval} "
        f"({n_windows} windows × {seq_len} tokens), base {sweep.base.perplexity:.4g}",
        *table(sweep, discards),
        f"  results.csv, results.json{', ' + PLOT_FILE if plot else ' (no plot: install matplotlib)'}",
        f"  time {meta['seconds']:.1f} s",
    ]
    return CompressResult(out, sweep, plot, lines)
