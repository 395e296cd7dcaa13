"""The new frozen base, written while it is built, in the original safetensors checkpoint's own
layout: every tensor a method leaves alone is copied by the kernel, and each target's bytes are
written once, when its new weight is final.

The copies (``os.copy_file_range``) never pass through this process's memory. Each new weight goes
to its byte range with one ``pwrite``; the layer's parameter then reads it from a private mapping
of the new file, and the original weight's pages (transformers maps safetensors checkpoints
privately) are handed back to the OS. The build then holds about one block's weights at a time
instead of a second copy of every target, and the base costs no ``save_pretrained`` at the end.

Used only when the checkpoint is verifiably the loaded model's state: the same keys (tied copies
aside), shapes and dtypes, no remote code, and the targets' stored values equal to the loaded ones
(no conversion on load). Otherwise :meth:`StreamedBase.start` returns None and the caller saves
the base with ``save_pretrained`` as before.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..fingerprint import weights_fingerprint
from ..memory import drop_file_pages, drop_mapped_pages, file_mappings
from ..targets import stored_weight

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
CHECKED = 1024  # leading and trailing values of each target compared with the loaded weight


@dataclass(frozen=True)
class Slot:
    """Where one tensor's bytes lie in a safetensors shard."""

    shard: str
    offset: int  # absolute byte offset in the file
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_slots(path: Path) -> dict[str, Slot] | None:
    """Tensor locations from a safetensors header; None for a dtype this writer does not handle."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    slots = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = DTYPES.get(info["dtype"])
        if dtype is None:
            return None
        start = info["data_offsets"][0]
        slots[key] = Slot(path.name, 8 + size + start, tuple(info["shape"]), dtype)
    return slots


def checkpoint_dir(location: str) -> Path | None:
    """The local directory holding a model's files (a hub id resolves to its cached snapshot)."""
    path = Path(location).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(location, "config.json")
    return Path(cached).parent if isinstance(cached, str) else None


def shard_names(directory: Path) -> list[str] | None:
    if (directory / INDEX).is_file():
        return sorted(set(json.loads((directory / INDEX).read_text())["weight_map"].values()))
    return [SINGLE] if (directory / SINGLE).is_file() else None


def checkpoint_mappings(location: str) -> list[tuple[int, int]]:
    """The never-written private mappings of a model's safetensors files (see memory.file_mappings)."""
    source = checkpoint_dir(location)
    shards = shard_names(source) if source is not None else None
    return file_mappings([str(source / s) for s in shards], clean_only=True) if shards else []


def _same_layout(state: dict[str, torch.Tensor], slots: dict[str, Slot]) -> bool:
    """Every stored tensor matches the model's, and every model tensor is stored (or tied to one)."""
    for key, slot in slots.items():
        tensor = state.get(key)
        if tensor is None or tuple(tensor.shape) != slot.shape or tensor.dtype != slot.dtype:
            return False
    stored = {state[k].data_ptr() for k in slots}
    return all(k in slots or t.data_ptr() in stored for k, t in state.items())


def _read(path: Path, offset: int, count: int, dtype: torch.dtype) -> torch.Tensor:
    with open(path, "rb") as f:
        f.seek(offset)
        return torch.frombuffer(bytearray(f.read(count * dtype.itemsize)), dtype=dtype)


def _stored_as_loaded(tensor: torch.Tensor, path: Path, slot: Slot) -> bool:
    """The leading and trailing values on disk equal the loaded tensor's (bit for bit)."""
    flat = tensor.detach().reshape(-1).cpu()
    n = min(CHECKED, flat.numel())
    head = _read(path, slot.offset, n, slot.dtype)
    tail = _read(path, slot.offset + slot.nbytes - n * slot.dtype.itemsize, n, slot.dtype)
    return torch.equal(head, flat[:n]) and torch.equal(tail, flat[-n:])


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


COPY_CHUNK = 8 << 20


def _copy_range(src: int, dst: int, offset: int, count: int) -> None:
    """Bytes [offset, offset + count) of one file to the same place in another, in the kernel where
    it can (copy_file_range), else through a small buffer."""
    end = offset + count
    while offset < end:
        try:
            done = os.copy_file_range(src, dst, end - offset, offset, offset)
        except (AttributeError, OSError):  # not Linux, or across file systems on an old kernel
            done = 0
        if done == 0:
            chunk = os.pread(src, min(COPY_CHUNK, end - offset), offset)
            if not chunk:
                raise OSError(f"unexpected end of file copying at byte {offset}")
            _pwrite_all(dst, memoryview(chunk), offset)
            done = len(chunk)
        offset += done


