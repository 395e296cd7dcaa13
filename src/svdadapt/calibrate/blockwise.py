"""Block-wise streaming calibration: decoder blocks run one at a time over cached hidden states.

The stream (:class:`svdadapt.streaming.BlockStream`) records every batch's input to the first
block, then advances the batches block by block; while a block holding targets runs, hooks on its
targets sum their inputs, and its finished covariance groups are handed over and freed before the
next block.

Only one block's covariances (and, offloaded, one block's weights on the compute device: see
:func:`svdadapt.backend.on_compute`) are held at a time, so models larger than the accelerator and
covariance sets larger than memory can be calibrated. The cached hidden states live where the back
end's :class:`~svdadapt.backend.HiddenStates` puts them (device, host, or memory-mapped files).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import backend
from ..runner import module_device
from ..store import FinishedGroup
from ..streaming import BlockStream, find_stack
from .capture import InputCapture
from .result import finish
from .settings import PassSettings

__all__ = ["blockwise_pass", "find_stack"]


@torch.no_grad()
def blockwise_pass(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    targets: dict[str, nn.Module],
    settings: PassSettings,
) -> Iterator[tuple[int, list[FinishedGroup]]]:
    """Yield ``(block index, finished groups of that block)`` for every block holding targets.

    ``settings.placement`` says where blocks run (an offloaded model's blocks are brought to the
    compute device one at a time); ``settings.exec_device``, where no placement is given, runs
    them on that device instead of where the model is. Blocks before ``settings.start_block`` only
    propagate hidden states (resume).
    """
    home = module_device(model)
    placement = settings.placement
    if placement is None:
        exec_device = torch.device(settings.exec_device) if settings.exec_device is not None else home
        placement = backend.Placement(exec_device, offloaded=exec_device != home)
    sums_device = settings.sums_device if settings.sums_device is not None else placement.compute
    start_block = settings.start_block
    was_training = model.training
    model.eval()
    try:
        with BlockStream(model, list(batches), list(targets), placement, settings.hidden_dir) as stream:
            by_block: dict[int, dict[str, nn.Module]] = {}
            for name, module in targets.items():
                by_block.setdefault(stream.block_index(name), {})[name] = module
            last = max(by_block)
            todo = sum(1 for i in by_block if i >= start_block)
            bar = SampleBar(stream.samples, todo, settings.progress)
            with bar:
                for index in range(last + 1):
                    hooked = by_block.get(index) if index >= start_block else None
                    label = f"block {index + 1}/{last + 1}"
                    groups = _block_sums(stream, index, hooked or {}, settings, sums_device, bar, label)
                    if hooked:
                        yield index, groups
    finally:
        model.train(was_training)


class SampleBar:
    """The progress bar of a block-wise pass, in samples: every sample goes through each of ``blocks``
    blocks, so the bar stands at the samples' passes so far over ``blocks`` (whole ones), the block
    running beside it."""

    def __init__(self, samples: int, blocks: int, shown: bool) -> None:
        self.bar = tqdm(total=samples, desc="calibrating", unit="sample", disable=not shown)
        self.blocks, self.passes = max(blocks, 1), 0

    def advance(self, samples: int, label: str) -> None:
        self.passes += samples
        self.bar.set_postfix_str(label, refresh=False)
        self.bar.update(self.passes // self.blocks - self.bar.n)

    def __enter__(self) -> SampleBar:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def _block_sums(
    stream: BlockStream, index: int, hooked: dict, settings: PassSettings, sums_device, bar: SampleBar, label: str
):
    """Block ``index`` over every batch with its ``hooked`` targets summing their inputs; their
    finished groups (none without targets)."""
    capture = InputCapture(hooked, settings.accumulate_dtype, sums_device)

    def after(record) -> None:
        capture.end_batch()
        if hooked:
            bar.advance(record.samples, label)

    with capture:
        stream.advance(index, before=lambda record: capture.begin_batch(record.mask), after=after)
    return [finish(g, settings.store_dtype, settings.launch) for g in capture.groups.values()] if hooked else []
