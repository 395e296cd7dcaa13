"""The calibration entry points: pick a driver (a row of :data:`MODES`) and run it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import SvdadaptError
from ..fingerprint import model_identity
from ..options import opt
from ..store import CovarianceStore, FinishedGroup, shard_name
from ..targets import find_targets
from .blockwise import blockwise_pass, find_stack
from .full import full_pass
from .settings import PassSettings

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def accumulate_dtype_option(what: str = "the running covariance sums") -> str:
    """The ``--accumulate-dtype`` option of every command that calibrates (calibrate, build on the fly)."""
    return opt("float64", f"dtype of {what}", choices=list(DTYPES))


@dataclass
class Tally:
    """Counts what flows through: samples, real tokens, longest sequence."""

    samples: int = 0
    tokens: int = 0
    longest: int = 0

    def watch(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> Iterator[Mapping[str, torch.Tensor]]:
        for index, batch in enumerate(batches):
            check_batch(batch, index)
            ids = batch["input_ids"]
            mask = batch.get("attention_mask")
            self.samples += int(ids.shape[0])
            self.tokens += int(mask.sum()) if mask is not None else int(ids.numel())
            self.longest = max(self.longest, int(ids.shape[1]))
            yield batch


def check_batch(batch: object, index: int) -> None:
    """A calibration batch is a mapping with ``input_ids`` (batch, seq) of integers and, if given, an
    ``attention_mask`` of the same shape; else a one-line error naming the batch (at the API's edge,
    before torch's own errors from deep inside a forward)."""
    where = f"calibration batch {index}"
    if not isinstance(batch, Mapping) or not isinstance(batch.get("input_ids"), torch.Tensor):
        raise SvdadaptError(f"{where} must be a dict holding an `input_ids` tensor (and `attention_mask`)")
    ids, mask = batch["input_ids"], batch.get("attention_mask")
    if ids.dim() != 2 or ids.is_floating_point() or ids.numel() == 0:
        raise SvdadaptError(f"{where}: `input_ids` must be a non-empty (batch, seq) tensor of token ids")
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.shape != ids.shape):
        raise SvdadaptError(
            f"{where}: `attention_mask` must be a tensor of the shape of `input_ids` {tuple(ids.shape)}"
        )


def _full(model, batches, targets, settings: PassSettings) -> Iterator[tuple[int, list[FinishedGroup]]]:
    yield 0, list(full_pass(model, batches, targets, settings))


MODES: dict[str, Callable] = {"full": _full, "blockwise": blockwise_pass}


def resolve_mode(model: nn.Module, targets: dict[str, nn.Module], mode: str, placement=None) -> str:
    """``auto`` → ``blockwise`` when every target sits in one block stack, else ``full``; an offloaded
    model (``placement``) can only be calibrated block by block."""
    if mode == "auto":
        mode = "blockwise" if find_stack(model, list(targets)) is not None else "full"
    elif mode not in MODES:
        raise SvdadaptError(f"unknown calibration mode {mode!r}; choose auto, {', '.join(MODES)}")
    elif mode == "blockwise" and find_stack(model, list(targets)) is None:
        raise SvdadaptError("--mode blockwise needs every target inside the model's block stack; use --mode full")
    if mode == "full" and placement is not None and placement.offloaded:
        raise SvdadaptError(
            "an offloaded model is calibrated block by block, and these targets are not all inside its block "
            "stack: choose targets inside the blocks (--targets), or load it whole (--offload off, enough memory)"
        )
    return mode


def iter_covariances(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    targets: str | Sequence[str] | dict[str, nn.Module] | None = None,
    settings: PassSettings | None = None,
    mode: str = "auto",
) -> Iterator[tuple[int, list[FinishedGroup]]]:
    """Yield ``(unit, finished groups)`` as covariances become final: one unit per block in
    block-wise mode (so callers can decompose and free them at once), a single unit 0 otherwise.

    In a launch of several processes (``settings.launch``) each process takes its share of the
    batches and the sums are added up."""
    modules = targets if isinstance(targets, dict) else find_targets(model, targets)
    settings = settings or PassSettings()
    mode = resolve_mode(model, modules, mode, settings.placement)
    yield from MODES[mode](model, settings.launch.share(batches), modules, settings)


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
    tally = Tally()
    for index, batch in enumerate(batches if isinstance(batches, Sequence) else ()):
        check_batch(batch, index)
    total = sum(int(b["input_ids"].shape[0]) for b in batches) if isinstance(batches, Sequence) else None
    settings = PassSettings(accumulate_dtype, store_dtype, device, progress=progress, total_samples=total)
    store = CovarianceStore()
    for unit, groups in iter_covariances(model, tally.watch(batches), targets, settings, mode):
        for group in groups:
            store.add(group, shard_name(unit))
    if tally.tokens == 0:
        raise SvdadaptError("calibration saw no token: give batches holding unmasked tokens")
    store.metadata.update(
        model=model_identity(model),
        samples=tally.samples,
        seq_len=tally.longest,
        num_tokens=tally.tokens,
        dtype=str(store_dtype).removeprefix("torch."),
        accumulate_dtype=str(accumulate_dtype).removeprefix("torch."),
    )
    return store