def copy_except(source: Path, target: Path, holes: list[Slot]) -> None:
    """``target``: a file the size of ``source`` holding its bytes except in ``holes`` (left to be
    written)."""
    size = os.path.getsize(source)
    src = os.open(source, os.O_RDONLY)
    try:
        dst = os.open(target, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            os.ftruncate(dst, size)
            position = 0
            for hole in sorted(holes, key=lambda h: h.offset):
                _copy_range(src, dst, position, hole.offset - position)
                position = hole.offset + hole.nbytes
            _copy_range(src, dst, position, size - position)
        finally:
            os.close(dst)
    finally:
        os.close(src)


class StreamedBase:
    """Writes new base weights into ``directory`` (the checkpoint's layout) as they are final."""

    def __init__(
        self, directory: Path, source: Path, slots: dict[str, Slot], shards: list[str], pending: set[str]
    ) -> None:
        self.directory = directory
        self.slots = slots
        self._pending = pending  # target tensors not written yet
        self._fds = {s: os.open(directory / s, os.O_RDWR) for s in shards}
        self._maps = {  # private mappings of the new files, read lazily: (file size,) bytes
            s: torch.from_file(str(directory / s), shared=False, size=os.path.getsize(directory / s), dtype=torch.uint8)
            for s in shards
        }
        # the checkpoint's private mappings, if never written: their pages can go back to the OS
        # (loading and checks read every weight in; calibration reads each block again when due)
        self._original = file_mappings([str(source / s) for s in shards], clean_only=True)
        drop_file_pages(self._original)

    @classmethod
    def start(cls, model: nn.Module, location: str, names: list[str], directory: Path) -> StreamedBase | None:
        """Start ``directory``: the checkpoint of ``model`` (loaded from ``location``) but for the weights
        of layers ``names``, to be :meth:`put`; or return None (nothing written) when that is not safe."""
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
        if not _same_layout(state, slots):
            return None
        pointers = [t.data_ptr() for t in state.values()]
        for name in names:
            key = f"{name}.weight"
            slot = slots.get(key)
            if slot is None or pointers.count(state[key].data_ptr()) != 1:  # tied: rewriting one changes two
                return None
            if slot.offset % slot.dtype.itemsize or not _stored_as_loaded(state[key], source / slot.shard, slot):
                return None
        directory.mkdir(parents=True)
        if (source / INDEX).is_file():
            shutil.copyfile(source / INDEX, directory / INDEX)
        pending = {f"{name}.weight" for name in names}
        for shard in shards:
            copy_except(source / shard, directory / shard, [slots[k] for k in pending if slots[k].shard == shard])
        return cls(directory, source, slots, shards, pending)

    def put(self, name: str, module: nn.Module, matrix: torch.Tensor) -> None:
        """Layer ``name``'s new (out, in) weight: written to the file, then read from there (safe to
        call from parallel workers for distinct layers)."""
        weight = module.weight
        value = stored_weight(module, matrix, device="cpu").contiguous()
        slot = self.slots[f"{name}.weight"]
        _pwrite_all(self._fds[slot.shard], memoryview(value.reshape(-1).view(torch.uint8).numpy()), slot.offset)
        self._pending.discard(f"{name}.weight")
        with torch.no_grad():
            if weight.device.type != "cpu":
                weight.copy_(value.to(weight.device))
                return
            old = weight.data
            mapped = self._maps[slot.shard][slot.offset : slot.offset + slot.nbytes]  # (nbytes,)
            weight.data = mapped.view(weight.dtype).view(weight.shape)
            drop_mapped_pages(old, self._original)

    def finish(self, model: nn.Module, tokenizer) -> str:
        """Write the config files (as ``save_pretrained`` does) and the tokenizer, close the files, and
        return the new base's weights fingerprint (read without keeping the new file's pages: the
        page cache maps them in large folios, a few samples would map in most of the file)."""
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
        written = file_mappings([str(self.directory / s) for s in self._maps], clean_only=True)
        return weights_fingerprint(model, after_each=lambda t: drop_mapped_pages(t, written))
