"""Running a model's block stack one block at a time over every batch's cached hidden states.

1. One cheap pass per batch records what every block is called with: the embeddings' output (the
   first block's hidden state) and each block's other arguments (masks, rotary tables, ...). Blocks
   are swapped for recorders that return their input, so no block computes anything.
2. Then block by block (:meth:`BlockStream.advance`): the block comes to the compute device
   (:func:`svdadapt.backend.on_compute`), every batch's hidden state goes through it and becomes
   the next block's input, and the block leaves.
3. For outputs of the whole model (:meth:`BlockStream.outputs`), the model runs once more per batch
   with the stack replaced by a stand-in that hands over the last block's output: whatever follows
   the stack (final norm, head) runs as the model itself runs it.

The calibration's block-wise pass and the offloaded perplexity are built on it. Assumes, as
transformers' decoder and encoder stacks do, that a block's extra arguments do not depend on the
previous block's output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from . import backend
from .runner import batch_samples, forward_module, model_inputs, module_device
from .targets import block_lists


class _StopForward(Exception):
    pass


class _StandIn(nn.Module):
    """Takes a block's place in the stack; reads of the block's attributes (e.g. a decoder layer's
    ``attention_type``) go to the block, which is not its submodule: bringing the model body to a
    device leaves the blocks alone."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_block", block)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_block"], name)


def _hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


class _Recorder(_StandIn):
    """Stores the call's arguments and returns the input (the last one stops the forward)."""

    def __init__(self, block: nn.Module, calls: list, last: bool) -> None:
        super().__init__(block)
        self.calls = calls
        self.last = last

    def forward(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.last:
            raise _StopForward
        return _hidden_of(args, kwargs)


class _Handover(_StandIn):
    """Returns the hidden state waiting in ``final`` (the stack's output for the batch), else its input."""

    def __init__(self, block: nn.Module, final: list) -> None:
        super().__init__(block)
        self.final = final

    def forward(self, *args, **kwargs):
        return self.final.pop() if self.final else _hidden_of(args, kwargs)


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


def block_index(stack_name: str, name: str) -> int:
    """The block of stack ``stack_name`` that the module named ``name`` lies in."""
    return int(name[len(stack_name) + 1 :].split(".", 1)[0])


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
def _swapped(stack: nn.ModuleList, make: Callable[[int, nn.Module], nn.Module]) -> Iterator[None]:
    """The stack's blocks replaced by ``make(index, block)`` for the block of the ``with``."""
    originals = list(stack)
    try:
        for i, block in enumerate(originals):
            stack[i] = make(i, block)
        yield
    finally:
        for i, block in enumerate(originals):
            stack[i] = block


def _record(runner: nn.Module, batch: Mapping, calls: list, blocks: int, placement: backend.Placement) -> _BatchRecord:
    """One batch through the body with recorders appending to ``calls`` in the stack; what the
    blocks were called with is kept where the weights live."""
    calls.clear()
    with contextlib.suppress(_StopForward):
        runner(**model_inputs(runner, batch, placement.compute))
    if len(calls) != blocks:
        raise RuntimeError(f"recorded {len(calls)} block calls for {blocks} blocks")
    recorded = _to(list(calls), placement.home, memo={}) if placement.offloaded else list(calls)
    return _BatchRecord(_hidden_of(*recorded[0]), recorded, batch.get("attention_mask"), batch_samples(batch))


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


class BlockStream:
    """Every batch's hidden state at one point of a model's block stack (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[Mapping[str, torch.Tensor]],
        target_names: list[str] | None = None,
        placement: backend.Placement | None = None,
        hidden_dir=None,
    ) -> None:
        found = find_stack(model, target_names or [])
        if found is None:
            raise ValueError("targets are not all inside one block stack; use the whole-model pass")
        self.model, self.batches = model, list(batches)
        self.stack_name, self.stack = found
        self.runner, _ = forward_module(model, target_names or [f"{self.stack_name}.0"])
        home = module_device(self.runner)
        self.placement = placement or backend.Placement(home)
        self.hidden_states = backend.HiddenStates(self.placement, len(self.batches), hidden_dir)
        self.records: list[_BatchRecord] = []

    def __enter__(self) -> BlockStream:
        placement, calls, last = self.placement, [], len(self.stack) - 1
        recorders = _swapped(self.stack, lambda i, block: _Recorder(block, calls, i == last))
        with recorders, backend.on_compute(self.runner, placement):  # embeddings, rotary tables
            self.records = [_record(self.runner, b, calls, len(self.stack), placement) for b in self.batches]
        for i, record in enumerate(self.records):
            record.hidden = self.hidden_states.keep(i, record.hidden)
        return self

    def __exit__(self, *exc) -> None:
        self.hidden_states.close()
        self.records = []

    @property
    def samples(self) -> int:
        return sum(r.samples for r in self.records)

    def block_index(self, name: str) -> int:
        """The block a module named ``name`` (inside the stack) belongs to."""
        return block_index(self.stack_name, name)

    def advance(
        self,
        index: int,
        before: Callable[[_BatchRecord], None] | None = None,
        after: Callable[[_BatchRecord], None] | None = None,
        change: Callable[[nn.Module], None] | None = None,
    ) -> None:
        """Every batch through block ``index`` (on the compute device), calling ``before``/``after``
        around each batch; ``change(block)`` edits the block's weights for this pass only (the
        model's own weights are left as they are)."""
        block = self.stack[index]
        products = backend.on(self.placement.compute).forward_products
        with backend.on_compute(block, self.placement, private=change is not None) as moved, products():
            if change is not None:
                change(moved)
            for i, record in enumerate(self.records):
                if before is not None:
                    before(record)
                record.hidden = self.hidden_states.keep(i, _run_block(block, record, index, self.placement))
                if after is not None:
                    after(record)

    def outputs(self, each: Callable[[Mapping[str, torch.Tensor], object], None]) -> None:
        """Run what follows the stack for every batch: ``each(batch, model output)``."""
        final: list = []
        handovers = _swapped(self.stack, lambda _i, block: _Handover(block, final))
        with handovers, backend.on_compute(self.model, self.placement):
            for batch, record in zip(self.batches, self.records, strict=True):
                final[:] = [_to(record.hidden, self.placement.compute, self.placement.dtype)]
                each(batch, self.model(**model_inputs(self.model, batch, self.placement.compute)))
