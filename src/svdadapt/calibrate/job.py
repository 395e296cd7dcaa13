"""``svdadapt calibrate``: collect a covariance store for a model over a calibration source."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..backend import resolve_device
from ..data.options import DataOptions
from ..errors import SvdadaptError
from ..models import describe_model, load_model, max_positions
from ..options import opt
from ..store import CovarianceStore
from ..targets import find_targets
from .engine import DTYPES, MODES, iter_covariances, resolve_mode
from .partial import PartialRun, check_out_dir
from .settings import PassSettings

MODEL_HELP = "local model directory, hub id, `default` (SmolLM2-135M-Instruct) or `default-encoder` (all-MiniLM-L6-v2)"


@dataclass(kw_only=True)
class CalibrateOptions(DataOptions):
    """Collect the input covariance C = Σ x xᵀ / n (and mean |x|) of every target layer over a
    calibration source, into a resumable covariance store."""

    model: str = opt(help=MODEL_HELP)
    out: str = opt(help="directory of the covariance store to write")
    targets: str | None = opt(
        None, "layers to cover: comma-separated name suffixes or re:REGEX (default: every linear layer "
        "in the model's blocks, not the head)",
    )  # fmt: skip
    accumulate_dtype: str = opt("float64", "dtype of the running sums", choices=list(DTYPES))
    store_dtype: str = opt("float32", "dtype of the stored covariances (means)", choices=list(DTYPES))
    device: str | None = opt(None, "cpu, cuda or cuda:N (default: cuda when available)")
    mode: str = opt(
        "auto", "blockwise: run blocks one at a time over cached hidden states (low memory); full: one "
        "whole-model pass; auto: blockwise when the targets sit in one block stack",
        choices=["auto", *MODES],
    )  # fmt: skip
    resume: bool = opt(False, "continue an interrupted run into --out (same options required)")
    checkpoint_seconds: float = opt(120.0, "whole-model mode: seconds between resumable checkpoints")


def calibrate(opts: CalibrateOptions, progress: bool = True) -> CovarianceStore:
    """Run a calibration as the CLI does; returns the store written to ``opts.out``."""
    started = time.monotonic()
    opts.validate()
    if opts.checkpoint_seconds <= 0:
        raise SvdadaptError(f"--checkpoint-seconds must be positive, got {opts.checkpoint_seconds}")
    out = Path(opts.out).expanduser()
    check_out_dir(out, opts.resume)
    device = resolve_device(opts.device)
    loaded = load_model(opts.model, device=device)
    opts.validate(max_positions(loaded.model))
    targets = find_targets(loaded.model, opts.targets)
    mode = resolve_mode(loaded.model, targets, opts.mode)
    batches = opts.load_batches(loaded.tokenizer)
    identity = describe_model(loaded)
    spec = {
        "model_fingerprint": identity["fingerprint"],
        **opts.source_spec(),
        "batch_size": opts.batch_size,
        "targets": sorted(targets),
        "accumulate_dtype": opts.accumulate_dtype,
        "store_dtype": opts.store_dtype,
        "mode": mode,
    }
    run = PartialRun(out, spec, opts.resume)
    if run.complete:
        print(f"svdadapt: {out} already holds this calibration; nothing to do")
        return CovarianceStore.load(out)
    done = run.done_units()
    state = run.load_full_state() if mode == "full" else None
    settings = PassSettings(
        accumulate_dtype=DTYPES[opts.accumulate_dtype], store_dtype=DTYPES[opts.store_dtype], progress=progress,
        total_samples=sum(len(b["input_ids"]) for b in batches), start_block=(max(done) + 1) if done else 0,
        resume=state, on_checkpoint=run.save_full_state, checkpoint_seconds=opts.checkpoint_seconds,
    )  # fmt: skip
    for unit, groups in iter_covariances(loaded.model, batches, targets, settings, mode):
        run.write_unit(unit, groups)
    store = run.finish(
        {
            "model": identity,
            "source": opts.source_spec(),
            "samples": sum(len(b["input_ids"]) for b in batches),
            "seq_len": max(b["input_ids"].shape[1] for b in batches),
            "num_tokens": int(sum(b["attention_mask"].sum() for b in batches)),
            "dtype": opts.store_dtype,
            "accumulate_dtype": opts.accumulate_dtype,
            "mode": mode,
            "seconds": round(time.monotonic() - started, 2),
        }
    )
    return store


def summary(store: CovarianceStore) -> str:
    """A few lines describing a store."""
    meta = store.metadata
    shared = [key for key in store.groups if len(store.members(key)) > 1]
    size = sum(p.stat().st_size for p in store.path.glob("*.safetensors")) if store.path else 0
    lines = [
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
