"""Where a model's weights live and where work on them runs: in place, or offloaded.

In place (the model fits): the model is loaded on the compute device in the compute dtype and
everything runs there. Offloaded: the model stays memory-mapped from its safetensors checkpoint in
the dtype it is stored in, on the host, and each piece of work (a decoder block's forward passes,
one layer's decomposition) gets its weights on the compute device, in the compute dtype, only for
as long as it runs (:func:`on_compute`); the mapped pages go back to the OS after (its
:class:`~svdadapt.backend.pages.MappedPages`). Peak memory is then about one block, its
covariances and the cached hidden states, whatever the model's size.

:func:`place` decides: offloaded when asked; or (auto) whenever in place would hold more than
offloaded would: when the model in the compute dtype would take more than :data:`FIT_FRACTION` of
the compute device's free memory, or when computing in another dtype than the stored one would
convert (copy) the whole model in place, e.g. a bfloat16 checkpoint computed in float32 on the
CPU, where offloaded converts one block at a time and maps the rest as stored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .checkpoint import DTYPES, checkpoint_dir, read_slots, shard_names
from .pages import MappedPages

FIT_FRACTION = 0.8  # of the free memory a model in place may take (the rest: activations, covariances)


@dataclass
class Placement:
    """Where weights live (``home``) and where work runs (``compute``, in ``dtype``)."""

    compute: torch.device
    offloaded: bool = False
    dtype: torch.dtype | None = None  # compute dtype of floating weights (None: as loaded)
    reason: str = ""  # why offloaded (for the note the CLI prints)
    pages: MappedPages = field(default_factory=MappedPages, repr=False)  # what may go back to the OS

    @property
    def home(self) -> torch.device:
        return torch.device("cpu") if self.offloaded else self.compute

    def load_dtype(self, default: torch.dtype | str) -> torch.dtype | str:
        """The dtype to load the model in: as stored when offloaded, else ``default``."""
        return "auto" if self.offloaded else default

    def watch(self, location: str) -> None:
        """Note the clean private mappings of ``location``'s checkpoint (after loading it), whose
        pages :meth:`release` may hand back, and hand back what loading read in."""
        self.pages = MappedPages.of_checkpoint(location)
        self.pages.release_all()

    @property
    def mapped(self) -> bool:
        """Whether the loaded weights are read from a mapped checkpoint (not copied into memory)."""
        return bool(self.pages)

    def release(self, tensor: torch.Tensor) -> None:
        """Hand back the mapped pages under ``tensor`` (a later read faults them in again)."""
        self.pages.release(tensor)


def _compute_dtype(device: torch.device) -> torch.dtype | None:
    return torch.float32 if device.type == "cpu" else None


def checkpoint_bytes(location: str, dtype: torch.dtype | None) -> int | None:
    """The bytes of a safetensors checkpoint's tensors, in ``dtype`` if given (else as stored)."""
    source = checkpoint_dir(location)
    shards = shard_names(source) if source is not None else None
    if not shards:
        return None
    total = 0
    for shard in shards:
        slots = read_slots(source / shard)
        if slots is None:
            return None
        for slot in slots.values():
            itemsize = dtype.itemsize if dtype is not None and slot.dtype in DTYPES.values() else slot.dtype.itemsize
            total += slot.nbytes // slot.dtype.itemsize * itemsize
    return total


def free_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device`` (host: MemAvailable), or None where unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def place(location: str, device: str | torch.device, offload: bool | None) -> Placement:
    """In place or offloaded on ``device``: as ``offload`` says, or (None) offloaded whenever in place
    would hold more (see the module docstring); the reason goes with it."""
    device = torch.device(device)
    dtype = _compute_dtype(device)
    if offload is False:
        return Placement(device)
    if offload:
        return Placement(device, True, dtype, "asked for (--offload)")
    reason = _offload_reason(location, device, dtype)
    return Placement(device, True, dtype, reason) if reason else Placement(device)


def _offload_reason(location: str, device: torch.device, dtype: torch.dtype | None) -> str:
    """Why offloaded would hold less than in place ("" where it would not, or where unknown)."""
    needed = checkpoint_bytes(location, dtype)
    if needed is None:
        return ""
    free = free_memory(device)
    if free is not None and needed > FIT_FRACTION * free:
        return f"the model takes {needed / 2**30:.1f} GiB, {device.type} has {free / 2**30:.1f} GiB free"
    stored = checkpoint_bytes(location, None)
    if dtype is not None and stored is not None and stored != needed:  # in place converts every weight
        return (
            f"in place would convert the whole model to {str(dtype).removeprefix('torch.')} "
            f"({needed / 2**30:.2f} GiB); offloaded converts one block at a time"
        )
    return ""


@contextlib.contextmanager
def on_compute(module: nn.Module, placement: Placement, private: bool = False) -> Iterator[nn.Module]:
    """``module``'s parameters and buffers on the compute device, in the compute dtype, for the
    block of the ``with``; then the original tensors again (nothing is copied back) and their
    mapped pages handed back. In place a no-op, unless ``private``: then the block of the ``with``
    gets copies it may change, and the module's own tensors are left as they were."""
    if not placement.offloaded and not private:
        yield module
        return
    saved: list[tuple[nn.Module, str, torch.Tensor, bool]] = []
    try:
        for owner in module.modules():
            for kind, tensors in ((True, owner._parameters), (False, owner._buffers)):
                for name, tensor in tensors.items():
                    if tensor is None:
                        continue
                    dtype = placement.dtype if placement.dtype is not None and tensor.is_floating_point() else None
                    moved = tensor.data.to(placement.compute, dtype=dtype, copy=private)
                    saved.append((owner, name, tensor.data, kind))
                    if kind:
                        tensor.data = moved
                    else:
                        tensors[name] = moved
        yield module
    finally:
        for owner, name, original, is_param in reversed(saved):
            if is_param:
                owner._parameters[name].data = original
            else:
                owner._buffers[name] = original
            placement.release(original)
