"""Handing memory back to the operating system: the one place that does (``madvise``, ``malloc_trim``).

A :class:`MappedPages` holds what may go back: the address ranges of clean private file mappings
(a checkpoint transformers mapped instead of reading, a base file a build wrote and maps), whose
pages a later read faults in again, unchanged. Placement hands back a block's weights after it
worked, the base writer each weight once read or rewritten, each with its own :class:`MappedPages`.
Every :class:`MappedPages` alive in the process is known here, so :func:`hand_back` returns the
pages under any weight read outside a block's turn (a fingerprint's samples, a check, a
decomposition) without its reader knowing who mapped it: no pass keeps a finished block's pages.
:func:`release_freed_memory` returns the C heap's free pages after a stage that freed a lot.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import sys
import weakref
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


_LIVE: weakref.WeakSet[MappedPages] = weakref.WeakSet()  # every MappedPages of this process still alive


@dataclass(eq=False)
class MappedPages:
    """Clean private file mappings of this process whose pages may go back to the OS."""

    ranges: list[tuple[int, int]] = field(default_factory=list)  # (start, end) addresses
    paths: set[str] = field(default_factory=set)  # the mapped files (real paths)

    def __post_init__(self) -> None:
        _LIVE.add(self)

    @classmethod
    def of_checkpoint(cls, location: str) -> MappedPages:
        """The never-written private mappings of ``location``'s checkpoint shards (as transformers
        maps them); none where unknown."""
        pages = cls()
        source = checkpoint_dir(location)
        shards = shard_names(source) if source is not None else None
        if shards:
            pages.add_files([str(source / s) for s in shards])
        return pages

    def add_files(self, paths: list[str]) -> None:
        """Also the never-written private mappings of ``paths`` (e.g. files this process wrote)."""
        self.ranges += file_mappings(paths, clean_only=True)
        self.paths |= {os.path.realpath(p) for p in paths}

    def holds(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` lies inside one of these mappings (by address alone)."""
        return _inside(tensor, self.ranges)

    def release(self, tensor: torch.Tensor) -> int:
        """Hand back the whole pages under ``tensor`` where it lies in one of these mappings, still
        mapped from their file (the addresses of a freed model may hold other memory by now); its
        caller reads it again only later, if at all. The bytes handed back."""
        if not self.holds(tensor) or not _still_mapped(tensor.data_ptr(), self.paths):
            return 0
        return drop_mapped_pages(tensor, self.ranges)

    def release_all(self) -> int:
        """Hand back every resident page of these mappings; the bytes of address space advised."""
        return drop_file_pages(self.ranges)

    def resident(self) -> int:
        """The bytes of these files' mappings resident in this process now (/proc/self/smaps)."""
        return resident_bytes(sorted(self.paths))

    def __bool__(self) -> bool:
        return bool(self.ranges)


def hand_back(tensor: torch.Tensor) -> int:
    """Hand back the pages under ``tensor`` if it lies in a clean mapping some :class:`MappedPages`
    of this process knows (a weight read from a mapped checkpoint, read again only later if at
    all); the bytes handed back (0 for any other tensor: heap memory is never touched)."""
    if tensor.device.type != "cpu":
        return 0
    for pages in list(_LIVE):
        if pages.holds(tensor):
            return pages.release(tensor)
    return 0


def _inside(tensor: torch.Tensor, ranges: list[tuple[int, int]]) -> bool:
    if tensor.device.type != "cpu" or not ranges:
        return False
    begin = tensor.data_ptr()
    end = begin + tensor.numel() * tensor.element_size()
    return any(lo <= begin and end <= hi for lo, hi in ranges)


def _still_mapped(address: int, paths: set[str]) -> bool:
    """Whether ``address`` lies in a private mapping of one of ``paths`` now (/proc/self/maps)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split(maxsplit=5)
        start, _, end = fields[0].partition("-")
        if int(start, 16) <= address < int(end, 16):
            return len(fields) == 6 and fields[1].endswith("p") and fields[5] in paths
    return False


def resident_bytes(paths: list[str]) -> int:
    """The bytes of this process's mappings of ``paths`` resident in memory (Rss in
    /proc/self/smaps); 0 where unknown."""
    wanted = {os.path.realpath(p) for p in paths}
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return 0
    total, counting = 0, False
    for line in lines:
        fields = line.split(maxsplit=5)
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            counting = len(fields) == 6 and fields[5] in wanted
        elif counting and fields[0] == "Rss:":
            total += int(fields[1]) * 1024
    return total


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
    if not _inside(tensor, ranges):
        return 0
    begin = tensor.data_ptr()
    end = begin + tensor.numel() * tensor.element_size()
    first = -(-begin // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages only: neighbours share the edge pages
    return _dont_need(first, end // mmap.PAGESIZE * mmap.PAGESIZE)
