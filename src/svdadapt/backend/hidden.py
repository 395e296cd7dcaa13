"""Where a block-wise pass keeps every batch's hidden states between blocks.

On the compute device when the model is in place; on the host (in the compute dtype) when it is
offloaded; in memory-mapped files when asked (a directory) or when, held on the host, they would
take more than :data:`SPILL_FRACTION` of its free memory (256 × 2048 tokens of a 70B model's 8192-wide
states are 17 GB in float32). A file slot per batch is overwritten in place block after block, so
the files hold one copy of the states and the OS pages them in and out as it needs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from .placement import Placement, free_memory

SPILL_FRACTION = 0.5


PREFIX = "svdadapt-hidden-"  # + the writing process's pid + "-" + a random part


def remove_orphans(parent: Path) -> None:
    """Remove the hidden-state folders in ``parent`` whose process is gone (killed before it could
    clean up: SIGKILL, a node lost), so that they do not pile up in the temporary directory."""
    for folder in parent.glob(f"{PREFIX}*-*"):
        pid = folder.name[len(PREFIX) :].split("-")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # alive, another user's
            continue


class HiddenStates:
    """Slots for ``count`` batches' hidden states (see the module docstring); close() removes files."""

    def __init__(self, placement: Placement, count: int, directory: str | Path | None = None) -> None:
        self.placement, self.count = placement, count
        self.requested = Path(directory).expanduser() if directory is not None else None
        self.directory: Path | None = None
        self.slots: dict[int, torch.Tensor] = {}
        self.spilled: bool | None = None  # decided at the first batch

    def _spill(self, nbytes: int) -> bool:
        if self.spilled is None:
            on_host = self.placement.offloaded or torch.device(self.placement.home).type == "cpu"
            free = free_memory(torch.device("cpu")) if on_host else None
            too_big = free is not None and self.count * nbytes > SPILL_FRACTION * free
            self.spilled = self.requested is not None or too_big
        return self.spilled

    def keep(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """Batch ``index``'s hidden states (compute dtype), kept where they belong; returns them."""
        if self.placement.dtype is not None and hidden.is_floating_point():
            hidden = hidden.to(self.placement.dtype)
        slot = self.slots.get(index)
        if slot is None and not self._spill(hidden.numel() * hidden.element_size()):
            return hidden.to(self.placement.home)
        if slot is None:
            slot = self._new_slot(index, hidden)
        slot.copy_(hidden)
        return slot

    def _new_slot(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        if self.directory is None:
            parent = self.requested
            if parent is not None:
                parent.mkdir(parents=True, exist_ok=True)
            remove_orphans(Path(parent) if parent is not None else Path(tempfile.gettempdir()))
            self.directory = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent))
        path = self.directory / f"batch-{index}.bin"
        size = hidden.numel()
        slot = torch.from_file(str(path), shared=True, size=size, dtype=hidden.dtype).view(hidden.shape)
        self.slots[index] = slot
        return slot

    def close(self) -> None:
        self.slots.clear()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> HiddenStates:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
