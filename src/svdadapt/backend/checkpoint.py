"""A model's safetensors checkpoint on disk: where each tensor's bytes lie, whether the file holds
exactly the loaded model's state, and copying a file around byte ranges left to be written."""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

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


def link_or_copy(source: str | Path, target: str | Path) -> None:
    """``target`` as a hard link of ``source`` (free, and safe: svdadapt replaces files, never rewrites
    them in place), or a copy where the file system cannot link (another device)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def shard_names(directory: Path) -> list[str] | None:
    """The checkpoint's shard files, or None where there is none, or where its index is unreadable or
    names a file outside ``directory`` (then nothing is streamed)."""
    if (directory / INDEX).is_file():
        try:
            names = sorted(set(json.loads((directory / INDEX).read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        root = directory.resolve()
        inside = all(isinstance(n, str) and (directory / n).resolve().is_relative_to(root) for n in names)
        return names if inside else None
    return [SINGLE] if (directory / SINGLE).is_file() else None


def same_layout(state: dict[str, torch.Tensor], slots: dict[str, Slot]) -> bool:
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


def stored_as_loaded(tensor: torch.Tensor, path: Path, slot: Slot) -> bool:
    """The leading and trailing values on disk equal the loaded tensor's (bit for bit)."""
    flat = tensor.detach().reshape(-1).cpu()
    n = min(CHECKED, flat.numel())
    head = _read(path, slot.offset, n, slot.dtype)
    tail = _read(path, slot.offset + slot.nbytes - n * slot.dtype.itemsize, n, slot.dtype)
    return torch.equal(head, flat[:n]) and torch.equal(tail, flat[-n:])


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
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
            pwrite_all(dst, memoryview(chunk), offset)
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
