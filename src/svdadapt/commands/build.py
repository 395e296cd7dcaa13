"""``svdadapt build``: decompose, initialise adapters and write a run directory."""

from __future__ import annotations

import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import backend
from ..atomic import atomic_directory, exclusive
from ..build import build_adapters, plan_layers, waves_from_store, waves_on_the_fly, waves_without_statistics
from ..build.options import AdapterOptions, check_statistics
from ..build.quantized import Quantization
from ..calibrate import DTYPES
from ..data.options import DataOptions
from ..decompose import check_finite
from ..errors import SvdadaptError
from ..fingerprint import body_fingerprint, model_identity, weights_fingerprint
from ..methods import Base
from ..models import PlacementOptions, load_model, max_positions, origin, require_float
from ..options import POSITIVE, SEED, Options, group, opt
from ..runs import Run, check_run_out, mixed_conv1d, tokenizer_files, write_run_files
from ..store import CovarianceStore
from ..targets import find_targets, stored_weight, weight_matrix
from .common import DEVICE_HELP, MODEL_HELP

HEADS = ["auto", "causal-lm", "base", "seq-cls"]


@dataclass(kw_only=True)
class BuildOptions(Options):
    """Decompose each target weight per the chosen method, initialise its adapter, and write a run:
    the frozen (residual) base as a model directory and the adapter as a stock PEFT LoRA."""

    model: str = opt(help=MODEL_HELP)
    out: str = opt(help="run directory to write (a run there that was only built is replaced)")
    adapter: AdapterOptions = group(AdapterOptions)
    calibration: DataOptions = group(DataOptions, defaults={"data": None})  # --data: calibrate on the fly
    device: str | None = opt(None, DEVICE_HELP)
    placement: PlacementOptions = group(PlacementOptions)
    seed: int = opt(0, "seed for random adapter initialisation and sampling", check=SEED)
    head: str = opt(
        "auto", "model head to load: auto (from the checkpoint), causal-lm, base, or seq-cls (a new, seeded "
        "classification head, as training a classifier needs)", choices=HEADS,
    )  # fmt: skip
    num_labels: int | None = opt(None, "with --head seq-cls: number of classes (1 = regression)", check=POSITIVE)
    overwrite: bool = opt(False, "replace a run at --out that was trained (its adapter and results are lost)", how=True)

    def check(self) -> None:
        check_statistics(self.adapter, self.calibration, "--data")
        if self.head == "seq-cls" and self.num_labels is None:
            raise SvdadaptError("--head seq-cls needs --num-labels (1 for regression)")


@dataclass
class BuildResult:
    run: Run

    def summary(self) -> str:
        run, meta = self.run, self.run.meta
        layers = meta["layers"]
        ranks = sorted({v["rank"] for v in layers.values()})
        dampings = sorted({v["damping"] for v in layers.values() if v["damping"] is not None})
        trainable = sum(a.trainable_parameters for a in run.adapters().layers.values())
        kind = {Base.RESIDUAL: "residual weights", Base.TRUNCATED: "truncated weights"}.get(run.method.base)
        what = kind or "the original weights with the new head" if run.base_changed else "the original model (linked)"
        base = f"{what} in {run.path / 'base'}"
        lines = [
            f"run: {run.path}",
            f"  method      {meta['method']} on {meta['original']['name']}: {len(layers)} layers, rank "
            f"{'/'.join(map(str, ranks))}, alpha {meta['alpha']}, {trainable / 1e6:.2f} M adapter parameters",
            f"  base        {base}",
            f"  adapter     {run.path / 'adapter'} (stock PEFT LoRA)",
        ]
        quant = meta.get("quantization")
        if quant and quant.get("mean_error") is None:
            lines.append(f"  quantized   {quant['kind']} base: no layer here is one bitsandbytes quantizes")
        elif quant:
            weighted = quant.get("mean_weighted_error")
            on_inputs = f", {weighted:.4f} on the calibration inputs" if weighted is not None else ""
            how = quant["how"] + (f" ({quant['iters']} rounds)" if quant["how"] == "refine" else "")
            lines.append(
                f"  quantized   {quant['kind']} base, {how}: mean relative error {quant['mean_error']:.4f}{on_inputs}"
            )
        if dampings:
            lines.append(f"  damping     λ = {', '.join(f'{d:g}' for d in dampings)} · mean(diag C)")
        lines.append(f"  time        {meta['build_seconds']:.1f} s")
        return "\n".join(lines)


