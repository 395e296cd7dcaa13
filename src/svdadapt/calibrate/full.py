"""Whole-model calibration: every batch runs through the model once with hooks on all targets.

Simple and architecture-agnostic, but every group's sums live until the last batch. The block-wise
driver (:mod:`.blockwise`) frees them block by block.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import backend
from ..runner import batch_samples, forward_module, model_inputs, module_device
from ..store import FinishedGroup
from .capture import InputCapture
from .result import finish
from .resume import restore, snapshot
from .settings import PassSettings


@torch.no_grad()
def full_pass(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    targets: dict[str, nn.Module],
    settings: PassSettings,
) -> Iterator[FinishedGroup]:
    """Run all batches through ``model`` and yield each group's final statistics at the end."""
    runner, _ = forward_module(model, list(targets))
    run_device = module_device(runner)
    capture = InputCapture(targets, settings.accumulate_dtype, settings.sums_device)
    done, samples = 0, 0
    if settings.resume is not None:
        restore(capture, settings.resume)
        done, samples = settings.resume.batches_done, settings.resume.samples_done
        batches = itertools.islice(batches, done, None)
    bar = tqdm(
        total=settings.total_samples, initial=samples, desc="calibrating", unit="sample", disable=not settings.progress
    )
    last_save = time.monotonic()
    was_training = model.training
    model.eval()
    try:
        with capture, backend.on(run_device).forward_products():
            for batch in batches:
                capture.begin_batch(batch.get("attention_mask"))
                runner(**model_inputs(runner, batch, run_device))
                capture.end_batch()
                done += 1
                samples += batch_samples(batch)
                bar.update(batch_samples(batch))
                if settings.on_checkpoint is not None and time.monotonic() - last_save >= settings.checkpoint_seconds:
                    settings.on_checkpoint(snapshot(capture, done, samples))
                    last_save = time.monotonic()
    finally:
        bar.close()
        model.train(was_training)
    for group in list(capture.groups.values()):
        yield finish(group, settings.store_dtype, settings.launch)
        del capture.groups[group.key]  # free each group's sums as soon as it is handed over
