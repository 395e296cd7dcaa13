"""``svdadapt calibrate``: collect a covariance store for a model over a calibration source."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from .. import backend
from ..atomic import exclusive
from ..calibrate import DTYPES, MODES, PassSettings, accumulate_dtype_option, iter_covariances
from ..calibrate.engine import resolve_mode
from ..calibrate.partial import PARTIAL, PartialRun, check_out_dir
from ..data import samples_digest
from ..data.options import DataOptions
from ..models import PlacementOptions, describe_model, load_model, max_positions, require_float
from ..options import POSITIVE, SEED, Options, group, opt
from ..store import METADATA_FILE, CovarianceStore
from ..targets import find_targets, targets_option
from .common import DEVICE_HELP, MODEL_HELP


@dataclass(kw_only=True)
class CalibrateOptions(Options):
    """Collect the input covariance C = Σ x xᵀ / n (and mean |x|) of every target layer over a
    calibration source, into a resumable covariance store."""

    model: str = opt(help=MODEL_HELP)
    out: str = opt(help="directory of the covariance store to write")
    source: DataOptions = group(DataOptions)
    seed: int = opt(0, "seed for sampling windows and examples", check=SEED)
    targets: str | None = targets_option("cover")
    accumulate_dtype: str = accumulate_dtype_option()
    store_dtype: str = opt("float32", "dtype of the stored covariances (means)", choices=list(DTYPES))
    device: str | None = opt(None, DEVICE_HELP)
    placement: PlacementOptions = group(PlacementOptions)
    mode: str = opt(
        "auto", "blockwise: run blocks one at a time over cached hidden states (low memory); full: one "
        "whole-model pass; auto: blockwise when the targets sit in one block stack",
        choices=["auto", *MODES],
    )  # fmt: skip
    resume: bool = opt(False, "continue an interrupted run into --out (same options required)", how=True)
    checkpoint_seconds: float = opt(
        120.0, "whole-model mode: seconds between resumable checkpoints", check=POSITIVE, how=True
    )


@dataclass
class CalibrateResult:
    store: CovarianceStore
    reused: bool = False  # --out already held this calibration

    def summary(self) -> str:
        store, meta = self.store, self.store.metadata
        shared = [key for key in store.groups if len(store.members(key)) > 1]
        size = sum(p.stat().st_size for p in store.path.glob("*.safetensors")) if store.path else 0
        lines = [
            *([f"svdadapt: {store.path} already holds this calibration; nothing to do"] if self.reused else []),
            f"covariance store: {store.path}",
            f"  model       {meta['model'].get('name')} ({meta['model'].get('architecture')}), "
            f"fingerprint {meta['model']['fingerprint'][:12]}",
            f"  source      {meta['source']['data']}: {meta['samples']} samples, up to {meta['seq_len']} tokens, "
            f"{store.num_tokens} real tokens",
            f"  layers      {len(store.modules)} in {len(store.groups)} covariance groups "
            f"({len(shared)} shared by several layers reading one input)",
            f"  storage     {meta['dtype']}, {size / 2**20:.1f} MiB on disk, {meta.get('mode')} pass, "
            f"{meta.get('seconds', 0):.1f} s",
        ]
        return "\n".join(lines)


def resumable(opts: CalibrateOptions) -> bool:
    """Whether ``--out`` holds a calibration, interrupted or finished, that ``--resume`` continues or
    reuses (when it was made with the same options; else --resume refuses)."""
    out = Path(opts.out).expanduser()
    return (out / PARTIAL).is_dir() or (out / METADATA_FILE).is_file()


def calibrate(opts: CalibrateOptions, progress: bool = True) -> CalibrateResult:
    """Run a calibration as the CLI does: the store is written to ``opts.out``. Under a launcher each
    process takes its share of the batches, the sums are added up across processes, and rank 0
    alone writes (and holds the lock of ``--out``)."""
    out = Path(opts.out).expanduser()
    device = backend.resolve_device(opts.device)
    with backend.launch(device) as launch, exclusive(out) if launch.writer else nullcontext():
        return _calibrate(opts, out, device, progress and launch.writer, launch)


def _calibrate(
    opts: CalibrateOptions, out: Path, device: str, progress: bool, launch: backend.Launch
) -> CalibrateResult:
    started = time.monotonic()
    writer = launch.writer
    if writer:
        check_out_dir(out, opts.resume)
    require_float(opts.model, "calibrating (for a build)")
    loaded = load_model(opts.model, device=device, offload=opts.placement.offload_choice)
    opts.source.check_length(max_positions(loaded.model))
    targets = find_targets(loaded.model, opts.targets)
    mode = resolve_mode(loaded.model, targets, opts.mode, loaded.placement)  # refusals before anything is written
    batches = opts.source.load_batches(loaded.tokenizer, opts.seed)
    launch.check_shares(len(batches))  # before anything is written
    identity = describe_model(loaded)
    source = opts.source.source_spec(opts.seed)
    spec = {
        "model_fingerprint": identity["fingerprint"],
        **source,
        "batch_size": opts.source.batch_size,
        "targets": sorted(targets),
        "accumulate_dtype": opts.accumulate_dtype,
        "store_dtype": opts.store_dtype,
        "mode": mode,
        "samples_digest": samples_digest(batches),  # the text itself: a data file edited since is not resumed
    }
    run = PartialRun(out, spec, opts.resume) if writer else None
    complete, done = launch.from_writer((run.complete, run.done_units()) if writer else None)
    if complete:
        if writer:
            CovarianceStore.load(out).verify()  # complete means every shard is the one written
        launch.barrier()
        return CalibrateResult(CovarianceStore.load(out), reused=True)
    alone = launch.size == 1  # whole-model checkpoints hold one process's sums: not in a launch of several
    if writer and mode == "full" and not alone and run.checkpointed:
        print(f"svdadapt: note: the checkpoint in {out} holds one process's sums; {launch.size} processes "
              "start the whole-model pass over (resume with one process to continue it)")  # fmt: skip
    settings = PassSettings(
        accumulate_dtype=DTYPES[opts.accumulate_dtype], store_dtype=DTYPES[opts.store_dtype], progress=progress,
        total_samples=sum(len(b["input_ids"]) for b in launch.share(batches)),
        start_block=(max(done) + 1) if done else 0,
        resume=run.load_full_state() if mode == "full" and alone else None,
        on_checkpoint=run.save_full_state if alone else None, checkpoint_seconds=opts.checkpoint_seconds,
        placement=loaded.placement, hidden_dir=opts.placement.hidden_states_dir, launch=launch,
    )  # fmt: skip
    for unit, groups in iter_covariances(loaded.model, batches, targets, settings, mode):
        if writer:
            run.write_unit(unit, groups)
    if writer:
        run.finish(
            {
                "model": identity,
                "source": source,
                "samples": sum(len(b["input_ids"]) for b in batches),
                "seq_len": max(b["input_ids"].shape[1] for b in batches),
                "num_tokens": int(sum(b["attention_mask"].sum() for b in batches)),
                "dtype": opts.store_dtype,
                "accumulate_dtype": opts.accumulate_dtype,
                "mode": mode,
                "processes": launch.size,
                "seconds": round(time.monotonic() - started, 2),
            }
        )
    launch.barrier(patient=True)  # the store is complete before any process returns it
    return CalibrateResult(CovarianceStore.load(out))
