"""``svdadapt build``: decompose, initialise adapters and write a run directory."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import backend
from ..atomic import atomic_directory
from ..calibrate.engine import DTYPES
from ..calibrate.job import MODEL_HELP
from ..data.options import DataOptions
from ..decompose import check_finite
from ..errors import SvdadaptError
from ..fingerprint import body_fingerprint, model_identity, weights_fingerprint
from ..methods import METHODS, TRUNCATIONS, get_method
from ..models import load_model, max_positions
from ..options import opt
from ..runs import Run, check_run_out, mixed_conv1d, write_run_files
from ..store import CovarianceStore
from ..targets import find_targets, stored_weight, weight_matrix
from .core import build_adapters
from .plan import plan_layers
from .waves import waves_from_store, waves_on_the_fly, waves_without_statistics


@dataclass(kw_only=True)
class BuildOptions(DataOptions):
    """Decompose each target weight per the chosen method, initialise its adapter, and write a run:
    the frozen (residual) base as a model directory and the adapter as a stock PEFT LoRA."""

    model: str = opt(help=MODEL_HELP)
    method: str = opt(help="adapter method", choices=list(METHODS))
    rank: int = opt(help="adapter rank r")
    out: str = opt(help="run directory to write (an existing run there is replaced)")
    alpha: float | None = opt(None, "LoRA alpha; scaling s = alpha / r (default: alpha = r, s = 1)")
    covariances: str | None = opt(None, "covariance store from `svdadapt calibrate` (context decompositions)")
    data: str | None = opt(None, "calibrate on the fly on this source instead of --covariances (see calibrate)")
    targets: str | None = opt(
        None, "layers to adapt: name suffixes or re:REGEX, comma-separated (default: every linear layer in blocks)"
    )
    rank_pattern: str | None = opt(None, "per-layer ranks: PATTERN=R,... (first match wins)")
    alpha_pattern: str | None = opt(None, "per-layer alphas: PATTERN=A,... (first match wins)")
    dropout: float = opt(0.0, "adapter dropout (recorded for training)")
    truncation: str | None = opt(
        None, "kasa: decomposition that picks the dropped components", choices=list(TRUNCATIONS)
    )
    accumulate_dtype: str = opt("float64", "dtype of on-the-fly covariance sums", choices=list(DTYPES))
    device: str | None = opt(None, "cpu, cuda or cuda:N (default: cuda when available)")
    seed: int = opt(0, "seed for random adapter initialisation and sampling")
    head: str = opt(
        "auto", "model head to load: auto (from the checkpoint), causal-lm, base, or seq-cls (a new, seeded "
        "classification head, as training a classifier needs)", choices=["auto", "causal-lm", "base", "seq-cls"],
    )  # fmt: skip
    num_labels: int | None = opt(None, "with --head seq-cls: number of classes (1 = regression)")


def _statistics_waves(opts: BuildOptions, loaded, method, plan, modules, progress: bool):
    needs = method.needs
    if needs is None:
        if opts.covariances or opts.data:
            print(f"svdadapt: note: {method.name} uses no calibration statistics; ignoring --covariances/--data")
        return waves_without_statistics(plan), None
    if opts.covariances and opts.data:
        raise SvdadaptError("give either --covariances or --data, not both")
    if opts.covariances:
        store = CovarianceStore.load(opts.covariances)
        store.check_model(model_identity(loaded.model)["fingerprint"])
        missing = [n for n in plan if n not in store.module_to_group]
        if missing:
            raise SvdadaptError(
                f"the covariance store lacks {len(missing)} target layers (e.g. {missing[0]}); "
                "recalibrate with the same --targets"
            )
        calibration = {"covariances": str(opts.covariances), **store.metadata["source"]}
        return waves_from_store(store, list(plan), needs), calibration
    if opts.data:
        opts.validate(max_positions(loaded.model))
        batches = opts.load_batches(loaded.tokenizer)
        waves = waves_on_the_fly(loaded.model, batches, modules, needs, DTYPES[opts.accumulate_dtype], progress)
        return waves, opts.source_spec()
    raise SvdadaptError(
        f"{method.name} needs calibration covariances: pass --covariances DIR (from svdadapt calibrate) "
        "or --data SOURCE to calibrate on the fly"
    )


def build(opts: BuildOptions, progress: bool = True) -> Run:
    """Run a build as the CLI does; returns the run written to ``opts.out``."""
    started = time.monotonic()
    method = get_method(opts.method, opts.truncation)
    if opts.alpha is not None and not opts.alpha > 0:
        raise SvdadaptError(f"--alpha must be positive, got {opts.alpha}")
    if opts.rank < 1:
        raise SvdadaptError(f"--rank must be at least 1, got {opts.rank}")
    if not 0 <= opts.dropout < 1:
        raise SvdadaptError(f"--dropout must be in [0, 1), got {opts.dropout}")
    out = Path(opts.out).expanduser()
    check_run_out(out)
    device = backend.resolve_device(opts.device)
    head_kwargs = {}
    if opts.head == "seq-cls":
        if not opts.num_labels or opts.num_labels < 1:
            raise SvdadaptError("--head seq-cls needs --num-labels (1 for regression)")
        head_kwargs["num_labels"] = opts.num_labels
        torch.manual_seed(opts.seed)  # the new head's initial weights become part of the run's base
    loaded = load_model(opts.model, head=opts.head, device=device, **head_kwargs)
    modules = find_targets(loaded.model, opts.targets)
    plan = plan_layers(modules, opts.rank, opts.alpha, opts.rank_pattern, opts.alpha_pattern)
    changed = method.changes_base or opts.head == "seq-cls"  # a new head lives in the base
    base = backend.open_base_writer(loaded.model, loaded.location, [f"{n}.weight" for n in plan], changed)
    for name, layer in plan.items():  # fail before any long work starts
        check_finite(weight_matrix(layer.module), name)
        base.release(layer.module.weight)  # the check read it in; the build reads it when due
    original = {
        **model_identity(loaded.model), "body_fingerprint": body_fingerprint(loaded.model),
        "name": loaded.name, "location": loaded.location,
    }  # fmt: skip
    waves, calibration = _statistics_waves(opts, loaded, method, plan, modules, progress)
    with atomic_directory(out) as tmp:
        base.start(tmp / "base")

        def put_base(name: str, module, matrix) -> None:
            base.put(f"{name}.weight", module.weight, stored_weight(module, matrix))

        adapters = build_adapters(method, plan, waves, seed=opts.seed, progress=progress, put_base=put_base)
        mixed_conv1d(adapters)
        base.finish(loaded.model, loaded.tokenizer)
        base_fingerprint = weights_fingerprint(loaded.model, after_each=base.release)
        meta = {
            "stage": "built",
            "method": method.name,
            "decomposition": method.decomposition,
            "rank": opts.rank,
            "alpha": opts.alpha if opts.alpha is not None else opts.rank,
            "dropout": opts.dropout,
            "seed": opts.seed,
            "head": opts.head,
            "num_labels": opts.num_labels,
            "original": original,
            "calibration": calibration,
            "build_seconds": round(time.monotonic() - started, 2),
        }
        meta = write_run_files(tmp, out, meta, adapters, adapters, loaded.model, changed, base_fingerprint)
    return Run(out, meta)


def summary(run: Run) -> str:
    meta = run.meta
    layers = meta["layers"]
    ranks = sorted({v["rank"] for v in layers.values()})
    dampings = sorted({v["damping"] for v in layers.values() if v["damping"] is not None})
    state = run.adapters()
    trainable = sum(
        a.A.numel() + a.B.numel() + (0 if a.diag is None else a.diag.numel()) for a in state.layers.values()
    )
    base = f"residual weights in {run.path / 'base'}" if run.base_changed else "the original model, untouched"
    lines = [
        f"run: {run.path}",
        f"  method      {meta['method']} on {meta['original']['name']}: {len(layers)} layers, rank "
        f"{'/'.join(map(str, ranks))}, alpha {meta['alpha']}, {trainable / 1e6:.2f} M adapter parameters",
        f"  base        {base}",
        f"  adapter     {run.path / 'adapter'} (stock PEFT LoRA)",
    ]
    if dampings:
        lines.append(f"  damping     λ = {', '.join(f'{d:g}' for d in dampings)} · mean(diag C)")
    lines.append(f"  time        {meta['build_seconds']:.1f} s")
    return "\n".join(lines)