def _statistics(opts: BuildOptions, loaded, method, plan, fingerprint: str, progress: bool, launch: backend.Launch):
    """The waves of units the build decomposes, and what the run records about the calibration
    (``fingerprint``: the model's, which a store must have been made of)."""
    if method.needs is None:
        if opts.adapter.covariances or opts.calibration.data:
            print(f"svdadapt: note: {method.name} uses no calibration statistics; ignoring --covariances/--data")
        return waves_without_statistics(plan), None
    if opts.adapter.covariances:
        store = CovarianceStore.load(opts.adapter.covariances)
        store.check_covers(fingerprint, plan)
        calibration = {
            "covariances": Path(opts.adapter.covariances).expanduser().resolve().name,
            **store.metadata["source"],
        }  # fmt: skip (the store's name: no path of this machine)
        return waves_from_store(store, list(plan), method.needs), calibration
    opts.calibration.check_length(max_positions(loaded.model))
    batches = opts.calibration.load_batches(loaded.tokenizer, opts.seed)
    launch.check_shares(len(batches))
    modules = {name: layer.module for name, layer in plan.items()}
    accumulate = DTYPES[opts.adapter.accumulate_dtype]
    waves = waves_on_the_fly(
        loaded.model, batches, modules, method.needs, accumulate, progress, loaded.placement,
        opts.placement.hidden_states_dir, launch,
    )  # fmt: skip
    return waves, opts.calibration.source_spec(opts.seed)


def _quantized_base(directory: Path, quantization: Quantization, keep_float: dict[str, str], errors: dict,
                    head: str) -> tuple[str, dict]:  # fmt: skip
    """Turn the float base written into ``directory`` (its quantized layers already the dequantized
    values) into a bitsandbytes checkpoint in place, the layers ``keep_float`` names left float; the
    quantized base's fingerprint and what run.json records of the quantization (kind, how, per-layer
    errors, the layers left float)."""
    float_dir = directory.with_name("base.float")
    directory.rename(float_dir)
    backend.write_quantized_checkpoint(float_dir, directory, quantization.kind, list(keep_float))
    for name in tokenizer_files(float_dir):
        shutil.copy2(float_dir / name, directory / name)
    # float_dir is this build's own: renamed from the base it wrote inside its temporary run directory
    # (which the build removes whole on failure); its files are plain or hard links (removing a hard
    # link leaves the original's data), and rmtree never follows a symlink
    shutil.rmtree(float_dir)
    loaded = load_model(str(directory), head=head)
    fingerprint = weights_fingerprint(loaded.model)
    values = [e["error"] for e in errors.values()]
    weighted = [e["weighted_error"] for e in errors.values() if e["weighted_error"] is not None]
    record = {
        **quantization.record(),
        "float_layers": keep_float,
        "mean_error": sum(values) / len(values) if values else None,
        "mean_weighted_error": sum(weighted) / len(weighted) if weighted else None,
        "layers": errors,
    }
    return fingerprint, record


def _say_kept_float(keep_float: dict[str, str]) -> None:
    """One note for the layers a quantized base keeps float, by reason (the output head aside)."""
    reasons: dict[str, list[str]] = {}
    for name, why in keep_float.items():
        if why != "the output head":
            reasons.setdefault(why, []).append(name)
    if reasons:
        parts = [f"{len(names)} ({why}, e.g. {names[0]})" for why, names in reasons.items()]
        print(f"svdadapt: note: bitsandbytes cannot quantize these layers, which stay float: {'; '.join(parts)}")


def build(opts: BuildOptions, progress: bool = True) -> BuildResult:
    """Run a build as the CLI does: the run is written to ``opts.out``. Under a launcher each process
    calibrates its share of the batches (sums added up across processes) and decomposes its share of
    each block's layers; rank 0 alone writes the run (and holds the lock of ``--out``)."""
    out = Path(opts.out).expanduser()
    device = backend.resolve_device(opts.device)
    with backend.launch(device) as launch, exclusive(out) if launch.writer else nullcontext():
        return build_locked(opts, out, progress and launch.writer, launch)


