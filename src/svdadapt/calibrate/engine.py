"""The calibration entry points: pick a driver (a row of :data:`MODES`) and run it."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import SvdadaptError
from ..fingerprint import model_identity
from ..targets import find_targets
from .blockwise import blockwise_pass, find_stack
from .full import FullPassState, full_pass
from .result import FinishedGroup, distributed

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class Tally:
    """Counts what flows through: samples, real tokens, longest sequence."""

    samples: int = 0
    tokens: int = 0
    longest: int = 0

    def watch(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> Iterator[Mapping[str, torch.Tensor]]:
        for batch in batches:
            ids = batch["input_ids"]
            mask = batch.get("attention_mask")
            self.samples += int(ids.shape[0])
            self.tokens += int(mask.sum()) if mask is not None else int(ids.numel())
            self.longest = max(self.longest, int(ids.shape[1]))
            yield batch


def _full(model, batches, targets, dtype, device, total, resume, progress, store_dtype, **_):
    state, on_checkpoint = resume if resume is not None else (None, None)
    passed = full_pass(
        model, batches, targets, dtype, device, total, state, on_checkpoint, progress=progress, store_dtype=store_dtype
    )
    yield 0, list(passed)


def _blockwise(model, batches, targets, dtype, device, total, resume, progress, store_dtype, start_block=0,
               exec_device=None):  # fmt: skip
    yield from blockwise_pass(
        model, batches, targets, dtype, device, exec_device, total, start_block=start_block, progress=progress,
        store_dtype=store_dtype,
    )  # fmt: skip


MODES: dict[str, Callable] = {"full": _full, "blockwise": _blockwise}


def resolve_mode(model: nn.Module, targets: dict[str, nn.Module], mode: str) -> str:
    """``auto`` → ``blockwise`` when every target sits in one block stack, else ``full``."""
    if mode == "auto":
        return "blockwise" if find_stack(model, list(targets)) is not None else "full"
    if mode not in MODES:
        raise SvdadaptError(f"unknown calibration mode {mode!r}; choose auto, {', '.join(MODES)}")
    if mode == "blockwise" and find_stack(model, list(targets)) is None:
        raise SvdadaptError("--mode blockwise needs every target inside the model's block stack; use --mode full")
    return mode


def _rank_share(batches: Sequence | Iterable) -> Iterable:
    """Under torch.distributed, each rank takes every world_size-th batch."""
    if not distributed():
        return batches
    return itertools.islice(batches, dist.get_rank(), None, dist.get_world_size())


def iter_covariances(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    targets: str | Sequence[str] | dict[str, nn.Module] | None = None,
    accumulate_dtype: torch.dtype = torch.float64,
    *,
    device: torch.device | str | None = None,
    mode: str = "auto",
    progress: bool = True,
    total_samples: int | None = None,
    start_block: int = 0,
    exec_device: torch.device | str | None = None,
    full_resume: tuple[FullPassState | None, Callable | None] | None = None,
    store_dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[int, list[FinishedGroup]]]:
    """Yield ``(unit, finished groups)`` as covariances become final: one unit per block in
    block-wise mode (so callers can decompose and free them at once), a single unit 0 otherwise.

    Sums run in ``accumulate_dtype``; the final means are handed over in ``store_dtype``."""
    modules = targets if isinstance(targets, dict) else find_targets(model, targets)
    driver = MODES[resolve_mode(model, modules, mode)]
    yield from driver(
        model,
        _rank_share(batches),
        modules,
        accumulate_dtype,
        device,
        total_samples,
        full_resume,
        progress,
        store_dtype,
        start_block=start_block,
        exec_device=exec_device,
    )


def collect_covariances(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    targets: str | Sequence[str] | None = None,
    accumulate_dtype: torch.dtype = torch.float64,
    *,
    store_dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    mode: str = "auto",
    progress: bool = False,
):
    """Input covariances of the target layers over ``batches`` → an in-memory :class:`CovarianceStore`.

    ``batches`` yields dicts with ``input_ids`` and ``attention_mask`` (batch, seq) tensors; padding
    (mask 0) never enters a covariance. ``targets`` are PEFT-style patterns (default: every linear
    layer in the model's blocks). Layers reading the same input share one covariance. Sums run in
    ``accumulate_dtype``; the stored means are ``store_dtype`` (float32 halves memory and disk at a
    relative rounding of 6e-8, far below the 1% damping every decomposition adds).
    """
    from ..store import CovarianceStore, shard_name

    tally = Tally()
    total = sum(int(b["input_ids"].shape[0]) for b in batches) if isinstance(batches, Sequence) else None
    store = CovarianceStore()
    for unit, groups in iter_covariances(
        model, tally.watch(batches), targets, accumulate_dtype,
        device=device, mode=mode, progress=progress, total_samples=total, store_dtype=store_dtype,
    ):  # fmt: skip
        for group in groups:
            store.add(group, shard_name(unit))
    store.metadata.update(
        model=model_identity(model),
        samples=tally.samples,
        seq_len=tally.longest,
        num_tokens=tally.tokens,
        dtype=str(store_dtype).removeprefix("torch."),
        accumulate_dtype=str(accumulate_dtype).removeprefix("torch."),
    )
    return store
