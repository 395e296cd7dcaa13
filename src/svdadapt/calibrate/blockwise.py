"""Block-wise streaming calibration: decoder blocks run one at a time over cached hidden states.

1. One cheap pass per batch records what every block is called with: the embeddings' output (the
   first block's hidden state) and each block's other arguments (masks, rotary tables, ...). Blocks
   are swapped for recorders that return their input, so no block computes anything.
2. Then block by block: move it to the execution device, run every cached batch through it with
   hooks on its targets, keep its outputs as the next block's inputs, hand over its finished
   covariance groups, free them, and move on.

Only one block's covariances (and one block's weights, if the model lives on another device) are
held at a time, so models larger than the accelerator and covariance sets larger than memory can be
calibrated. Assumes, as transformers' decoder and encoder stacks do, that a block's extra arguments
do not depend on the previous block's output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import backend
from ..store import FinishedGroup
from ..targets import block_lists
from .capture import InputCapture
from .result import finish
from .runner import batch_samples, forward_module, model_inputs, module_device
from .settings import PassSettings


class _StopForward(Exception):
    pass


class _Recorder(nn.Module):
    """Stands in for a block during recording: stores the call's arguments, returns the input."""

    def __init__(self, block: nn.Module, calls: list, last: bool) -> None:
        super().__init__()
        self.block = block
        self.calls = calls
        self.last = last

    def forward(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.last:
            raise _StopForward
        return args[0] if args else kwargs["hidden_states"]

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["block"], name)  # e.g. decoder_layer.attention_type


@dataclass
class _BatchRecord:
    hidden: torch.Tensor  # (batch, seq, d): input of the current block
    calls: list  # per block: (args, kwargs) it was called with
    mask: torch.Tensor | None
    samples: int


def find_stack(model: nn.Module, target_names: list[str]) -> tuple[str, nn.ModuleList] | None:
    """The block stack holding every target, or None when targets lie outside one stack."""
    for name, stack in block_lists(model):
        if all(t.startswith(name + ".") for t in target_names):
            return name, stack
    return None


def _to(obj, device: torch.device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _record(runner: nn.Module, stack: nn.ModuleList, batch: Mapping, device: torch.device) -> _BatchRecord:
    originals = list(stack)
    calls: list = []
    try:
        for i, block in enumerate(originals):
            stack[i] = _Recorder(block, calls, last=i == len(originals) - 1)
        with contextlib.suppress(_StopForward):
            runner(**model_inputs(runner, batch, device))
    finally:
        for i, block in enumerate(originals):
            stack[i] = block
    if len(calls) != len(originals):
        raise RuntimeError(f"recorded {len(calls)} block calls for {len(originals)} blocks")
    args, kwargs = calls[0]
    hidden = args[0] if args else kwargs["hidden_states"]
    return _BatchRecord(hidden, calls, batch.get("attention_mask"), batch_samples(batch))


def _run_block(block: nn.Module, record: _BatchRecord, index: int, device: torch.device) -> torch.Tensor:
    args, kwargs = record.calls[index]
    args, kwargs = _to(args, device), _to(kwargs, device)
    hidden = record.hidden.to(device)
    if args:
        out = block(hidden, *args[1:], **kwargs)
    else:
        out = block(**{**kwargs, "hidden_states": hidden})
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def blockwise_pass(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    targets: dict[str, nn.Module],
    settings: PassSettings,
) -> Iterator[tuple[int, list[FinishedGroup]]]:
    """Yield ``(block index, finished groups of that block)`` for every block holding targets.

    ``settings.exec_device`` runs the blocks (default: where the model is); blocks stored elsewhere
    are moved there one at a time. Blocks before ``settings.start_block`` only propagate hidden
    states (resume).
    """
    found = find_stack(model, list(targets))
    if found is None:
        raise ValueError("targets are not all inside one block stack; use the whole-model pass")
    stack_name, stack = found
    runner, _ = forward_module(model, list(targets))
    home = module_device(runner)
    exec_device = torch.device(settings.exec_device) if settings.exec_device is not None else home
    sums_device = settings.sums_device if settings.sums_device is not None else exec_device
    start_block = settings.start_block
    was_training = model.training
    model.eval()
    try:
        records = [_record(runner, stack, batch, home) for batch in batches]
        samples = sum(r.samples for r in records)
        by_block: dict[int, dict[str, nn.Module]] = {}
        for name, module in targets.items():
            index = int(name[len(stack_name) + 1 :].split(".", 1)[0])
            by_block.setdefault(index, {})[name] = module
        last = max(by_block)
        todo = sum(1 for i in by_block if i >= start_block)
        bar = tqdm(total=todo * samples, desc="calibrating", unit="sample", disable=not settings.progress)
        products = backend.on(exec_device).forward_products
        with bar:
            for index in range(last + 1):
                block = stack[index]
                block_home = module_device(block)
                block.to(exec_device)
                hooked = by_block.get(index) if index >= start_block else None
                capture = InputCapture(hooked or {}, settings.accumulate_dtype, sums_device)
                with capture, products():
                    for record in records:
                        capture.begin_batch(record.mask)
                        record.hidden = _run_block(block, record, index, exec_device)
                        capture.end_batch()
                        if hooked:
                            bar.set_postfix_str(f"block {index + 1}/{last + 1}")
                            bar.update(record.samples)
                block.to(block_home)
                if hooked:
                    yield index, [finish(g, settings.store_dtype) for g in capture.groups.values()]
                del capture
    finally:
        model.train(was_training)