def build_locked(opts: BuildOptions, out: Path, progress: bool, launch: backend.Launch | None = None) -> BuildResult:
    """The build into ``out``, whose lock the caller holds (:func:`build`, or train building its run
    in one process: ``launch``'s default)."""
    started = time.monotonic()
    adapter = opts.adapter
    method = adapter.row()  # derived once, when the options were checked
    launch = launch or backend.Launch()
    writer = launch.writer
    if writer:
        check_run_out(out, opts.overwrite)
    device = backend.resolve_device(opts.device)
    head_kwargs = {}
    if opts.head == "seq-cls":
        head_kwargs["num_labels"] = opts.num_labels
        torch.manual_seed(opts.seed)  # the new head's initial weights become part of the run's base
    require_float(opts.model, "building a run")
    quantization = Quantization.of(method, adapter.quantize, adapter.quant_iters)
    if quantization is not None:  # float32 on every device: the base written holds exactly the values chosen
        head_kwargs["dtype"] = torch.float32
    loaded = load_model(opts.model, head=opts.head, device=device, offload=opts.placement.offload_choice, **head_kwargs)
    compute = backend.on(device).decomposition_device(loaded.placement.compute)
    modules = find_targets(loaded.model, adapter.targets)
    plan = plan_layers(modules, adapter.rank, adapter.alpha, adapter.rank_pattern, adapter.alpha_pattern)
    keep_float = backend.kept_float(loaded.model, quantization.kind) if quantization is not None else {}
    _say_kept_float(keep_float)
    changed = method.changes_base or opts.head == "seq-cls" or quantization is not None  # a new head lives in the base
    keys = [  # the weights the build rewrites: a quantized base of an untouched-base row rewrites those it quantizes
        f"{n}.weight" for n, p in plan.items()
        if method.changes_base or quantization is None or backend.quantizable(p.module, quantization.kind)
    ]  # fmt: skip
    base = backend.open_base_writer(loaded.model, loaded.location, keys, changed and writer)
    for name, layer in plan.items():  # fail before any long work starts
        check_finite(weight_matrix(layer.module), name)
        base.release(layer.module.weight)  # the check read it in; the build reads it when due
    original = {**model_identity(loaded.model), "body_fingerprint": body_fingerprint(loaded.model), **origin(loaded)}
    waves, calibration = _statistics(opts, loaded, method, plan, original["fingerprint"], progress, launch)
    if not writer:  # decompose this process's share of the layers; rank 0 writes the run
        build_adapters(
            method, plan, waves, seed=opts.seed, progress=False, launch=launch, compute=compute, release=base.release
        )
        return BuildResult(Run(out, launch.from_writer(None, patient=True)))  # while rank 0 writes
    with atomic_directory(out) as tmp:
        base.start(tmp / "base")

        def put_base(name: str, module, matrix) -> None:
            base.put(f"{name}.weight", module.weight, stored_weight(module, matrix))

        errors: dict[str, dict] = {}
        adapters = build_adapters(
            method, plan, waves, seed=opts.seed, progress=progress, put_base=put_base, launch=launch, compute=compute,
            release=base.release, quantization=quantization, errors=errors,
        )  # fmt: skip
        mixed_conv1d(adapters)
        base.finish(loaded.model, loaded.tokenizer)
        if quantization is None:
            base_fingerprint = weights_fingerprint(loaded.model)
        else:  # the float weights are written and no longer needed: freed before bitsandbytes loads them again
            loaded.model.to("meta")
            base_fingerprint, quantized = _quantized_base(tmp / "base", quantization, keep_float, errors, opts.head)
        meta = {
            "stage": "built",
            **method.record(),
            "rank": adapter.rank,
            "alpha": adapter.alpha if adapter.alpha is not None else adapter.rank,
            "dropout": adapter.dropout,
            "seed": opts.seed,
            "head": opts.head,
            "num_labels": opts.num_labels,
            "original": original,
            "calibration": calibration,
            "quantization": quantized if quantization is not None else None,
            "build_seconds": round(time.monotonic() - started, 2),
        }
        meta = write_run_files(tmp, meta, adapters, adapters, loaded.model, loaded.tokenizer, changed, base_fingerprint)
    return BuildResult(Run(out, launch.from_writer(meta, patient=True)))
