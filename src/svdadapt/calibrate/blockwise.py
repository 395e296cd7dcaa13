"""Block-wise streaming calibration: decoder blocks run one at a time over cached hidden states.

1. One cheap pass per batch records what every block is called with: the embeddings' output (the
   first block's hidden state) and each block's other arguments (masks, rotary tables, ...). Blocks
   are swapped for recorders that return their input, so no block computes anything.
2. Then block by block: move it to the execution device, run every cached batch through it with
   hooks on its targets, keep its outputs as the next block's inputs, hand over its finished
   covariance groups, free them, and move on.

Only one block's covariances (and, offloaded, one block's weights on the compute device: see
:func:`svdadapt.backend.on_compute`) are held at a time, so models larger than the accelerator and
covariance sets larger than memory can be calibrated. The cached hidden states live where the back
end's :class:`~svdadapt.backend.HiddenStates` puts them (device, host, or memory-mapped files).
Assumes, as transformers' decoder and encoder stacks do, that a block's extra arguments
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
    """Stands in for a block during recording: stores the call's arguments, returns the input. The
    block is not its submodule, so bringing the model body to a device leaves the blocks alone."""

    def __init__(self, block: nn.Module, calls: list, last: bool) -> None:
        super().__init__()
        object.__setattr__(self, "_block", block)
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
            return getattr(self.__dict__["_block"], name)  # e.g. decoder_layer.attention_type


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


def _to(obj, device: torch.device, dtype: torch.dtype | None = None, memo: dict | None = None):
    """Tensors in ``obj`` on ``device``; floating ones also in ``dtype`` (when given). A tensor met
    twice (blocks share their rotary tables and masks) is moved once when ``memo`` is given."""
    if isinstance(obj, torch.Tensor):
        if memo is not None and id(obj) in memo:
            return memo[id(obj)]
        moved = obj.to(device, dtype=dtype if dtype is not None and obj.is_floating_point() else None)
        if memo is not None:
            memo[id(obj)] = moved
        return moved
    if isinstance(obj, tuple):
        return tuple(_to(o, device, dtype, memo) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device, dtype, memo) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device, dtype, memo) for k, v in obj.items()}
    return obj


@contextlib.contextmanager
def _recorders(stack: nn.ModuleList) -> Iterator[list]:
    """Swap the stack's blocks for recorders; yields the list each batch's calls are appended to."""
    originals = list(stack)
    calls: list = []
    try:
        for i, block in enumerate(originals):
            stack[i] = _Recorder(block, calls, last=i == len(originals) - 1)
        yield calls
    finally:
        for i, block in enumerate(originals):
            stack[i] = block


def _record(runner: nn.Module, batch: Mapping, calls: list, blocks: int, placement: backend.Placement) -> _BatchRecord:
    """One batch through the body with recorders in the stack (:func:`_recorders`); what the blocks
    were called with is kept where the weights live."""
    calls.clear()
    with contextlib.suppress(_StopForward):
        runner(**model_inputs(runner, batch, placement.compute))
    if len(calls) != blocks:
        raise RuntimeError(f"recorded {len(calls)} block calls for {blocks} blocks")
    recorded = _to(list(calls), placement.home, memo={}) if placement.offloaded else list(calls)
    args, kwargs = recorded[0]
    hidden = args[0] if args else kwargs["hidden_states"]
    return _BatchRecord(hidden, recorded, batch.get("attention_mask"), batch_samples(batch))


def _run_block(block: nn.Module, record: _BatchRecord, index: int, placement: backend.Placement) -> torch.Tensor:
    device, dtype = placement.compute, placement.dtype
    args, kwargs = record.calls[index]
    args, kwargs = _to(args, device, dtype), _to(kwargs, device, dtype)
    hidden = _to(record.hidden, device, dtype)
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

    ``settings.placement`` says where blocks run (an offloaded model's blocks are brought to the
    compute device one at a time); ``settings.exec_device``, where no placement is given, runs
    them on that device instead of where the model is. Blocks before ``settings.start_block`` only
    propagate hidden states (resume).
    """
    found = find_stack(model, list(targets))
    if found is None:
        raise ValueError("targets are not all inside one block stack; use the whole-model pass")
    stack_name, stack = found
    runner, _ = forward_module(model, list(targets))
    home = module_device(runner)
    placement = settings.placement
    if placement is None:
        exec_device = torch.device(settings.exec_device) if settings.exec_device is not None else home
        placement = backend.Placement(exec_device, offloaded=exec_device != home)
    exec_device = placement.compute
    sums_device = settings.sums_device if settings.sums_device is not None else exec_device
    start_block = settings.start_block
    was_training = model.training
    model.eval()
    batches = list(batches)
    hidden_states = backend.HiddenStates(placement, len(batches), settings.hidden_dir)
    try:
        with _recorders(stack) as calls, backend.on_compute(runner, placement):  # embeddings, rotary tables
            records = [_record(runner, batch, calls, len(stack), placement) for batch in batches]
        for i, record in enumerate(records):
            record.hidden = hidden_states.keep(i, record.hidden)
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
                hooked = by_block.get(index) if index >= start_block else None
                capture = InputCapture(hooked or {}, settings.accumulate_dtype, sums_device)
                with backend.on_compute(block, placement), capture, products():
                    for i, record in enumerate(records):
                        capture.begin_batch(record.mask)
                        record.hidden = hidden_states.keep(i, _run_block(block, record, index, placement))
                        capture.end_batch()
                        if hooked:
                            bar.set_postfix_str(f"block {index + 1}/{last + 1}")
                            bar.update(record.samples)
                if hooked:
                    yield index, [finish(g, settings.store_dtype) for g in capture.groups.values()]
                del capture
    finally:
        hidden_states.close()
        model.train(was_training)
