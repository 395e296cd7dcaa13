"""Writing a run's frozen base (``RUN/base``), and handing the memory it no longer needs back.

A build changes some weights of the model it loaded (the residual or truncated base) and must
write the result as an ordinary transformers model directory. :func:`open_base_writer` picks how:

- ``BaseWriter`` itself: the method leaves the base as loaded; the checkpoint's files are hard-linked
  into the run (copied across file systems), so every run holds its base and travels whole.
- ``StreamedBase``: the new base is written while it is built, in the checkpoint's own layout.
  Every tensor a method leaves alone is copied by the kernel (``os.copy_file_range``, never through
  this process's memory); each target's bytes are written once, by ``pwrite``, when its new weight
  is final; the layer's parameter then reads it from a private mapping of the new file, and the
  original weight's pages (transformers maps safetensors checkpoints privately) go back to the OS.
  A build then holds about one block's weights at a time instead of a second copy of every target.
  Used only when the checkpoint verifiably is the loaded model's state: the same keys (tied copies
  aside), shapes and dtypes, no remote code, and the targets' stored values equal to the loaded
  ones (no conversion on load).
- ``SavedBase``: otherwise; new weights go into the model in place and ``save_pretrained`` writes
  the directory at the end, from a trimmed heap.

Every writer also hands back the pages of weights the caller has read and will read again only
later (:meth:`BaseWriter.release`), through its :class:`~svdadapt.backend.pages.MappedPages`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from torch import nn

from .checkpoint import (
    INDEX,
    Slot,
    checkpoint_dir,
    copy_except,
    link_or_copy,
    pwrite_all,
    read_slots,
    same_layout,
    shard_names,
    stored_as_loaded,
)
from .pages import MappedPages, hand_back, release_freed_memory


class BaseWriter:
    """A run's base as the model was loaded (``put`` is an error): the checkpoint's files, hard-linked
    into the run where the file system allows (else copied), so that the run holds its base."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.pages = MappedPages.of_checkpoint(location)  # what may go back to the OS

    def release(self, tensor: torch.Tensor) -> None:
        """The caller has read ``tensor`` and reads it again only later, if at all: hand the pages
        under it back to the OS where they are a clean private file mapping (a later read faults
        them back in, unchanged)."""
        self.pages.release(tensor)

    def start(self, directory: Path) -> None:
        """Begin writing the base into ``directory`` (inside the run's staging directory)."""
        self.directory = directory

    def put(self, key: str, param: nn.Parameter, value: torch.Tensor) -> None:
        """Parameter ``key``'s new value, in the parameter's own layout and dtype, now final."""
        raise RuntimeError(f"this build keeps the base as loaded; nothing may change {key}")

    def finish(self, model: nn.Module, tokenizer) -> None:
        """Complete the directory (configs, tokenizer) once every new weight is in; the kept base
        links the checkpoint's weights and configs (saved as loaded where there is no local one)."""
        source = checkpoint_dir(self.location)
        shards = shard_names(source) if source is not None else None
        if shards is None:
            SavedBase.finish(self, model, tokenizer)
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        configs = [n for n in ("config.json", "generation_config.json", INDEX) if (source / n).is_file()]
        for name in [*shards, *configs]:  # never a file written below: a link would write through
            link_or_copy(source / name, self.directory / name)
        tokenizer.save_pretrained(self.directory)


class SavedBase(BaseWriter):
    """New weights go into the model in place; ``save_pretrained`` writes the directory at the end."""

    def start(self, directory: Path) -> None:
        self.directory = directory

    def put(self, key: str, param: nn.Parameter, value: torch.Tensor) -> None:
        with torch.no_grad():
            param.copy_(value)

    def finish(self, model: nn.Module, tokenizer) -> None:
        release_freed_memory()  # save_pretrained reads every weight in: start it from a trimmed heap
        model.save_pretrained(self.directory, safe_serialization=True)
        tokenizer.save_pretrained(self.directory)


