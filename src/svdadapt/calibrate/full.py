"""Whole-model calibration: every batch runs through the model once with hooks on all targets.

Simple and architecture-agnostic, but every group's sums live until the last batch. The block-wise
driver (:mod:`.blockwise`) frees them block by block.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..cpu_matmul import fast_linear
from .capture import InputCapture
from .result import FinishedGroup, finish
from .runner import batch_samples, forward_module, model_inputs, module_device


@dataclass
class FullPassState:
    """A resumable point of a whole-model pass: batches consumed and every group's sums."""

    batches_done: int = 0
    samples_done: int = 0
    group_of: dict[str, str] = field(default_factory=dict)
    sums: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def snapshot(capture: InputCapture, batches_done: int, samples_done: int) -> FullPassState:
    return FullPassState(
        batches_done=batches_done,
        samples_done=samples_done,
        group_of=dict(capture.group_of),
        sums={key: g.sums.checkpoint() for key, g in capture.groups.items()},
    )


def restore(capture: InputCapture, state: FullPassState) -> None:
    modules = capture.modules
    for name, key in state.group_of.items():
        if key == name:
            capture.join(name, key, modules[name])
    for name, key in state.group_of.items():
        if key != name:
            capture.join(name, key, modules[name])
    for key, tensors in state.sums.items():
        capture.groups[key].sums.load_state(tensors)


@torch.no_grad()
def full_pass(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    targets: dict[str, nn.Module],
    accumulate_dtype: torch.dtype,
    device: torch.device | str | None = None,
    total_samples: int | None = None,
    resume_from: FullPassState | None = None,
    on_checkpoint: Callable[[FullPassState], None] | None = None,
    checkpoint_seconds: float = 120.0,
    progress: bool = True,
    store_dtype: torch.dtype = torch.float32,
) -> Iterator[FinishedGroup]:
    """Run all batches through ``model`` and yield each group's final statistics at the end."""
    runner, _ = forward_module(model, list(targets))
    run_device = module_device(runner)
    capture = InputCapture(targets, accumulate_dtype, device)
    done, samples = 0, 0
    if resume_from is not None:
        restore(capture, resume_from)
        done, samples = resume_from.batches_done, resume_from.samples_done
        batches = itertools.islice(batches, done, None)
    bar = tqdm(total=total_samples, initial=samples, desc="calibrating", unit="sample", disable=not progress)
    last_save = time.monotonic()
    was_training = model.training
    model.eval()
    try:
        with capture, fast_linear():
            for batch in batches:
                capture.begin_batch(batch.get("attention_mask"))
                runner(**model_inputs(runner, batch, run_device))
                capture.end_batch()
                done += 1
                samples += batch_samples(batch)
                bar.update(batch_samples(batch))
                if on_checkpoint is not None and time.monotonic() - last_save >= checkpoint_seconds:
                    on_checkpoint(snapshot(capture, done, samples))
                    last_save = time.monotonic()
    finally:
        bar.close()
        model.train(was_training)
    for group in list(capture.groups.values()):
        yield finish(group, store_dtype)
        del capture.groups[group.key]  # free each group's sums as soon as it is handed over
