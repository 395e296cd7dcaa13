"""Handing memory back to the operating system: the one place that does (``madvise``, ``malloc_trim``).

A :class:`MappedPages` holds what may go back: the address ranges of clean private file mappings
(a checkpoint transformers mapped instead of reading, a base file a build wrote and maps), whose
pages a later read faults in again, unchanged. Placement hands back a block's weights after it
worked, the base writer each weight once read or rewritten, each with its own :class:`MappedPages`.
:func:`release_freed_memory` returns the C heap's free pages after a stage that freed a lot.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import checkpoint_dir, shard_names


def release_freed_memory() -> bool:
    """Return the C heap's free pages to the OS (glibc ``malloc_trim``); False where unsupported.

    glibc keeps memory freed by torch's CPU allocator in its heaps for reuse, so after a stage that
    allocated and freed a lot (calibration, decompositions) the process holds hundreds of MiB it
    no longer uses. Called once between stages (not in loops: re-faulting trimmed pages costs time).
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)  # returns whether anything was released; either way the call did its job
    return True


MADV_DONTNEED = 4


@dataclass
class MappedPages:
    """Clean private file mappings of this process whose pages may go back to the OS."""

    ranges: list[tuple[int, int]] = field(default_factory=list)  # (start, end) addresses

    @classmethod
    def of_checkpoint(cls, location: str) -> MappedPages:
        """The never-written private mappings of ``location``'s checkpoint shards (as transformers
        maps them); none where unknown."""
        source = checkpoint_dir(location)
        shards = shard_names(source) if source is not None else None
        return cls(file_mappings([str(source / s) for s in shards], clean_only=True) if shards else [])

    def add_files(self, paths: list[str]) -> None:
        """Also the never-written private mappings of ``paths`` (e.g. files this process wrote)."""
        self.ranges += file_mappings(paths, clean_only=True)

    def release(self, tensor: torch.Tensor) -> int:
        """Hand back the whole pages under ``tensor`` where it lies in one of these mappings (its
        caller reads it again only later, if at all); the bytes handed back."""
        return drop_mapped_pages(tensor, self.ranges)

    def release_all(self) -> int:
        """Hand back every resident page of these mappings; the bytes of address space advised."""
        return drop_file_pages(self.ranges)

    def __bool__(self) -> bool:
        return bool(self.ranges)


def file_mappings(paths: list[str], clean_only: bool = False) -> list[tuple[int, int]]:
    """Address ranges (start, end) of this process's private mappings of ``paths`` (Linux), e.g. a
    safetensors checkpoint that transformers mapped instead of reading; empty where unknown.
    ``clean_only``: just those with no page written (no copy-on-write copy, per /proc/self/smaps)."""
    wanted = {os.path.realpath(p) for p in paths}
    try:
        lines = Path("/proc/self/smaps" if clean_only else "/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    ranges: list[tuple[int, int]] = []
    current = None
    for line in lines:
        fields = line.split(maxsplit=5)
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            current = None
            if len(fields) == 6 and fields[1].endswith("p") and fields[5] in wanted:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((start, end))
                current = len(ranges) - 1
        elif current is not None and fields[0] == "Anonymous:" and int(fields[1]) != 0:
            ranges[current] = (0, 0)  # written to: its pages hold values the file does not
    return [r for r in ranges if r != (0, 0)]


def drop_file_pages(ranges: list[tuple[int, int]]) -> int:
    """Unmap the resident pages of whole private file mappings that were never written (from
    ``file_mappings(..., clean_only=True)``); later reads fault them back in from the page cache,
    unchanged. Returns the bytes of address space advised."""
    return sum(_dont_need(start, end) for start, end in ranges)


def _dont_need(first: int, last: int) -> int:
    if last <= first:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), MADV_DONTNEED) != 0:
        return 0
    return last - first


def drop_mapped_pages(tensor: torch.Tensor, ranges: list[tuple[int, int]]) -> int:
    """Unmap the whole pages under a CPU tensor that lies inside one of ``ranges`` (private file
    mappings from :func:`file_mappings`); returns the bytes dropped (0 if it does not lie there).

    Safe only for pages never written through the mapping: a later read faults them back in from
    the file, unchanged. The caller must no longer need the tensor's values from memory: it is for
    weights whose new values were written elsewhere (see base_writer).
    """
    if tensor.device.type != "cpu" or not ranges:
        return 0
    begin = tensor.data_ptr()
    end = begin + tensor.numel() * tensor.element_size()
    if not any(lo <= begin and end <= hi for lo, hi in ranges):
        return 0
    first = -(-begin // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages only: neighbours share the edge pages
    return _dont_need(first, end // mmap.PAGESIZE * mmap.PAGESIZE)