class StreamedBase(BaseWriter):
    """Writes new weights into a copy of the checkpoint as they are final (see the module docstring)."""

    def __init__(self, location: str, source: Path, slots: dict[str, Slot], shards: list[str], keys: list[str]) -> None:
        super().__init__(location)
        self.source, self.slots, self.shards = source, slots, shards
        self._pending = set(keys)  # target tensors not written yet

    def start(self, directory: Path) -> None:
        directory.mkdir(parents=True)
        if (self.source / INDEX).is_file():
            shutil.copyfile(self.source / INDEX, directory / INDEX)
        for shard in self.shards:
            holes = [self.slots[k] for k in self._pending if self.slots[k].shard == shard]
            copy_except(self.source / shard, directory / shard, holes)
        self.directory = directory
        self._fds = {s: os.open(directory / s, os.O_RDWR) for s in self.shards}
        self._maps = {  # private mappings of the new files, read lazily: (file size,) bytes
            s: torch.from_file(str(directory / s), shared=False, size=os.path.getsize(directory / s), dtype=torch.uint8)
            for s in self.shards
        }
        self.pages.release_all()  # loading and checks read every weight in; blocks read theirs again when due

    def put(self, key: str, param: nn.Parameter, value: torch.Tensor) -> None:
        """Written to the file, then read from there (safe from parallel workers for distinct keys)."""
        value = value.to("cpu").contiguous()
        slot = self.slots[key]
        pwrite_all(self._fds[slot.shard], memoryview(value.reshape(-1).view(torch.uint8).numpy()), slot.offset)
        self._pending.discard(key)
        with torch.no_grad():
            if param.device.type != "cpu":
                param.copy_(value.to(param.device))
                return
            old = param.data
            mapped = self._maps[slot.shard][slot.offset : slot.offset + slot.nbytes]  # (nbytes,)
            param.data = mapped.view(param.dtype).view(param.shape)
            self.pages.release(old)

    def finish(self, model: nn.Module, tokenizer) -> None:
        """Write the config files (as ``save_pretrained`` does) and the tokenizer, and close the files;
        from then on :meth:`release` also covers the new files (the page cache maps them in large
        folios: a few sampled values would map in most of a file)."""
        if self._pending:
            raise RuntimeError(f"{len(self._pending)} base weights were never written, e.g. {min(self._pending)}")
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        model.config.dtype = str(model.dtype).removeprefix("torch.")
        model.config.architectures = [type(model).__name__]
        model.config.save_pretrained(self.directory)
        if model.can_generate():
            model.generation_config.save_pretrained(self.directory)
        tokenizer.save_pretrained(self.directory)
        self.pages.add_files([str(self.directory / s) for s in self._maps])


def streamable(model: nn.Module, location: str, keys: list[str]) -> StreamedBase | None:
    """A streaming writer for parameters ``keys`` of ``model`` (loaded from ``location``), or None
    when the checkpoint is not verifiably the loaded state (nothing is written either way)."""
    source = checkpoint_dir(location)
    if source is None or getattr(model.config, "auto_map", None):
        return None
    shards = shard_names(source)
    if shards is None:
        return None
    slots: dict[str, Slot] = {}
    for shard in shards:
        found = read_slots(source / shard)
        if found is None:
            return None
        slots.update(found)
    state = model.state_dict()
    if not same_layout(state, slots):
        return None
    pointers = [t.data_ptr() for t in state.values()]
    for key in keys:
        slot = slots.get(key)
        if slot is None or pointers.count(state[key].data_ptr()) != 1:  # tied: rewriting one changes two
            return None
        same = not slot.offset % slot.dtype.itemsize and stored_as_loaded(state[key], source / slot.shard, slot)
        hand_back(state[key])  # the check read its head and tail in (and the page cache, around them)
        if not same:
            return None
    return StreamedBase(location, source, slots, shards, keys)


def open_base_writer(model: nn.Module, location: str, keys: list[str], changes_base: bool) -> BaseWriter:
    """The writer of a run's base for a model loaded from ``location`` whose parameters ``keys``
    will change (``changes_base``) or not."""
    if not changes_base:
        return BaseWriter(location)
    return streamable(model, location, keys) or SavedBase(location)
